"""The Lambda path's settings: ranges enforced by the Option parsers, on every source."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from corral_lambda.executor import LambdaConfig, function_name_for
from corral_lambda.options import MEMORY, OPTIONS, TIMEOUT

from corral.cli import main
from corral.config import load_settings
from corral.errors import UsageError

WORDCOUNT = Path(__file__).resolve().parents[2] / "examples" / "wordcount.py"


def run_cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.fixture
def data(isolated) -> Path:
    path = isolated / "in.txt"
    path.write_text("a b a\n")
    return path


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--memory", "100", "100 is out of range (must be from 128 to 10240)"),
        ("--memory", "10241", "must be from 128 to 10240"),
        ("--memory", "lots", "'lots' is not a whole number"),
        ("--timeout", "0", "0 is out of range (must be from 1 to 900)"),
        ("--timeout", "901", "must be from 1 to 900"),
        ("--function-name", "no spaces", "not a Lambda function name"),
        ("--lambda-role-arn", "role", "not an IAM role ARN"),
        ("--lambda-endpoint", "localhost:9000", "not an http(s):// URL"),
    ],
)
def test_out_of_range_values_exit_2_naming_the_flag(capsys, data, flag, value, message):
    code, err = run_cli(capsys, "run", WORDCOUNT, data, "--out", data.parent / "out", "--backend", "docker",
                        flag, value)
    assert code == 2
    assert f"invalid value for {flag}: " in err and message in err
    assert not (data.parent / "out").exists()


def test_environment_variables_are_validated_too(capsys, data, monkeypatch):
    monkeypatch.setenv("CORRAL_MEMORY", "64")
    code, err = run_cli(capsys, "run", WORDCOUNT, data, "--out", data.parent / "out", "--backend", "lambda")
    assert code == 2 and "invalid value for CORRAL_MEMORY: 64 is out of range" in err


def test_the_console_script_exits_2(data):
    done = subprocess.run(
        [Path(sys.executable).with_name("corral"), "run", WORDCOUNT, data, "--out", data.parent / "out",
         "--backend", "docker", "--memory", "100"],
        capture_output=True, text=True, cwd=data.parent,
    )
    assert done.returncode == 2, done.stderr
    assert "--memory" in done.stderr and "128 to 10240" in done.stderr


def test_defaults_and_config_file(isolated):
    (isolated / "corral.toml").write_text('memory = 1024\ntimeout = 120\nregion = "eu-west-1"\n')
    settings = load_settings({})
    config = LambdaConfig.from_settings(settings)
    assert (config.memory, config.timeout, config.region) == (1024, 120, "eu-west-1")
    (isolated / "corral.toml").write_text("memory = 99\n")
    with pytest.raises(UsageError, match=r"memory in .*corral\.toml: 99 is out of range"):
        load_settings({})


def test_defaults():
    assert (MEMORY.default, TIMEOUT.default) == (512, 60)
    assert len({o.name for o in OPTIONS}) == len(OPTIONS)


def test_memory_and_timeout_are_defined_once():
    from corral.config import all_options

    names = [o.name for o in all_options()]
    for name in ("memory", "timeout", "base-image", "lambda-endpoint"):
        assert names.count(name) == 1, name


def test_function_name_for_a_job():
    assert function_name_for({"module": "wordcount", "class": "WordCount"}) == "corral-wordcount-WordCount"
    assert function_name_for({"module": "my.jobs", "class": "Outer.Inner"}) == "corral-my-jobs-Outer-Inner"
    long = function_name_for({"module": "m" * 80, "class": "C"})
    assert len(long) == 64 and long.startswith("corral-mmm")
    assert long != function_name_for({"module": "m" * 81, "class": "C"})


def test_lambda_rejects_local_paths_without_an_endpoint(capsys, data):
    code, err = run_cli(capsys, "run", WORDCOUNT, data, "--out", data.parent / "out", "--backend", "lambda",
                        "--lambda-role-arn", "arn:aws:iam::123456789012:role/r")
    assert code == 2
    assert "cannot read or write the local path" in err and "--backend docker" in err
