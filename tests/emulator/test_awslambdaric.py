"""AWS's own runtime interface client (awslambdaric) against the emulator's Runtime API.

The function uses a ``provided.al2`` runtime: as on Lambda, the package's executable ``bootstrap`` starts
the runtime, here ``python3 -m awslambdaric app.handler`` with awslambdaric installed in the package.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.docker

BOOTSTRAP = """#!/bin/sh
cd "$LAMBDA_TASK_ROOT"
exec python3 -m awslambdaric "$_HANDLER"
"""

APP = """
import os
calls = 0

def handler(event, context):
    global calls
    calls += 1
    if event.get("fail"):
        raise RuntimeError("failing on purpose")
    return {
        "echo": event,
        "calls": calls,
        "request_id": context.aws_request_id,
        "arn": context.invoked_function_arn,
        "remaining": context.get_remaining_time_in_millis(),
        "runtime_api": os.environ["AWS_LAMBDA_RUNTIME_API"],
    }
"""


def test_awslambdaric_serves_invocations(awslambdaric_dir, make_function, package_folder, call):
    code = package_folder(awslambdaric_dir, {"bootstrap": BOOTSTRAP, "app.py": APP}, {"bootstrap": 0o755})
    name = make_function(zip_bytes=code, runtime="provided.al2", handler="app.handler", timeout=5)

    payload, response = call(name, {"hello": "world"})
    assert "FunctionError" not in response, payload
    assert payload["echo"] == {"hello": "world"}
    assert payload["request_id"] == response["ResponseMetadata"]["RequestId"]
    assert payload["arn"].endswith(f":function:{name}")
    assert 0 < payload["remaining"] <= 5000

    payload, response = call(name, {"again": True})
    assert payload["calls"] == 2  # the same warm runtime

    payload, response = call(name, {"fail": True})
    assert response["FunctionError"] == "Unhandled"
    assert payload["errorType"] == "RuntimeError"
    assert payload["errorMessage"] == "failing on purpose"
    assert payload["stackTrace"]

    payload, response = call(name, {"after": "error"})
    assert payload["echo"] == {"after": "error"} and payload["calls"] == 4
