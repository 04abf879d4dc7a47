"""The ``corral emulator`` command: the plugin's Command, ``serve`` as a process, ``build-base``."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    assert (args.cloud_cpu, args.tmp_cap) == (True, True)  # as the platform: Lambda's CPU share, /tmp capped
    args = parser().parse_args(["serve", "--no-cloud-cpu", "--no-tmp-cap"])
    assert (args.cloud_cpu, args.tmp_cap) == (False, False)
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
    """``corral emulator`` of this Python's environment (not whichever ``corral`` comes first on PATH)."""
    corral = Path(sys.executable).with_name("corral")
    if corral.exists():
        return [str(corral), "emulator"]
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


@pytest.mark.docker
def test_serve_prints_both_apis_and_echoes_gcf_logs(docker_engine, tmp_path, monkeypatch):
    """``serve`` names both APIs with a client line each, writes a key file for google-auth, and echoes a GCF
    function's output as ``[id] line``."""
    import queue
    import threading

    from tests.emulator.conftest import create_function, make_gcf_client

    key_file = tmp_path / "key.json"
    process = subprocess.Popen([*_emulator_command(), "serve", "--port", "0", "--key-file", str(key_file)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [process.stdout.readline() for _ in range(5)]
        match = re.search(r"Lambda API on (http://127\.0\.0\.1:\d+)", lines[0])
        assert match, "".join(lines)
        endpoint = match.group(1)
        assert 'boto3.client("lambda", endpoint_url=' in lines[1]
        assert f"Cloud Functions v2 API on {endpoint} (OAuth token endpoint {endpoint}/token)" in lines[2]
        assert f'FunctionServiceClient(transport="rest", client_options={{"api_endpoint": "{endpoint}"}}' in lines[3]
        assert f"export GOOGLE_APPLICATION_CREDENTIALS={key_file}" in lines[4]
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        stderr: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [stderr.put(line) for line in process.stderr], daemon=True).start()

        client = make_gcf_client(endpoint)
        import google.auth.transport.requests
        import requests
        from google.oauth2 import id_token

        function = create_function(client, "echoed", "def handler(request):\n    print('hello from gcf')\n"
                                                     "    return 'ok'\n").result(timeout=300)
        uri = function.service_config.uri
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        token = id_token.fetch_id_token(google.auth.transport.requests.Request(), uri)
        answer = requests.post(uri, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert answer.text == "ok"
        seen: list[str] = []
        deadline = time.monotonic() + 20
        while not any(" POST 200 /gcf/" in line for line in seen) and time.monotonic() < deadline:
            try:
                seen.append(stderr.get(timeout=0.5))
            except queue.Empty:
                pass
        assert "[echoed] hello from gcf\n" in seen, seen
        assert any(line.startswith("[echoed] ") and " POST 200 /gcf/" in line for line in seen), seen
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_takes_cloud_cpu_and_event_retry_delay():
    args = parser().parse_args(["serve"])
    assert (args.cloud_cpu, args.event_retry_delay) == (True, 60.0)  # Lambda's CPU share and retry delay
    args = parser().parse_args(["serve", "--no-cloud-cpu", "--event-retry-delay", "0.5"])
    assert (args.cloud_cpu, args.event_retry_delay) == (False, 0.5)
    for bad in ("-1", "soon"):
        with pytest.raises(SystemExit):
            parser().parse_args(["serve", "--event-retry-delay", bad])


# --- serving beyond this machine runs anyone's code: refused unless asked for by name ------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_serve_on_an_address_other_machines_reach_is_refused_without_the_flag(host):
    done = subprocess.run([*_emulator_command(), "serve", "--host", host, "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == (
        f"corral emulator: error: --host {host} is reachable from other machines, and the emulator runs any code "
        "sent to its APIs without authentication: add --allow-remote-code-execution to serve it anyway (only on "
        "a network you trust)\n"
    )
    assert done.stdout == ""  # refused before anything started


def test_loopback_hosts_need_no_flag():
    assert cli.is_loopback("127.0.0.1") and cli.is_loopback("::1") and cli.is_loopback("localhost")
    assert cli.is_loopback("127.0.0.2")
    assert not cli.is_loopback("0.0.0.0") and not cli.is_loopback("::") and not cli.is_loopback("192.168.1.20")
    assert not cli.is_loopback("no-such-host.invalid")


@pytest.mark.docker
def test_serve_on_all_addresses_with_the_flag_warns_and_serves(docker_engine):
    process = subprocess.Popen(
        [*_emulator_command(), "serve", "--host", "0.0.0.0", "--port", "0", "--allow-remote-code-execution",
         "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()
        match = re.search(r"Lambda API on (http://0\.0\.0\.0:(\d+))", first)
        assert match, first + (process.stderr.read() if process.poll() is not None else "")
        warning = process.stderr.readline()
        assert warning == (f"corral emulator: WARNING: serving {match.group(1)} on 0.0.0.0 without authentication: "
                           "anyone who can reach it can run code on this machine\n")
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{match.group(2)}/2015-03-31/functions/", timeout=10) as r:
            assert r.status == 200  # it serves
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
