"""The lambda executor against boto3's Stubber: what it calls to deploy, and how it treats throttling.

The Stubber replaces Lambda's HTTP answers only (AWS is unreachable here); every request is still
validated against botocore's model of the Lambda API. The emulator tests (tests/aws) run the same code
against a real endpoint.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import zipfile

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from corral_lambda import iam
from corral_lambda.executor import HANDLER, MAX_UNZIPPED, LambdaConfig, LambdaExecutor, code_sha256
from corral_lambda.pricing import PRICES, estimate, gb_seconds

import corral
from corral import INFRASTRUCTURE, THROTTLED
from corral.packaging import Package

ROLE = "arn:aws:iam::123456789012:role/r"


def make_executor(**config):
    client = boto3.client("lambda", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    defaults = {"function_name": "fn", "role_arn": ROLE, "deadline": time.time() + 30, "runtime": "python3.11"}
    executor = LambdaExecutor(2, LambdaConfig(**{**defaults, **config}), client=client)
    return executor, Stubber(client)


def body(data: dict) -> StreamingBody:
    raw = json.dumps(data).encode()
    return StreamingBody(io.BytesIO(raw), len(raw))


def ok_result() -> dict:
    return {"ok": True, "task": "map-0000", "attempt": 1, "seconds": 0.01, "peak_memory_mb": 30.0}


REPORT = "REPORT RequestId: r\tDuration: 5.00 ms\tBilled Duration: 5 ms\tMemory Size: 512 MB\tMax Memory Used: 40 MB\n"


def invoke_ok(billed_ms: int = 5, memory: int = 512) -> dict:
    report = REPORT.replace("Billed Duration: 5 ms", f"Billed Duration: {billed_ms} ms").replace(
        "Memory Size: 512", f"Memory Size: {memory}")
    return {"StatusCode": 200, "Payload": body(ok_result()), "LogResult": base64.b64encode(report.encode()).decode()}


def test_throttling_is_retried_counted_and_logged_not_failed(caplog):
    executor, stub = make_executor()
    for _ in range(3):
        stub.add_client_error("invoke", "TooManyRequestsException", "Rate Exceeded.", 429,
                              response_meta={"Reason": "ConcurrentInvocationLimitExceeded"})
    stub.add_response("invoke", invoke_ok())
    with stub, caplog.at_level(logging.INFO, logger="corral.lambda"):
        outcome = executor.submit({"task": "map-0000", "attempt": 1}).result(timeout=30)
    assert outcome.ok, outcome.failure
    assert (outcome.stats["throttles"], outcome.stats["invoke_attempts"]) == (3, 4)
    assert (outcome.stats["billed_ms"], outcome.stats["max_memory_used_mb"]) == (5, 40)
    assert outcome.stats["cold_start"] is False
    retries = [r.getMessage() for r in caplog.records if "throttled" in r.getMessage()]
    assert len(retries) == 3 and all(m.startswith("map-0000 attempt 1: invoke throttled") for m in retries)
    assert executor.report()["throttled_invokes"] == 3
    executor.close()


def test_throttling_is_retried_until_the_deadline_then_the_attempt_fails_as_throttled():
    executor, stub = make_executor()
    for _ in range(60):
        stub.add_client_error("invoke", "TooManyRequestsException", "Rate Exceeded.", 429)
    executor.deadline = time.time() + 0.5  # from here: making the client above may take longer than that
    started = time.monotonic()
    with stub:
        outcome = executor.invoke({"task": "map-0000", "attempt": 2})
    assert 0.4 < time.monotonic() - started < 5
    assert outcome.failure.kind == THROTTLED
    assert "still throttled at the job's deadline" in outcome.failure.message
    assert outcome.stats["throttles"] == outcome.stats["invoke_attempts"] > 1


def test_server_errors_are_retried_a_few_times_then_fail_as_infrastructure():
    executor, stub = make_executor(api_attempts=3)
    for _ in range(3):
        stub.add_client_error("invoke", "ServiceException", "boom", 500)
    with stub:
        outcome = executor.invoke({"task": "map-0000"})
    assert outcome.failure.kind == INFRASTRUCTURE and "ServiceException" in outcome.failure.message
    assert outcome.stats["invoke_attempts"] == 3


def test_a_function_error_is_not_retried_by_the_executor():
    executor, stub = make_executor()
    error = {"errorType": "ValueError", "errorMessage": "bad", "stackTrace": ['  File "job.py", line 3\n']}
    stub.add_response("invoke", {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": body(error)})
    with stub:
        outcome = executor.invoke({"task": "map-0000"})
    stub.assert_no_pending_responses()
    assert outcome.failure.kind == "user error" and "ValueError: bad" in outcome.failure.message
    assert "job.py" in outcome.failure.traceback


def configuration(**overrides) -> dict:
    config = {
        "FunctionName": "fn", "Runtime": "python3.11", "Handler": HANDLER, "MemorySize": 512, "Timeout": 60,
        "Role": ROLE, "State": "Active", "LastUpdateStatus": "Successful", "Architectures": ["x86_64"],
        "Description": "corral job j:J", "CodeSha256": "", "Environment": {"Variables": {}},
        "EphemeralStorage": {"Size": 512},
    }
    config.update(overrides)
    return {"Configuration": config, "Tags": {"corral:managed": "true"}}


@pytest.fixture
def package(monkeypatch):
    built = corral.packaging.make_zip({"a.py": b"1"})
    monkeypatch.setattr(LambdaExecutor, "build", lambda self, job: built)
    return built


JOB = corral.JobSource({"module": "j", "class": "J", "path": None}, (), ("s3://bucket/in", "s3://bucket/out"),
                       inputs=("s3://bucket/in",), output="s3://bucket/out", work="s3://bucket/out/_corral/work")
CREATE = {"FunctionName": "fn", "PackageType": "Zip", "Architectures": ["x86_64"], "Runtime": "python3.11",
          "Handler": HANDLER, "MemorySize": 512, "Timeout": 60, "Environment": {"Variables": {}},
          "EphemeralStorage": {"Size": 512}, "Description": "corral job j:J", "Role": ROLE,
          "Tags": {"corral:managed": "true"}}


def test_deploy_creates_a_missing_function(package):
    executor, stub = make_executor()
    stub.add_client_error("get_function", "ResourceNotFoundException", "Function not found", 404)
    stub.add_response("create_function", {"FunctionName": "fn"}, {**CREATE, "Code": {"ZipFile": package.zip_bytes}})
    stub.add_response("get_function", configuration(CodeSha256=code_sha256(package)), {"FunctionName": "fn"})
    with stub:
        executor.deploy(JOB)
    stub.assert_no_pending_responses()
    assert executor.deploy_actions == ["create"] and executor.uploads == 1


def test_create_function_is_retried_while_a_new_role_propagates(package, monkeypatch):
    monkeypatch.setattr(iam, "ROLE_PROPAGATION_TIMEOUT", 30.0)
    original = iam.while_role_propagates
    monkeypatch.setattr(iam, "while_role_propagates", lambda call: original(call, wait=lambda state: 0.01))
    executor, stub = make_executor()
    stub.add_client_error("get_function", "ResourceNotFoundException", "Function not found", 404)
    for _ in range(2):
        stub.add_client_error("create_function", "InvalidParameterValueException",
                              "The role defined for the function cannot be assumed by Lambda.", 400)
    stub.add_response("create_function", {"FunctionName": "fn"}, {**CREATE, "Code": {"ZipFile": package.zip_bytes}})
    stub.add_response("get_function", configuration(CodeSha256=code_sha256(package)), {"FunctionName": "fn"})
    with stub:
        executor.deploy(JOB)
    stub.assert_no_pending_responses()


def test_deploy_of_unchanged_code_updates_nothing(package):
    executor, stub = make_executor()
    stub.add_response("get_function", configuration(CodeSha256=code_sha256(package)), {"FunctionName": "fn"})
    with stub:  # any further call would fail: the stubber has no response for it
        executor.deploy(JOB)
    assert executor.deploy_actions == [] and executor.uploads == 0


@pytest.mark.parametrize(
    ("setting", "field", "value"),
    [("memory", "MemorySize", 1024), ("timeout", "Timeout", 300), ("role_arn", "Role", ROLE + "2"),
     ("ephemeral_storage", "EphemeralStorage", {"Size": 2048}),
     ("environment", "Environment", {"Variables": {"MODE": "fast"}})],
)
def test_a_changed_setting_updates_the_configuration_only(package, setting, field, value):
    setting_value = {"EphemeralStorage": 2048, "Environment": {"MODE": "fast"}}.get(field, value)
    executor, stub = make_executor(**{setting: setting_value})
    stub.add_response("get_function", configuration(CodeSha256=code_sha256(package)), {"FunctionName": "fn"})
    stub.add_response("update_function_configuration", {}, {"FunctionName": "fn", field: value})
    stub.add_response("get_function", configuration(CodeSha256=code_sha256(package)), {"FunctionName": "fn"})
    with stub:
        executor.deploy(JOB)
    stub.assert_no_pending_responses()
    assert executor.deploy_actions == ["update-config"] and executor.uploads == 0


def test_changed_code_updates_the_code_only(package):
    executor, stub = make_executor()
    stub.add_response("get_function", configuration(CodeSha256="old"), {"FunctionName": "fn"})
    stub.add_response("update_function_code", {}, {"FunctionName": "fn", "ZipFile": package.zip_bytes,
                                                   "Architectures": ["x86_64"]})
    stub.add_response("get_function", configuration(CodeSha256=code_sha256(package)), {"FunctionName": "fn"})
    with stub:
        executor.deploy(JOB)
    stub.assert_no_pending_responses()
    assert executor.deploy_actions == ["update-code"]


def test_a_new_architecture_goes_with_the_code_as_aws_requires(package):
    """UpdateFunctionConfiguration has no Architectures: AWS takes it in UpdateFunctionCode."""
    executor, stub = make_executor(architecture="arm64")
    stub.add_response("get_function", configuration(CodeSha256=code_sha256(package)), {"FunctionName": "fn"})
    stub.add_response("update_function_code", {}, {"FunctionName": "fn", "ZipFile": package.zip_bytes,
                                                   "Architectures": ["arm64"]})
    stub.add_response("get_function", configuration(CodeSha256=code_sha256(package), Architectures=["arm64"]),
                      {"FunctionName": "fn"})
    with stub:
        executor.deploy(JOB)
    stub.assert_no_pending_responses()
    assert executor.deploy_actions == ["update-code"]


def test_a_function_corral_did_not_create_is_left_alone(package):
    executor, stub = make_executor()
    foreign = {**configuration(CodeSha256="x"), "Tags": {}}
    stub.add_response("get_function", foreign, {"FunctionName": "fn"})
    with stub, pytest.raises(corral.UsageError, match="not created by corral"):
        executor.deploy(JOB)


def big_package(sizes: dict[str, int]) -> Package:
    """A zip whose entries unzip to ``sizes`` bytes (zeros: a few KB zipped)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, size in sizes.items():
            with archive.open(name, "w") as out:
                for _ in range(size // (1 << 20)):
                    out.write(bytes(1 << 20))
    data = buffer.getvalue()
    import hashlib

    return Package(data, hashlib.sha256(data).hexdigest(), tuple(sizes))


def test_over_250_mb_unzipped_is_refused_naming_the_largest_dependencies(monkeypatch):
    mb = 1 << 20
    built = big_package({"numpy/core.so": 70 * mb, "numpy.libs/openblas.so": 30 * mb, "scipy/x.so": 90 * mb,
                         "pandas/y.so": 50 * mb, "pyarrow/z.so": 12 * mb, "tiny/t.py": 1 * mb, "myjob.py": 0})
    monkeypatch.setattr(LambdaExecutor, "build", lambda self, job: built)
    executor, stub = make_executor()
    with stub, pytest.raises(corral.UsageError) as info:  # nothing is called: the stubber has no answer
        executor.deploy(JOB)
    message = str(info.value)
    assert built.unzipped_size > MAX_UNZIPPED
    assert "253.0 MB unzipped, over Lambda's 250 MB limit" in message
    assert "scipy 90.0 MB, numpy 70.0 MB, pandas 50.0 MB, numpy.libs 30.0 MB, pyarrow 12.0 MB" in message
    assert "tiny" not in message


def test_over_50_mb_zipped_needs_a_deploy_bucket(monkeypatch):
    built = Package(b"\0" * (51 << 20), "0" * 64, ())
    monkeypatch.setattr(LambdaExecutor, "build", lambda self, job: built)
    monkeypatch.setattr(Package, "unzipped_size", property(lambda self: 60 << 20))
    executor, stub = make_executor()
    with stub, pytest.raises(corral.UsageError, match=r"51\.0 MB zipped, over Lambda's 50 MB limit .*--deploy-bucket"):
        executor.deploy(JOB)


def test_the_report_adds_up_gb_seconds_and_the_cost():
    executor, stub = make_executor(memory=1024, architecture="arm64")
    stub.add_response("invoke", invoke_ok(billed_ms=2000, memory=1024))
    stub.add_response("invoke", invoke_ok(billed_ms=500, memory=1024))
    with stub:
        executor.invoke({"task": "map-0000"})
        executor.invoke({"task": "map-0001"})
    report = executor.report()
    assert report["invocations"] == 2 and report["billed_ms"] == 2500
    assert report["gb_seconds"] == pytest.approx(2.5)  # 2.5 s at 1 GB
    expected = 2.5 * PRICES["arm64"].gb_second + 2 * 0.20 / 1e6
    assert report["estimated_cost_usd"] == pytest.approx(expected, abs=1e-8)
    assert report["prices"]["region"] == "us-east-1" and report["prices"]["read"]
    assert "2 invocations, 2.500 GB-s billed (arm64, 1024 MB)" in report["summary"]


def test_price_table_and_gb_seconds():
    assert gb_seconds(1000, 1024) == 1.0 and gb_seconds(100, 128) == pytest.approx(0.0125)
    x86 = estimate("x86_64", 1_000_000, 400_000)
    assert x86["estimated_cost_usd"] == pytest.approx(400_000 * 0.0000166667 + 0.20)
    assert PRICES["arm64"].gb_second < PRICES["x86_64"].gb_second


def test_no_iam_rights_says_how_to_do_without(package):
    """Without --lambda-role-arn corral creates the role; an identity that may not gets told the way out."""
    executor, stub = make_executor(role_arn=None)
    sts = boto3.client("sts", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    sts_stub = Stubber(sts)
    sts_stub.add_client_error("get_caller_identity", "AccessDenied", "not allowed", 403)
    executor._clients["sts"] = sts
    with stub, sts_stub, pytest.raises(corral.CorralError) as info:
        executor.deploy(JOB)
    assert "cannot deploy the function fn: AccessDenied: not allowed" in str(info.value)
    assert "--lambda-role-arn" in str(info.value) and info.value.exit_code == 1
