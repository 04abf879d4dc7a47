"""The ``corral emulator`` command: the plugin's Command, ``serve`` as a process, ``build-base``."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from corral_emulator import cli


def parser() -> argparse.ArgumentParser:
    from corral_emulator.plugin import corral_commands

    (command,) = corral_commands()
    assert command.name == "emulator" and command.help
    result = argparse.ArgumentParser(prog="corral emulator")
    command.configure(result)
    return result


def test_plugin_command_parses_serve_and_build_base():
    args = parser().parse_args(["serve", "--port", "0", "--mount", "/tmp", "--mount", "/srv",
                                "--max-concurrency", "3", "--base-image", "img:1"])
    assert (args.port, args.host, args.max_concurrency, args.base_image) == (0, "127.0.0.1", 3, "img:1")
    assert args.mount == ["/tmp", "/srv"]
    args = parser().parse_args(["serve"])
    assert (args.port, args.host, args.mount) == (9001, "127.0.0.1", [])
    args = parser().parse_args(["build-base", "--tag", "x:y", "--force"])
    assert (args.tag, args.force) == ("x:y", True)
    with pytest.raises(SystemExit):
        parser().parse_args([])


def test_registered_as_corral_plugin():
    entry_points = importlib.metadata.entry_points(group="corral")
    assert any(ep.name == "emulator" and ep.value == "corral_emulator.plugin" for ep in entry_points)
    from corral.plugins import get_plugin_manager

    names = [c.name for commands in get_plugin_manager().hook.corral_commands() for c in commands]
    assert "emulator" in names


@pytest.mark.docker
def test_build_base_skips_existing_image(docker_engine, capsys):
    from corral_emulator import default_base_image

    args = parser().parse_args(["build-base", "--tag", default_base_image()])
    assert cli.run(args) == 0
    assert "exists" in capsys.readouterr().err


def _emulator_command() -> list[str]:
    corral = shutil.which("corral")
    if corral:
        return [corral, "emulator"]
    return [sys.executable, "-m", "corral_emulator"]


@pytest.mark.docker
def test_serve_runs_until_sigterm_then_cleans_up(docker_engine, tmp_path, client_for, package):
    process = subprocess.Popen(
        [*_emulator_command(), "serve", "--port", "0", "--mount", str(tmp_path), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", first)
        assert match, first + process.stderr.read() if process.poll() is not None else first
        assert "boto3.client(" in process.stdout.readline()
        client = client_for(match.group(1))
        client.create_function(FunctionName="hello", Runtime="python3.11", Role="arn:aws:iam::0:role/x",
                               Handler="app.handler", Code={"ZipFile": package({"app.py": (
                                   "def handler(event, context):\n"
                                   f"    open({str(tmp_path / 'out.txt')!r}, 'w').write('x')\n"
                                   "    return 'hi'\n")})})
        assert client.invoke(FunctionName="hello")["Payload"].read() == b'"hi"'
        assert (tmp_path / "out.txt").read_text() == "x"
        label = f"corral-emulator.pid={process.pid}"
        assert docker_engine.containers.list(all=True, sparse=True, filters={"label": label})
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert not docker_engine.containers.list(all=True, sparse=True, filters={"label": label})
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.docker
@pytest.mark.slow
def test_build_base_from_debian_packages(docker_engine, client_for, package):
    """The real offline build (debootstrap + docker import, ~35-60 s), into a throw-away tag."""
    from corral_emulator import Emulator, build_base_image

    if os.geteuid() != 0:
        pytest.skip("debootstrap needs root")
    tag = "corral-lambda-python:test-build"
    try:
        assert build_base_image(tag, force=True) is True
        with Emulator(base_image=tag) as emu:
            client = client_for(emu.endpoint)
            client.create_function(FunctionName="v", Runtime="python3.11", Role="arn:aws:iam::0:role/x",
                                   Handler="app.handler", Code={"ZipFile": package({"app.py": (
                                       "import sys\ndef handler(event, context):\n"
                                       "    return sys.version_info[:2]\n")})})
            started = time.monotonic()
            assert client.invoke(FunctionName="v")["Payload"].read() == b"[3, 11]"
            assert time.monotonic() - started < 30
    finally:
        try:
            docker_engine.images.remove(tag, force=True)
        except Exception:
            pass
