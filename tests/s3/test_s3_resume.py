"""The journal and the lease on S3 (moto in server mode): journal entries are small objects (S3 cannot
append), the lock is created with ``If-None-Match: *`` and taken over with ``If-Match``."""

from __future__ import annotations

import json
import time

import pytest

import corral
from corral.fs import get_filesystem
from tests.core import jobs
from tests.core.util import cli

pytestmark = pytest.mark.moto


def _put_inputs(s3, bucket: str) -> None:
    for n in range(4):
        body = "".join(f"w{(n + i) % 9} s3\n" for i in range(50))
        s3.put_object(Bucket=bucket, Key=f"in/f{n}.txt", Body=body.encode())


def _keys(s3, bucket: str, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


@pytest.mark.parametrize("backend", ["threads", "processes"])  # processes: workers write, not the driver
def test_a_failed_run_on_s3_is_resumed_from_its_journal_objects(s3, bucket, tmp_path, capsys, backend):
    _put_inputs(s3, bucket)
    fail = tmp_path / "fail"
    fail.write_text("")
    argv = ["run", f"{jobs.__file__}:FailReduceWhile", f"s3://{bucket}/in/", "--out", f"s3://{bucket}/out",
            "--backend", backend, "--map-bin-size", "1", "--reducers", "2", "--retries", "0", "--arg", f"fail={fail}"]
    code, _, err = cli(capsys, *argv)
    assert code == 1 and "reduce failing on purpose" in err
    journal = [k for k in _keys(s3, bucket, "out/_corral/") if "/journal/" in k]
    assert journal and all(k.endswith(".jsonl") for k in journal)  # numbered objects: 000001.jsonl…
    records = [json.loads(line) for k in journal
               for line in s3.get_object(Bucket=bucket, Key=k)["Body"].read().decode().splitlines() if line]
    assert sum(1 for r in records if r.get("t") == "commit") == 4  # the four map tasks
    assert "out/_corral/lock" not in _keys(s3, bucket, "out/_corral/")  # released

    fail.unlink()
    code, _, err = cli(capsys, *argv, "--resume")
    assert code == 0, err
    assert "corral: resuming run " in err and ": 4 of 6 tasks already committed" in err
    lines = sorted(line for k in _keys(s3, bucket, "out/part-")
                   for line in s3.get_object(Bucket=bucket, Key=k)["Body"].read().decode().splitlines())
    assert lines == sorted(["s3\t200"] + [f"w{i}\t{sum(1 for n in range(4) for j in range(50) if (n + j) % 9 == i)}"
                                          for i in range(9)])
    left = _keys(s3, bucket, "out/_corral/")
    assert left == ["out/_corral/manifest.json"]  # journal objects, lock and working data gone


def test_the_lock_on_s3_is_a_conditional_create_and_a_compare_and_swap(s3, bucket):
    fs = get_filesystem(f"s3://{bucket}/x")
    url = f"s3://{bucket}/out/_corral/lock"
    assert fs.create_new(url, b"one") is True
    assert fs.create_new(url, b"two") is False
    data, etag = fs.read_versioned(url)
    assert data == b"one"
    assert fs.replace_if(url, b"three", etag) is True
    assert fs.replace_if(url, b"four", etag) is False  # If-Match on the old ETag: 412, refused
    assert s3.get_object(Bucket=bucket, Key="out/_corral/lock")["Body"].read() == b"three"


def test_a_second_run_on_the_same_s3_output_is_refused(s3, bucket, capsys):
    _put_inputs(s3, bucket)
    holder = {"run_id": "20260101T000000-s3held", "host": "elsewhere", "pid": 7, "heartbeat": time.time()}
    s3.put_object(Bucket=bucket, Key="out/_corral/lock", Body=json.dumps(holder).encode())
    code, _, err = cli(capsys, "run", f"{jobs.__file__}:WordCount", f"s3://{bucket}/in/", "--out",
                       f"s3://{bucket}/out", "--backend", "threads")
    assert code == 2
    assert f"the output folder s3://{bucket}/out is in use by run 20260101T000000-s3held on host elsewhere" in err
    holder["heartbeat"] = time.time() - 3600
    s3.put_object(Bucket=bucket, Key="out/_corral/lock", Body=json.dumps(holder).encode())
    manifest = corral.run(jobs.WordCount, f"s3://{bucket}/in/", f"s3://{bucket}/out", backend="threads")
    assert manifest["status"] == "succeeded"
    assert "out/_corral/lock" not in _keys(s3, bucket, "out/")
