"""The Lambda backend against stand-ins for AWS that speak its real APIs: moto in server mode for S3, IAM
and STS, and corral's emulator for Lambda (functions in Docker containers). boto3, s3fs and the
``corral`` command are used unchanged; only ``--lambda-endpoint`` and the standard ``AWS_ENDPOINT_URL_*``
variables point them here.

Without Docker or moto the tests are skipped, except in CI (``CI=true``), where that fails them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.moto_fixtures import SECRET_KEY, bucket, moto_server, s3  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[2]
CORRAL = str(Path(sys.executable).with_name("corral"))
WORDCOUNT = REPO / "examples" / "wordcount.py"


@pytest.fixture(scope="package")
def emulator(moto_server, docker_engine):  # noqa: F811
    """A Lambda emulator whose containers get moto's endpoints and credentials (as SAM local passes the
    caller's AWS_* variables)."""
    from corral_emulator import Emulator

    with Emulator(max_concurrency=4, idle_timeout=120) as emu:
        yield emu


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    # moto's IAM applies a changed policy at once (AWS's takes seconds: corral waits 10 s there)
    env["CORRAL_LAMBDA_IAM_SETTLE"] = "0"
    env.update(extra)
    return env


def corral(*args, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    """``corral ARGS`` as a user types it: the console script in a subprocess."""
    return subprocess.run([CORRAL, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env or environment(), timeout=timeout)


def lambda_client(endpoint: str):
    import boto3

    return boto3.client("lambda", endpoint_url=endpoint, region_name="us-east-1")


def manifest(s3_client, bucket_name: str, prefix: str) -> dict:
    body = s3_client.get_object(Bucket=bucket_name, Key=f"{prefix}/_corral/manifest.json")["Body"].read()
    return json.loads(body)


def attempts(m: dict) -> list[tuple[str, dict]]:
    return [(task, a) for stage in m["stages"] for task, t in stage["tasks"].items() for a in t["attempts"]]


def parts(s3_client, bucket_name: str, prefix: str) -> dict[str, bytes]:
    listing = s3_client.list_objects_v2(Bucket=bucket_name, Prefix=prefix + "/").get("Contents", [])
    keys = sorted(o["Key"] for o in listing if o["Key"].rsplit("/", 1)[-1].startswith("part-"))
    return {k.rsplit("/", 1)[-1]: s3_client.get_object(Bucket=bucket_name, Key=k)["Body"].read() for k in keys}


def put_text_inputs(s3_client, bucket_name: str, files: int = 4, lines: int = 1500) -> None:
    import random

    rng = random.Random(11)
    words = [f"w{n}" for n in range(300)] + ["ünïcode", "naïve", "café", "<b>&amp;"]
    for i in range(files):
        text = "\n".join(" ".join(rng.choices(words, k=10)) for _ in range(lines)) + "\n"
        s3_client.put_object(Bucket=bucket_name, Key=f"in/part-{i}.txt", Body=text.encode())
