"""The Lambda path's settings: ranges enforced by the Option parsers, on every source."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from corral_lambda.executor import LambdaConfig
from corral_lambda.options import OPTIONS

from corral.cli import main
from corral.config import load_settings
from corral.errors import UsageError
from corral.remote import MEMORY, TIMEOUT, function_name_for

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
        ("--memory", "100", "100 is out of range (must be from 128 to 32768)"),
        ("--memory", "10241", "10241 is out of range for Lambda (must be from 128 to 10240)"),
        ("--memory", "lots", "'lots' is not a whole number"),
        ("--timeout", "0", "0 is out of range (must be from 1 to 3600)"),
        ("--timeout", "901", "901 is out of range for Lambda (must be from 1 to 900)"),
        ("--function-name", "no spaces", "'no spaces' is not a function name"),
        ("--lambda-role-arn", "role", "not an IAM role ARN"),
        ("--lambda-endpoint", "localhost:9000", "not an http(s):// URL"),
        ("--ephemeral-storage", "511", "511 is out of range (must be from 512 to 10240)"),
        ("--ephemeral-storage", "10241", "must be from 512 to 10240"),
        ("--environment", "NOVALUE", "'NOVALUE' is not KEY=VALUE"),
        ("--environment", "AWS_REGION=eu-west-1", "AWS_REGION is set by Lambda itself"),
        ("--environment", "1X=y", "'1X' is not a variable name"),
        ("--environment", f"BIG={'x' * 4100}", "the variables exceed Lambda's 4 KB limit"),
        ("--architecture", "sparc", "'sparc' is not a Lambda architecture (x86_64 or arm64)"),
        ("--runtime", "python3.10", "python3.10 cannot run corral, which needs Python 3.11 or newer"),
        ("--runtime", "nodejs20.x", "'nodejs20.x' is not a Python runtime (python3.11, python3.12, ...)"),
        ("--deploy-bucket", "Not_A_Bucket", "is not an S3 bucket name"),
        ("--deadline", "0", "0 is out of range (must be at least 1)"),
    ],
)
@pytest.mark.parametrize("backend", ["lambda", "docker"])
def test_out_of_range_values_exit_2_naming_the_flag(capsys, data, flag, value, message, backend):
    code, err = run_cli(capsys, "run", WORDCOUNT, data, "--out", data.parent / "out", "--backend", backend,
                        flag, value)
    assert code == 2
    assert f"invalid value for {flag}: " in err and message in err
    assert not (data.parent / "out").exists()


@pytest.mark.parametrize("command", [["deploy"], ["undeploy"]])
def test_deploy_commands_validate_options_before_anything(capsys, isolated, command):
    code, err = run_cli(capsys, *command, WORDCOUNT, "--backend", "lambda", "--memory", "64")
    assert code == 2 and "invalid value for --memory: 64 is out of range" in err


@pytest.mark.parametrize("command", [["deploy"], ["undeploy"]])
def test_deploy_commands_check_lambdas_own_ranges_too(capsys, isolated, command):
    code, err = run_cli(capsys, *command, WORDCOUNT, "--backend", "lambda", "--memory", "20000")
    assert code == 2 and "invalid value for --memory: 20000 is out of range for Lambda" in err


def test_settings_reach_the_lambda_configuration(isolated):
    from corral.remote import host_runtime

    settings = load_settings({"environment": ["MODE=fast", "URL=http://x/?a=b"], "architecture": "arm64",
                              "ephemeral_storage": "2048", "deploy_bucket": "my-code", "deadline": "60"})
    config = LambdaConfig.from_settings(settings)
    assert config.environment == {"MODE": "fast", "URL": "http://x/?a=b"}
    assert (config.architecture, config.ephemeral_storage, config.deploy_bucket) == ("arm64", 2048, "my-code")
    assert config.runtime == host_runtime() and config.python_version == host_runtime()[len("python"):]
    assert all(tag.endswith("_aarch64") for tag in config.wheel_platforms)
    assert 55 < config.deadline - __import__("time").time() <= 60


def test_the_lambda_endpoint_variable_is_honoured(isolated, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", "http://127.0.0.1:9")
    assert LambdaConfig.from_settings(load_settings({})).endpoint_url == "http://127.0.0.1:9"
    flag = LambdaConfig.from_settings(load_settings({"lambda_endpoint": "http://127.0.0.1:8"}))
    assert flag.endpoint_url == "http://127.0.0.1:8"


def test_wheel_platforms_follow_the_runtime_os_glibc():
    from corral_lambda.runtime import platform_tags

    al2 = platform_tags("python3.11", "x86_64")  # Amazon Linux 2: glibc 2.26
    assert al2[0] == "manylinux_2_26_x86_64" and al2[-1] == "manylinux2014_x86_64"
    al2023 = platform_tags("python3.12", "arm64")  # Amazon Linux 2023: glibc 2.34
    assert al2023[0] == "manylinux_2_34_aarch64" and "manylinux_2_28_aarch64" in al2023
    assert not any("x86_64" in tag for tag in al2023)


def test_environment_variables_are_validated_too(capsys, data, monkeypatch):
    monkeypatch.setenv("CORRAL_MEMORY", "64")
    code, err = run_cli(capsys, "run", WORDCOUNT, data, "--out", data.parent / "out", "--backend", "lambda")
    assert code == 2 and "invalid value for CORRAL_MEMORY: 64 is out of range" in err


def test_the_console_script_exits_2(data):
    done = subprocess.run(
        [Path(sys.executable).with_name("corral"), "run", WORDCOUNT, data, "--out", data.parent / "out",
         "--backend", "docker", "--memory", "20000"],
        capture_output=True, text=True, cwd=data.parent,
    )
    assert done.returncode == 2, done.stderr
    assert "invalid value for --memory: 20000 is out of range for Lambda (must be from 128 to 10240)" in done.stderr


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
    for name in ("memory", "timeout", "environment", "region", "runtime", "function-name", "base-image",
                 "lambda-endpoint"):
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
