"""Many small objects read by Lambda functions (the emulator, 512 MB: 0.29 of a vCPU, as on AWS) from S3
(moto): what a function spends its billed CPU on. Each object is one GET sent by corral itself, not by
botocore (2-4 ms of CPU a request, 3.5 times that in billed time at this share), and a cold start
imports corral, s3fs, botocore and aiohttp from the package's bytecode instead of compiling them."""

from __future__ import annotations

import gzip
from collections import Counter

import pytest

from tests.aws.conftest import corral, environment, manifest, parts
from tests.s3.faulty_proxy import FaultyProxy

pytestmark = [pytest.mark.docker, pytest.mark.moto]

JOB = '''
import importlib.util
import os
import sys

import corral


class Lines(corral.Job):
    """Counts lines per day, and which of the modules the function imported from its code had no bytecode."""

    def map(self, key, line):
        yield line.split(" ", 1)[0], 1

    def map_final(self):
        root = os.environ["LAMBDA_TASK_ROOT"] + "/"
        files = [m.__file__ for m in list(sys.modules.values())
                 if (getattr(m, "__file__", None) or "").startswith(root) and m.__file__.endswith(".py")]
        self.increment_counter("modules", "imported", len(files))
        self.increment_counter("modules", "compiled", sum(
            not os.path.exists(importlib.util.cache_from_source(f)) for f in files))
        return ()

    def combine(self, key, counts):
        yield key, sum(counts)

    def reduce(self, key, counts):
        yield key, sum(counts)
'''


def test_functions_read_small_objects_with_their_own_gets_and_import_bytecode(emulator, moto_server, s3,
                                                                              bucket, tmp_path):
    texts = {f"logs/{i // 50:02d}/{i:04d}.log.gz": "".join(f"2024-05-{i % 3 + 1:02d} GET /x/{n}\n"
                                                         for n in range(i % 7 + 1)) for i in range(120)}
    for key, text in texts.items():
        s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(text.encode()))
    job = tmp_path / "linesjob.py"
    job.write_text(JOB)
    with FaultyProxy(moto_server["AWS_ENDPOINT_URL_S3"], every=0) as proxy:
        done = corral("run", job, f"s3://{bucket}/logs/", "--out", f"s3://{bucket}/out", "--backend", "lambda",
                      "--lambda-endpoint", emulator.endpoint, "--max-concurrency", "4", "--reducers", "2",
                      "--environment", f"AWS_ENDPOINT_URL_S3={proxy.url}", cwd=tmp_path, env=environment())
    assert done.returncode == 0, done.stderr[-3000:]
    got = Counter({k: int(v) for part in parts(s3, bucket, "out").values()
                   for k, v in (line.split("\t") for line in part.decode().splitlines())})
    assert got == Counter(line.split(" ", 1)[0] for text in texts.values() for line in text.splitlines())

    reads = [s for s in proxy.seen if s.method == "GET" and s.path.startswith(f"/{bucket}/logs/")]
    assert Counter(s.path.removeprefix(f"/{bucket}/") for s in reads) == Counter(dict.fromkeys(texts, 1))
    assert all((s.agent or "").startswith("corral/") for s in reads), {s.agent for s in reads}

    counters = manifest(s3, bucket, "out")["counters"]["modules"]
    assert counters["imported"] > 100  # corral, fsspec, s3fs, aiobotocore, botocore, aiohttp...
    assert counters["compiled"] == 0
