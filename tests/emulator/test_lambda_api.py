"""Lambda's HTTP API through an unmodified boto3 client: functions, invocation types, errors, limits."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time

import pytest
from botocore.exceptions import ClientError

pytestmark = pytest.mark.docker

ECHO = """
def handler(event, context):
    return event
"""

VERSION = """
import os
def handler(event, context):
    return {"version": VERSION, "greeting": os.environ.get("GREETING")}
VERSION = {version}
"""


def error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def test_create_get_list_update_delete(lambda_client, make_function, package, call):
    code = package({"app.py": VERSION.replace("{version}", "1")})
    name = make_function(zip_bytes=code, memory=256, timeout=7, env={"GREETING": "hello"})
    config = lambda_client.get_function_configuration(FunctionName=name)
    assert config["FunctionName"] == name
    assert config["State"] == "Active" and config["LastUpdateStatus"] == "Successful"
    assert config["CodeSha256"] == base64.b64encode(hashlib.sha256(code).digest()).decode()
    assert config["CodeSize"] == len(code)
    assert (config["MemorySize"], config["Timeout"]) == (256, 7)
    assert config["Environment"] == {"Variables": {"GREETING": "hello"}}
    assert config["Runtime"] == "python3.11" and config["Handler"] == "app.handler"
    assert config["FunctionArn"].endswith(f":function:{name}")
    assert config["Role"] == "arn:aws:iam::000000000000:role/corral-test"
    assert config["Architectures"] == ["x86_64"] and config["EphemeralStorage"] == {"Size": 512}
    assert config["Version"] == "$LATEST" and config["RevisionId"]

    got = lambda_client.get_function(FunctionName=name)
    assert got["Configuration"]["CodeSha256"] == config["CodeSha256"]
    assert got["Code"]["Location"]
    lambda_client.get_waiter("function_active_v2").wait(FunctionName=name)
    lambda_client.get_waiter("function_exists").wait(FunctionName=name)
    # A function can be named by its ARN too.
    assert lambda_client.get_function(FunctionName=config["FunctionArn"])["Configuration"]["FunctionName"] == name

    listed = [f["FunctionName"] for page in lambda_client.get_paginator("list_functions").paginate()
              for f in page["Functions"]]
    assert name in listed

    assert call(name)[0] == {"version": 1, "greeting": "hello"}

    new_code = package({"app.py": VERSION.replace("{version}", "2")})
    updated = lambda_client.update_function_code(FunctionName=name, ZipFile=new_code)
    assert updated["CodeSha256"] != config["CodeSha256"] and updated["RevisionId"] != config["RevisionId"]
    lambda_client.get_waiter("function_updated_v2").wait(FunctionName=name)
    assert call(name)[0] == {"version": 2, "greeting": "hello"}

    lambda_client.update_function_configuration(FunctionName=name, Environment={"Variables": {"GREETING": "bye"}})
    lambda_client.get_waiter("function_updated_v2").wait(FunctionName=name)
    assert call(name)[0] == {"version": 2, "greeting": "bye"}

    lambda_client.delete_function(FunctionName=name)
    with pytest.raises(ClientError) as excinfo:
        lambda_client.get_function(FunctionName=name)
    assert error_code(excinfo) == "ResourceNotFoundException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
        lambda_client.invoke(FunctionName=name, Payload=b"{}")


def test_api_errors(lambda_client, make_function, package):
    name = make_function(ECHO)
    with pytest.raises(ClientError) as excinfo:
        make_function(ECHO, name=name)
    assert error_code(excinfo) == "ResourceConflictException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    with pytest.raises(ClientError) as excinfo:
        make_function(ECHO, timeout=901)
    assert error_code(excinfo) == "InvalidParameterValueException"
    with pytest.raises(ClientError) as excinfo:
        make_function(ECHO, env={"AWS_REGION": "eu-west-1"})
    assert error_code(excinfo) == "InvalidParameterValueException"
    with pytest.raises(ClientError) as excinfo:
        make_function(zip_bytes=b"not a zip")
    assert error_code(excinfo) == "InvalidParameterValueException"
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
        lambda_client.update_function_configuration(FunctionName="no-such-function", Timeout=5)
    with pytest.raises(ClientError) as excinfo:
        lambda_client.update_function_configuration(FunctionName=name, Timeout=5, RevisionId="stale")
    assert error_code(excinfo) == "PreconditionFailedException"


def test_invoke_round_trip(make_function, call):
    name = make_function(ECHO)
    event = {"text": "héllo wörld ✓", "numbers": [1, 2.5, -3], "nested": {"a": None, "b": True}, "empty": {}}
    payload, response = call(name, event)
    assert payload == event
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert response["ExecutedVersion"] == "$LATEST"


def test_handler_error(make_function, call):
    name = make_function("""
def helper():
    raise ValueError("bad input: 42")

def handler(event, context):
    helper()
""")
    payload, response = call(name, {})
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert payload["errorType"] == "ValueError"
    assert payload["errorMessage"] == "bad input: 42"
    assert any("helper" in frame for frame in payload["stackTrace"])
    # The sandbox survives a handler exception.
    assert call(name, {})[1]["FunctionError"] == "Unhandled"


def test_init_error(make_function, call):
    name = make_function("import no_such_module\n\ndef handler(event, context):\n    return 1\n")
    payload, response = call(name, {})
    assert response["FunctionError"] == "Unhandled"
    assert payload["errorType"] == "Runtime.ImportModuleError"
    assert "no_such_module" in payload["errorMessage"]


def test_event_and_dry_run(make_function, lambda_client, shared_folder):
    marker = shared_folder / "event-ran.txt"
    name = make_function(f"""
def handler(event, context):
    with open({str(marker)!r}, "w") as f:
        f.write(event["value"])
""")
    response = lambda_client.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps({"value": "ok"}))
    assert response["StatusCode"] == 202
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.read_text() == "ok"
    response = lambda_client.invoke(FunctionName=name, InvocationType="DryRun")
    assert response["StatusCode"] == 204


def test_request_too_large(make_function, lambda_client):
    name = make_function(ECHO)
    payload = json.dumps({"data": "x" * (6 * 1024 * 1024)}).encode()
    assert len(payload) > 6291456
    with pytest.raises(ClientError) as excinfo:
        lambda_client.invoke(FunctionName=name, Payload=payload)
    assert error_code(excinfo) == "RequestEntityTooLargeException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


def test_response_too_large(make_function, call):
    name = make_function("""
def handler(event, context):
    return "x" * event["size"]
""")
    payload, response = call(name, {"size": 7 * 1024 * 1024})
    assert response["FunctionError"] == "Unhandled"
    assert payload["errorType"] == "Function.ResponseSizeTooLarge"
    payload, response = call(name, {"size": 5 * 1024 * 1024})
    assert "FunctionError" not in response and len(payload) == 5 * 1024 * 1024


def test_log_tail(make_function, call):
    name = make_function("""
def handler(event, context):
    for i in range(event["lines"]):
        print(f"line {i:05d} " + "." * 80)
    return "done"
""")
    _, response = call(name, {"lines": 3}, LogType="Tail")
    text = base64.b64decode(response["LogResult"]).decode()
    lines = text.splitlines()
    assert lines[0].startswith("START RequestId: ") and "Version: $LATEST" in lines[0]
    assert lines[1].startswith("line 00000")
    assert lines[-2].startswith("END RequestId: ")
    assert lines[-1].startswith("REPORT RequestId: ")
    request_id = response["ResponseMetadata"]["RequestId"]
    assert request_id in lines[0] and request_id in lines[-1]
    # A long log: only its last 4 KB come back, ending with the REPORT line.
    _, response = call(name, {"lines": 200}, LogType="Tail")
    data = base64.b64decode(response["LogResult"])
    assert len(data) <= 4096
    assert data.decode().splitlines()[-1].startswith("REPORT RequestId: ")
    assert "line 00199" in data.decode()


def _invoke_in_thread(client, name, results, index, event):
    try:
        response = client.invoke(FunctionName=name, Payload=json.dumps(event))
        results[index] = ("ok", response["Payload"].read())
    except ClientError as exc:
        results[index] = ("error", exc.response)


def _three_concurrent(client, name):
    results: list = [None] * 3
    threads = [threading.Thread(target=_invoke_in_thread, args=(client, name, results, i, {"sleep": 4}))
               for i in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)  # both are running (a cold start takes well under a second)
    _invoke_in_thread(client, name, results, 2, {"sleep": 0})
    for thread in threads:
        thread.join()
    return results


SLEEPER = """
import time
def handler(event, context):
    time.sleep(event["sleep"])
    return "slept"
"""


def test_reserved_concurrency_throttles(make_function, lambda_client):
    name = make_function(SLEEPER)
    lambda_client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=2)
    assert lambda_client.get_function_concurrency(FunctionName=name)["ReservedConcurrentExecutions"] == 2
    results = _three_concurrent(lambda_client, name)
    assert [r[0] for r in results] == ["ok", "ok", "error"]
    error = results[2][1]
    assert error["Error"]["Code"] == "TooManyRequestsException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert error["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"


def test_global_concurrency_cap(docker_engine, client_for, package):
    from corral_emulator import Emulator

    with Emulator(max_concurrency=2) as emu:
        client = client_for(emu.endpoint)
        client.create_function(FunctionName="sleeper", Runtime="python3.11", Role="arn:aws:iam::0:role/x",
                               Handler="app.handler", Code={"ZipFile": package({"app.py": SLEEPER})})
        results = _three_concurrent(client, "sleeper")
        assert [r[0] for r in results] == ["ok", "ok", "error"]
        assert results[2][1]["Error"]["Code"] == "TooManyRequestsException"
        assert results[2][1]["Reason"] == "ConcurrentInvocationLimitExceeded"
        # Capacity is back once they finish.
        assert client.invoke(FunctionName="sleeper", Payload=b'{"sleep": 0}')["StatusCode"] == 200
        instance = emu.instance_id
        assert docker_engine.containers.list(all=True, sparse=True, filters={"label": f"corral-emulator={instance}"})
    # stop() removed exactly this instance's containers.
    assert not docker_engine.containers.list(all=True, sparse=True, filters={"label": f"corral-emulator={instance}"})


def test_a_full_pool_retires_the_least_recently_used_idle_sandbox_and_leaves_no_task_pending(
        docker_engine, client_for, package, caplog):
    """At the emulator's limit, a cold start makes room by retiring the idle sandbox used longest ago. Its
    runtime's long poll for the next invocation ends with it: no request task is left waiting forever (which
    asyncio reports as "Task was destroyed but it is pending!" once the sandbox is collected). Stopping
    leaves no task behind either (the containers' deaths as they are removed are not handled as crashes,
    whose clean-up came after the thread pool was gone: "Task exception was never retrieved")."""
    import gc
    import logging

    from corral_emulator import Emulator

    caplog.set_level(logging.ERROR, logger="asyncio")
    caplog.set_level(logging.ERROR, logger="corral_emulator")
    with Emulator(max_concurrency=2, cloud_cpu=False) as emu:
        client = client_for(emu.endpoint)
        for name in ("first", "second", "third"):
            client.create_function(FunctionName=name, Runtime="python3.11", Role="arn:aws:iam::0:role/x",
                                   Handler="app.handler", Code={"ZipFile": package({"app.py": ECHO})})
            assert json.loads(client.invoke(FunctionName=name, Payload=b'{"n": 1}')["Payload"].read()) == {"n": 1}

        def running() -> list[str]:
            containers = docker_engine.containers.list(
                all=True, filters={"label": f"corral-emulator={emu.instance_id}"})
            return sorted(c.labels["corral-emulator.function"] for c in containers)

        deadline = time.monotonic() + 30
        while running() != ["second", "third"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running() == ["second", "third"]
        gc.collect()
        time.sleep(0.2)  # the loop's thread logs what the collection destroyed
        assert "Task was destroyed but it is pending" not in caplog.text
        # the retired function starts cold again, retiring "second" now
        assert json.loads(client.invoke(FunctionName="first", Payload=b'{"n": 2}')["Payload"].read()) == {"n": 2}
    gc.collect()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_stopping_with_a_slow_docker_engine_leaves_no_task_failing(docker_engine, client_for, package, caplog,
                                                                    monkeypatch):
    """Removing the containers kills them: those deaths are not crashes to clean up after, or (with a Docker
    engine slow to remove, as under load) the clean-up ran once the thread pool was gone: "unhandled exception
    during asyncio.run() shutdown ... cannot schedule new futures after shutdown" on the user's stderr."""
    import logging

    from corral_emulator import Emulator
    from corral_emulator.engine import Engine

    remove = Engine.remove_container

    def slow_remove(self, name: str) -> None:  # the real removal, a second late
        time.sleep(1.0)
        remove(self, name)

    monkeypatch.setattr(Engine, "remove_container", slow_remove)
    caplog.set_level(logging.ERROR, logger="asyncio")
    caplog.set_level(logging.ERROR, logger="corral_emulator")
    with Emulator(max_concurrency=3, cloud_cpu=False) as emu:
        client = client_for(emu.endpoint)
        for name in ("first", "second"):
            client.create_function(FunctionName=name, Runtime="python3.11", Role="arn:aws:iam::0:role/x",
                                   Handler="app.handler", Code={"ZipFile": package({"app.py": ECHO})})
            assert client.invoke(FunctionName=name, Payload=b"{}")["StatusCode"] == 200
        instance = emu.instance_id
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not docker_engine.containers.list(all=True, sparse=True, filters={"label": f"corral-emulator={instance}"})
