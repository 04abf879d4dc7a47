"""The lambda executor against boto3's Stubber: what it calls to deploy, and how it treats throttling."""

from __future__ import annotations

import base64
import io
import json

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from corral_lambda import handler as handler_module
from corral_lambda.executor import HANDLER, LambdaConfig, LambdaExecutor

import corral
from corral import INFRASTRUCTURE, THROTTLED


def make_executor(**config):
    client = boto3.client("lambda", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    defaults = {"function_name": "fn", "role_arn": "arn:aws:iam::123456789012:role/r", "throttle_give_up": 5.0}
    executor = LambdaExecutor(2, LambdaConfig(**{**defaults, **config}), client=client)
    return executor, Stubber(client)


def body(data: dict) -> StreamingBody:
    raw = json.dumps(data).encode()
    return StreamingBody(io.BytesIO(raw), len(raw))


def ok_result() -> dict:
    return {"ok": True, "task": "map-0000", "attempt": 1, "seconds": 0.01, "peak_memory_mb": 30.0}


REPORT = "REPORT RequestId: r\tDuration: 5.00 ms\tBilled Duration: 5 ms\tMemory Size: 512 MB\tMax Memory Used: 40 MB\n"


def test_throttling_is_retried_not_failed():
    executor, stub = make_executor()
    executor.function_name = "fn"
    for _ in range(3):
        stub.add_client_error("invoke", "TooManyRequestsException", "Rate Exceeded.", 429)
    stub.add_response("invoke", {"StatusCode": 200, "Payload": body(ok_result()),
                                 "LogResult": base64.b64encode(REPORT.encode()).decode()})
    with stub:
        outcome = executor.submit({"task": "map-0000"}).result(timeout=30)
    assert outcome.ok, outcome.failure
    assert outcome.stats["invoke_attempts"] == 4
    assert (outcome.stats["billed_ms"], outcome.stats["max_memory_used_mb"]) == (5, 40)
    assert outcome.stats["cold_start"] is False
    executor.close()


def test_endless_throttling_surfaces_as_throttled_never_as_a_failure_kind_that_counts():
    executor, stub = make_executor(throttle_give_up=0.3)
    executor.function_name = "fn"
    for _ in range(30):
        stub.add_client_error("invoke", "TooManyRequestsException", "Rate Exceeded.", 429)
    with stub:
        outcome = executor.invoke({"task": "map-0000"})
    assert outcome.failure.kind == THROTTLED


def test_server_errors_are_retried_a_few_times():
    executor, stub = make_executor(api_attempts=3)
    executor.function_name = "fn"
    for _ in range(3):
        stub.add_client_error("invoke", "ServiceException", "boom", 500)
    with stub:
        outcome = executor.invoke({"task": "map-0000"})
    assert outcome.failure.kind == INFRASTRUCTURE and "ServiceException" in outcome.failure.message


def configuration(**overrides) -> dict:
    config = {
        "FunctionName": "fn", "Runtime": "python3.11", "Handler": HANDLER, "MemorySize": 512, "Timeout": 60,
        "Role": "arn:aws:iam::123456789012:role/r", "State": "Active", "LastUpdateStatus": "Successful",
        "Description": "corral job j:J", "CodeSha256": "", "Environment": {"Variables": {}},
    }
    config.update(overrides)
    return {"Configuration": config}


@pytest.fixture
def package(monkeypatch):
    built = corral.packaging.make_zip({"a.py": b"1"})
    monkeypatch.setattr(LambdaExecutor, "build", lambda self, job: built)
    return built


JOB = corral.JobSource({"module": "j", "class": "J", "path": None}, (), ("s3://bucket/in", "s3://bucket/out"))


def test_deploy_creates_a_missing_function(package):
    executor, stub = make_executor()
    stub.add_client_error("get_function", "ResourceNotFoundException", "Function not found", 404)
    stub.add_response("create_function", {"FunctionName": "fn"}, {
        "FunctionName": "fn", "PackageType": "Zip", "Code": {"ZipFile": package.zip_bytes},
        "Architectures": ["x86_64"], "Runtime": "python3.11", "Handler": HANDLER, "MemorySize": 512,
        "Timeout": 60, "Environment": {"Variables": {}}, "Description": "corral job j:J",
        "Role": "arn:aws:iam::123456789012:role/r",
    })
    stub.add_response("get_function", configuration(CodeSha256=package.code_sha256), {"FunctionName": "fn"})
    with stub:
        executor.deploy(JOB)
    stub.assert_no_pending_responses()
    assert executor.deploy_actions == ["create"]


def test_deploy_of_unchanged_code_updates_nothing(package):
    executor, stub = make_executor()
    stub.add_response("get_function", configuration(CodeSha256=package.code_sha256), {"FunctionName": "fn"})
    with stub:  # any further call would fail: the stubber has no response for it
        executor.deploy(JOB)
    assert executor.deploy_actions == []


def test_deploy_updates_only_what_changed(package):
    executor, stub = make_executor(memory=1024)
    stub.add_response("get_function", configuration(CodeSha256="old"), {"FunctionName": "fn"})
    stub.add_response("update_function_code", {}, {"FunctionName": "fn", "ZipFile": package.zip_bytes})
    stub.add_response("get_function", configuration(CodeSha256=package.code_sha256), {"FunctionName": "fn"})
    stub.add_response("update_function_configuration", {}, {"FunctionName": "fn", "MemorySize": 1024})
    updated = configuration(CodeSha256=package.code_sha256, MemorySize=1024)
    stub.add_response("get_function", updated, {"FunctionName": "fn"})
    with stub:
        executor.deploy(JOB)
    stub.assert_no_pending_responses()
    assert executor.deploy_actions == ["update-code", "update-config"]


def test_handler_caps_the_memory_budget_and_runs_the_packaged_job(monkeypatch, tmp_path):
    event = {"memory_budget": 256 << 20, "job": {"module": "myjob", "class": "J", "path": "/host/myjob.py"}}
    monkeypatch.setenv("LAMBDA_TASK_ROOT", str(tmp_path))
    prepared = handler_module.prepare(event, 128)
    assert prepared["memory_budget"] == int(128 * 0.4 * (1 << 20))
    assert prepared["job"]["path"] == "/host/myjob.py"  # not packaged here: the path stays
    (tmp_path / "myjob.py").write_text("")
    assert handler_module.prepare(event, 1024)["job"]["path"] is None
    assert handler_module.prepare(event, 1024)["memory_budget"] == 256 << 20  # under the cap
    assert event["job"]["path"] == "/host/myjob.py"  # the caller's event is left alone
