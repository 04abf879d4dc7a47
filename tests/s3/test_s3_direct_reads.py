"""Ranged reads of S3 objects as corral's own signed GETs (``corral.filesystems.s3_direct``), against moto.

A map task over many small objects makes one GET each; through botocore each costs 2-4 ms of CPU, which a
Lambda function at 0.29 vCPU pays three times over in billed time. These tests show the GETs are corral's
(one per object, SigV4-signed, checked by moto against the IAM user's secret), and that whatever they do
not handle (a missing object, a refusal, SlowDown) is s3fs's to answer, with its retries and errors.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.s3.faulty_proxy import FaultyProxy
from tests.s3.test_s3 import expected_counts, read_parts

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CORRAL = str(Path(sys.executable).with_name("corral"))
pytestmark = pytest.mark.moto

#: Keys S3 users have: spaces, plus signs, percent signs, tildes, non-ASCII, characters URLs reserve.
AWKWARD = ["logs/a b+c.txt", "logs/100%/d~e.txt.gz", "logs/ünï/cödé.txt", "logs/q=1&r=(2)!*'.txt",
           "logs/x;y,z:@$.txt.gz", "logs/deep//double.txt"]


def _s3fs(endpoint: str, **kwargs):
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True, **kwargs)


def _wrapper(fs):
    from corral.filesystems.fsspec import FsspecFileSystem

    return FsspecFileSystem(fs)


def _corral(*args: str, endpoint: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": endpoint}
    return subprocess.run([CORRAL, *args], capture_output=True, text=True, env=env, timeout=300)


def test_a_job_reads_each_small_object_with_one_signed_get_of_its_own(moto_server, s3, bucket):
    """Each input object is one GET, sent by corral (not botocore) and SigV4-signed for the client's
    region; the reducers' ranged reads of the map outputs are corral's too; the counts are exact."""
    texts = {key: f"w{i} x{i % 4} {key}\nshared line\n" * (i + 3) for i, key in enumerate(AWKWARD)}
    texts.update({f"logs/day-{i:03d}.txt.gz" if i % 2 else f"logs/day-{i:03d}.txt": f"a{i} b{i % 3}\nc\n" * (i + 1)
                  for i in range(40)})
    for key, text in texts.items():
        s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(text.encode()) if key.endswith(".gz")
                      else text.encode())
    with FaultyProxy(moto_server["AWS_ENDPOINT_URL_S3"], every=0) as proxy:
        done = _corral("run", str(EXAMPLES / "wordcount.py"), f"s3://{bucket}/logs/", "--out",
                       f"s3://{bucket}/out", "--backend", "processes", "--reducers", "2", "-q", endpoint=proxy.url)
    assert done.returncode == 0, done.stderr[-3000:]
    got = Counter({k: int(v) for k, v in (line.split("\t") for line in read_parts(s3, bucket, "out/"))})
    assert got == expected_counts(list(texts.values()))

    inputs = [s for s in proxy.seen if s.method == "GET" and s.path.startswith(f"/{bucket}/logs/")]
    assert Counter(s.path.removeprefix(f"/{bucket}/") for s in inputs) == Counter(dict.fromkeys(texts, 1))
    assert all(s.agent and s.agent.startswith("corral/") for s in inputs), {s.agent for s in inputs}
    scope = "/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature="
    assert all(s.authorization and s.authorization.startswith("AWS4-HMAC-SHA256 Credential=testing/")
               and scope in s.authorization for s in inputs), inputs[0].authorization
    shuffle = [s for s in proxy.seen if s.method == "GET" and "/_corral/work/" in s.path and s.range]
    assert shuffle and all(s.agent and s.agent.startswith("corral/") for s in shuffle)


def test_moto_checking_signatures_accepts_every_read(moto_server, s3, bucket, monkeypatch):
    """With moto checking each request's signature against an IAM user's secret, every read of objects
    with awkward keys is answered by corral's own GET; the same reader with a wrong secret is refused
    (so the check is real) and s3fs, trying in its turn, says access is denied."""
    import boto3
    import moto.settings
    from moto.core.authorization import ActionAuthenticatorMixin

    from corral.filesystems.s3_direct import DirectReader

    bodies = {key: f"{key}\n".encode() * 50 for key in AWKWARD}
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    iam = boto3.client("iam")
    user = f"reader-{bucket}"[:60]
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=(
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
    created = iam.create_access_key(UserName=user)["AccessKey"]
    key_id, secret = created["AccessKeyId"], created["SecretAccessKey"]
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    endpoint = moto_server["AWS_ENDPOINT_URL_S3"]

    reader = DirectReader.create(_s3fs(endpoint, key=key_id, secret=secret))
    assert reader is not None
    for key, body in bodies.items():
        assert reader.read(bucket, key, 0, len(body) + 1) == body, key
        assert reader.read(bucket, key, 5, 17) == body[5:17], key

    wrong = _s3fs(endpoint, key=key_id, secret="not-the-secret")
    refused = DirectReader.create(wrong)
    assert refused is not None and refused.read(bucket, AWKWARD[0], 0, 10) is None
    with pytest.raises(PermissionError):
        _wrapper(wrong).read_range(f"s3://{bucket}/{AWKWARD[0]}", 0, 10)


def test_what_corrals_gets_do_not_handle_is_left_to_s3fs(moto_server, s3, bucket):
    """A missing object is s3fs's FileNotFoundError; SlowDown on every other request still reads every
    byte (s3fs retries); a bucket that refuses a read is read through s3fs from then on."""
    bodies = {f"in/{i:02d}.txt": f"object {i}\n".encode() * (i + 1) for i in range(12)}
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    endpoint = moto_server["AWS_ENDPOINT_URL_S3"]

    with FaultyProxy(endpoint, every=2) as proxy:
        fs = _wrapper(_s3fs(proxy.url))
        for key, body in bodies.items():
            assert fs.read_range(f"s3://{bucket}/{key}", 0, len(body) + 1) == body
        with pytest.raises(FileNotFoundError):
            fs.read_range(f"s3://{bucket}/in/missing.txt", 0, 10)
    slowed = [s for s in proxy.seen if s.faulted]
    assert slowed and any(s.agent and s.agent.startswith("corral/") for s in slowed)
    assert any("Botocore" in (s.agent or "") for s in proxy.seen)  # s3fs read what SlowDown refused corral

    denied = f"/{bucket}/in/03.txt"
    with FaultyProxy(endpoint, every=0, deny=lambda method, path: path == denied) as proxy:
        fs = _wrapper(_s3fs(proxy.url))
        assert fs.read_range(f"s3://{bucket}/in/01.txt", 0, 100) == bodies["in/01.txt"]
        with pytest.raises(PermissionError):
            fs.read_range(f"s3://{bucket}/in/03.txt", 0, 100)
        assert fs.read_range(f"s3://{bucket}/in/05.txt", 0, 100) == bodies["in/05.txt"]
    agents = [(s.path, (s.agent or "").split("/", 1)[0]) for s in proxy.seen if s.method == "GET"]
    assert agents[0] == (f"/{bucket}/in/01.txt", "corral")
    assert agents[1] == (denied, "corral")  # refused: this bucket is s3fs's from now on
    assert all(agent != "corral" for _, agent in agents[2:]), agents
