"""The emulator's code from S3 (``Code.S3Bucket/S3Key``, read from the S3 endpoint of its environment:
moto here), the architecture given with UpdateFunctionCode as on AWS, and its throttling fault hook."""

from __future__ import annotations

import base64
import hashlib
import random

import pytest
from botocore.exceptions import ClientError

from tests.moto_fixtures import bucket, moto_server, s3  # noqa: F401 - fixtures

pytestmark = [pytest.mark.docker, pytest.mark.moto]

VERSION = "def handler(event, context):\n    return {'version': %d}\n"


def sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_code_from_s3_on_create_and_update(moto_server, s3, bucket, lambda_client, package, call):  # noqa: F811
    first, second = package({"app.py": VERSION % 1}), package({"app.py": VERSION % 2})
    s3.put_object(Bucket=bucket, Key="code/v1.zip", Body=first)
    s3.put_object(Bucket=bucket, Key="code/v2.zip", Body=second)
    lambda_client.create_function(FunctionName="from-s3", Runtime="python3.11", Handler="app.handler",
                                  Role="arn:aws:iam::000000000000:role/x",
                                  Code={"S3Bucket": bucket, "S3Key": "code/v1.zip"})
    try:
        config = lambda_client.get_function_configuration(FunctionName="from-s3")
        assert (config["CodeSha256"], config["CodeSize"], config["Architectures"]) == (sha(first), len(first),
                                                                                      ["x86_64"])
        assert call("from-s3")[0] == {"version": 1}
        updated = lambda_client.update_function_code(FunctionName="from-s3", S3Bucket=bucket, S3Key="code/v2.zip",
                                                     Architectures=["arm64"])
        assert (updated["CodeSha256"], updated["Architectures"]) == (sha(second), ["arm64"])
        assert call("from-s3")[0] == {"version": 2}
        with pytest.raises(ClientError) as missing:
            lambda_client.update_function_code(FunctionName="from-s3", S3Bucket=bucket, S3Key="code/none.zip")
        assert missing.value.response["Error"]["Code"] == "InvalidParameterValueException"
        assert "S3 Error Code: NoSuchKey" in missing.value.response["Error"]["Message"]
        assert lambda_client.get_function_configuration(FunctionName="from-s3")["CodeSha256"] == sha(second)
    finally:
        lambda_client.delete_function(FunctionName="from-s3")


def test_the_throttle_fault_hook_is_seeded_and_only_throttles(docker_engine, client_for, package, monkeypatch):
    from corral_emulator import Emulator, EmulatorError

    expected_rng = random.Random(5)
    expected = [expected_rng.random() < 0.4 for _ in range(12)]
    with Emulator(max_concurrency=2, throttle_fraction=0.4, throttle_seed=5) as emu:
        client = client_for(emu.endpoint)
        client.create_function(FunctionName="echo", Runtime="python3.11", Role="arn:aws:iam::0:role/x",
                               Handler="app.handler", Code={"ZipFile": package({"app.py": VERSION % 7})})
        seen = []
        for _ in range(12):
            try:
                client.invoke(FunctionName="echo", Payload=b"{}")
                seen.append(False)
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "TooManyRequestsException"
                assert exc.response["Reason"] == "ConcurrentInvocationLimitExceeded"
                seen.append(True)
        assert seen == expected and emu.engine.injected_throttles == sum(expected) > 0
    monkeypatch.setenv("CORRAL_EMULATOR_THROTTLE", "0.25")
    assert Emulator().throttle_fraction == 0.25
    with pytest.raises(EmulatorError, match="below 1"):
        Emulator(throttle_fraction=1.0)
