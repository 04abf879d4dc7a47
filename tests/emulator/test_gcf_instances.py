"""GCF 2nd gen's behaviour around the function, reproduced by the emulator with real functions-framework
containers: environment, crashes, the memory cap, the timeout, one request per instance, warm reuse and
reaping, max instances, and the 32 MiB limits. Invoked over HTTP with ID tokens minted by google-auth.
"""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.docker

MiB = 1024 * 1024


def containers_of(docker_engine, function) -> list[str]:
    """The names of the function's containers."""
    function_id = function.name.rsplit("/", 1)[1]
    found = docker_engine.containers.list(all=True, sparse=True,
                                          filters={"label": f"corral-emulator.function={function_id}"})
    return [name for c in found for name in c.attrs.get("Names") or []]


def test_environment_is_the_one_gcf_sets(gcf_deploy, gcf_call, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9023")
    function = gcf_deploy("""
import os, socket, functions_framework

def handler(request):
    port = int(os.environ["PORT"])
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # its own server listens there
    names = ["K_SERVICE", "K_REVISION", "K_CONFIGURATION", "FUNCTION_TARGET", "FUNCTION_SIGNATURE_TYPE",
             "GREETING", "STORAGE_EMULATOR_HOST", "THREADED_TIMEOUT_ENABLED", "CLOUD_RUN_TIMEOUT_SECONDS"]
    return {"env": {n: os.environ.get(n) for n in names}, "port": port, "cwd": os.getcwd(),
            "framework": functions_framework.__file__, "path": request.path, "args": dict(request.args)}
""", env={"GREETING": "hi"}, timeout=17)
    function_id = function.name.rsplit("/", 1)[1]
    response = gcf_call(function, path="/some/path?x=1")
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["env"] == {
        "K_SERVICE": function_id,
        "K_REVISION": function.service_config.revision,
        "K_CONFIGURATION": function_id,
        "FUNCTION_TARGET": "handler",
        "FUNCTION_SIGNATURE_TYPE": "http",
        "GREETING": "hi",
        "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9023",
        "THREADED_TIMEOUT_ENABLED": "true",
        "CLOUD_RUN_TIMEOUT_SECONDS": "17",
    }
    assert data["port"] > 0 and data["cwd"] == "/workspace"
    assert data["framework"].startswith("/opt/corral/functions-framework/functions_framework/")
    assert (data["path"], data["args"]) == ("/some/path", {"x": "1"})


def test_unhandled_error_is_a_500_with_the_crash_header(gcf_deploy, gcf_call, gcf_log):
    function = gcf_deploy("""
def handler(request):
    if request.args.get("fail"):
        raise ValueError("the user's bug")
    return "fine"
""")
    first = gcf_call(function)
    crash = gcf_call(function, path="?fail=1")
    assert crash.status_code == 500
    assert crash.headers["X-Google-Status"] == "crash"
    assert crash.text.startswith("500 Internal Server Error")  # functions-framework's own crash answer
    assert "X-Google-Status" not in first.headers
    log = gcf_log(function)
    assert "ValueError: the user's bug" in log and "Traceback (most recent call last)" in log
    assert f"POST 500 /gcf/corral-test/us-central1/{function.name.rsplit('/', 1)[1]} " in log
    # a crash does not end the instance: the next request is served warm by the same one
    after = gcf_call(function)
    assert after.text == "fine" and after.headers["X-Corral-Instance"] == crash.headers["X-Corral-Instance"]
    assert after.headers["X-Corral-Cold-Start"] == "false"


def test_memory_limit_kills_the_instance_with_cloud_runs_message(gcf_deploy, gcf_call, gcf_log, docker_engine):
    function = gcf_deploy("""
def handler(request):
    if request.args.get("mb"):
        hog = b"x" * (int(request.args["mb"]) * 1024 * 1024)
        return str(len(hog))
    return "small"
""", memory="128Mi")
    small = gcf_call(function)
    assert small.text == "small" and int(small.headers["X-Corral-Max-Memory-Used-Mb"]) < 128
    assert small.headers["X-Corral-Memory-Size-Mb"] == "128"
    started = time.monotonic()
    over = gcf_call(function, path="?mb=400")
    assert over.status_code == 500
    assert over.text.startswith("Memory limit of 128 MiB exceeded with 128 MiB used.")
    assert "X-Google-Status" not in over.headers
    assert time.monotonic() - started < 20
    assert "Memory limit of 128 MiB exceeded with 128 MiB used." in gcf_log(function)
    # the instance is gone; the next request gets a new one
    killed = over.headers["X-Corral-Instance"]
    deadline = time.monotonic() + 10
    while any(killed in name for name in containers_of(docker_engine, function)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(killed in name for name in containers_of(docker_engine, function))
    again = gcf_call(function)
    assert again.text == "small" and again.headers["X-Corral-Instance"] != killed
    assert again.headers["X-Corral-Cold-Start"] == "true"
    # 256M is 256e6 bytes: the limit GCF reports is 244 MiB
    decimal = gcf_deploy("def handler(request):\n    return 'ok'\n", memory="256M")
    assert gcf_call(decimal).headers["X-Corral-Memory-Size-Mb"] == "244"


def test_timeout_is_a_504_and_the_instance_is_replaced(gcf_deploy, gcf_call, gcf_log, docker_engine):
    function = gcf_deploy("""
import time

def handler(request):
    time.sleep(float(request.args.get("sleep", 0)))
    return "done"
""", timeout=2)
    first = gcf_call(function)
    assert first.text == "done"
    started = time.monotonic()
    slow = gcf_call(function, path="?sleep=30")
    elapsed = time.monotonic() - started
    assert slow.status_code == 504
    assert "reached the maximum request timeout of 2 seconds" in slow.text
    assert 2 <= elapsed < 8
    assert slow.headers["X-Corral-Instance"] == first.headers["X-Corral-Instance"]
    assert "reached the maximum request timeout of 2 seconds" in gcf_log(function)
    deadline = time.monotonic() + 10
    while containers_of(docker_engine, function) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not containers_of(docker_engine, function)
    again = gcf_call(function)
    assert again.text == "done" and again.headers["X-Corral-Instance"] != first.headers["X-Corral-Instance"]
    assert again.headers["X-Corral-Cold-Start"] == "true"


def test_one_request_per_instance_warm_reuse_and_429_at_max_instances(gcf_deploy, gcf_call):
    function = gcf_deploy("""
import threading, time

lock = threading.Lock()
in_flight = 0
most = 0
served = 0

def handler(request):
    global in_flight, most, served
    with lock:
        in_flight += 1
        served += 1
        most = max(most, in_flight)
        mine = served
    time.sleep(float(request.args.get("sleep", 0)))
    with lock:
        in_flight -= 1
    return {"most_at_once": most, "served": mine}
""", max_instances=2)
    answers: list = [None] * 3

    def call(i: int) -> None:
        answers[i] = gcf_call(function, path="?sleep=2")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 429], [a.text for a in answers]
    throttled = next(a for a in answers if a.status_code == 429)
    assert "no available instance" in throttled.text and "maxInstanceCount 2" in throttled.text
    served = [a for a in answers if a.status_code == 200]
    instances = {a.headers["X-Corral-Instance"] for a in served}
    assert len(instances) == 2
    assert all(a.json()["most_at_once"] == 1 for a in served)
    # warm reuse: the same two instances serve what follows, their module state intact
    later = [gcf_call(function) for _ in range(4)]
    assert {a.headers["X-Corral-Instance"] for a in later} <= instances
    assert all(a.headers["X-Corral-Cold-Start"] == "false" for a in later)
    assert sum(a.json()["served"] for a in later) > 4  # counters kept counting from the earlier requests
    assert all(a.json()["most_at_once"] == 1 for a in later)


def test_32_mib_request_and_response_limits(gcf_deploy, gcf_call):
    function = gcf_deploy("""
def handler(request):
    size = request.args.get("size")
    if size:
        return b"y" * int(size)
    return str(len(request.get_data()))
""", memory="512Mi")
    limit = 32 * MiB
    assert gcf_call(function, data=b"x" * limit).text == str(limit)
    over = gcf_call(function, data=b"x" * (limit + 1))
    assert over.status_code == 413 and "32 MiB (33554432 bytes)" in over.text
    assert len(gcf_call(function, path=f"?size={limit}").content) == limit
    too_big = gcf_call(function, path=f"?size={limit + 1}")
    assert too_big.status_code == 500
    assert too_big.text.startswith("Response size was too large") and "32 MiB" in too_big.text
    assert gcf_call(function, data=b"abc").text == "3"  # the instance still serves


def test_idle_instances_are_reaped(docker_engine):
    """An emulator of its own, with a 1 s idle timeout: the deploy's instance goes, the next request is cold."""
    from corral_emulator import Emulator

    from tests.emulator.conftest import create_function, make_gcf_client

    with Emulator(idle_timeout=1.0) as emu:
        client = make_gcf_client(emu.endpoint)
        import google.auth.transport.requests
        import requests
        from google.oauth2 import service_account

        function = create_function(client, "reaped", "def handler(request):\n    return 'hi'\n").result(timeout=300)
        assert len(containers_of(docker_engine, function)) == 1  # the health check's instance, warm
        deadline = time.monotonic() + 10
        while containers_of(docker_engine, function) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not containers_of(docker_engine, function)
        uri = function.service_config.uri
        token = service_account.IDTokenCredentials.from_service_account_info(
            emu.service_account_key(), target_audience=uri)
        token.refresh(google.auth.transport.requests.Request())
        headers = {"Authorization": f"Bearer {token.token}"}
        cold = requests.post(uri, headers=headers, timeout=60)
        warm = requests.post(uri, headers=headers, timeout=60)
        assert (cold.text, cold.headers["X-Corral-Cold-Start"]) == ("hi", "true")
        assert float(cold.headers["X-Corral-Init-Duration-Ms"]) > 0
        assert (warm.headers["X-Corral-Cold-Start"], warm.headers["X-Corral-Instance"]) == (
            "false", cold.headers["X-Corral-Instance"])
    assert not containers_of(docker_engine, function)
