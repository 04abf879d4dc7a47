"""corral on S3 through s3fs, against moto in server mode (real HTTP; nothing of corral mocked)."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import corral
from corral.planner import list_inputs, plan_map_tasks

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CORRAL = str(Path(sys.executable).with_name("corral"))  # this environment's console script
sys.path.insert(0, str(EXAMPLES))
from wordcount import WordCount  # noqa: E402

pytestmark = pytest.mark.moto


def read_parts(s3, bucket: str, prefix: str) -> list[str]:
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))
    lines = []
    for key in keys:
        if key.rsplit("/", 1)[-1].startswith("part-"):
            lines += s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
    return lines


def expected_counts(texts: list[str]) -> Counter:
    counts: Counter = Counter()
    for text in texts:
        for line in text.splitlines():
            counts.update(line.split())
    return counts


def test_wordcount_s3_to_s3_matches_counter_and_local_processes(s3, bucket, tmp_path):
    texts = [f"alpha beta {i}\r\ngamma beta\n\nü ß {i % 7}\n" * 300 for i in range(12)]
    long_line = "x " * 600_000 + "end\n"  # a 1.2 MB line crossing many splits
    texts.append(long_line)
    local = tmp_path / "in"
    local.mkdir()
    for i, text in enumerate(texts):
        s3.put_object(Bucket=bucket, Key=f"in/part{i:02d}.txt", Body=text.encode())
        (local / f"part{i:02d}.txt").write_text(text, encoding="utf-8", newline="")
    s3.put_object(Bucket=bucket, Key="in/zipped.txt.gz", Body=gzip.compress(b"zip zap zip\n"))
    (local / "zipped.txt.gz").write_bytes(gzip.compress(b"zip zap zip\n"))

    result = subprocess.run(
        [CORRAL, "run", str(EXAMPLES / "wordcount.py"), f"s3://{bucket}/in/",
         "--out", f"s3://{bucket}/out", "--split-size", "64KB", "--reducers", "3"],
        capture_output=True, text=True, env=os.environ.copy(), timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = read_parts(s3, bucket, "out/")
    got = Counter({k: int(v) for k, v in (line.split("\t") for line in lines)})
    assert got == expected_counts(texts) + Counter({"zip": 2, "zap": 1})
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]}
    assert {"out/_SUCCESS", "out/_corral/manifest.json"} <= keys
    assert not any("/_corral/work" in k for k in keys), "intermediate data must be deleted on success"

    local_out = tmp_path / "out"
    corral.run(WordCount, [str(local)], str(local_out), backend="processes", split_size="64KB", reducers=3)
    local_lines = [line for p in sorted(local_out.glob("part-*")) for line in p.read_text().splitlines()]
    assert sorted(local_lines) == sorted(lines)


def test_twenty_thousand_small_objects_plan_quickly_into_bins(moto_server, s3, bucket):
    from moto.s3.models import s3_backends

    # fill the bucket inside moto's in-process backend (20,000 HTTP PUTs would take minutes); the
    # listing under test goes through s3fs and moto's HTTP API, with its 1,000-key pages
    backend = s3_backends["123456789012"]["aws"]
    for i in range(20_000):
        backend.put_object(bucket, f"many/{i // 1000:02d}/obj-{i:05d}.txt", b"word %d\n" % i)
    started = time.perf_counter()
    files = list_inputs([f"s3://{bucket}/many/"])
    bins = plan_map_tasks(files, 64 << 20, 64 << 10, 2, fixed_bin_size=True)
    seconds = time.perf_counter() - started
    assert len(files) == 20_000
    assert sum(f.size for f in files) == sum(len(b"word %d\n" % i) for i in range(20_000))
    assert sum(len(b) for b in bins) == 20_000
    assert len(bins) == -(-sum(f.size for f in files) // (64 << 10))  # as few bins as fit: many files each
    sizes = [sum(s.end - s.start for s in b) for b in bins]
    assert max(sizes) - min(sizes) <= 2 * 11  # of the same size, within a file or two (of 7-11 bytes)
    print(f"planned 20,000 objects into {len(bins)} bins in {seconds:.2f} s")


def test_each_small_object_is_one_get_and_no_head(s3, bucket, caplog):
    """The listing gave each object's size: a map task reads a small object with one ranged GET (no
    HEAD, no second GET), whole for a .gz file, and reads several ahead at once (see test_small_files).
    The tasks run in worker processes started from the fork server (this process has moto's threads),
    which know nothing of the driver's listing, as a Lambda function does not."""
    import logging

    texts = {f"logs/day-{i:03d}.txt.gz" if i % 2 else f"logs/day-{i:03d}.txt": f"a{i} b{i % 3}\nc\n" * (i + 1)
             for i in range(60)}
    for key, text in texts.items():
        body = gzip.compress(text.encode()) if key.endswith(".gz") else text.encode()
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    caplog.set_level(logging.INFO, logger="werkzeug")
    caplog.clear()
    corral.run(WordCount, f"s3://{bucket}/logs/", f"s3://{bucket}/out", backend="processes", reducers=2)
    got = Counter({k: int(v) for k, v in (line.split("\t") for line in read_parts(s3, bucket, "out/"))})
    assert got == expected_counts(list(texts.values()))
    requests: Counter = Counter()
    for record in caplog.records:
        message = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())  # werkzeug colours its log lines
        method, _, rest = message.partition('"')[2].partition(" ")
        path = rest.split(" ", 1)[0].split("?", 1)[0]
        if path.startswith(f"/{bucket}/logs/"):
            requests[method, path.removeprefix(f"/{bucket}/")] += 1
    assert requests == Counter({("GET", key): 1 for key in texts})


def test_map_only_grep_reads_and_writes_s3_with_threads(s3, bucket):
    sys.path.insert(0, str(EXAMPLES))
    from grep import Grep

    s3.put_object(Bucket=bucket, Key="logs/a.log", Body=b"ok 1\nerror 2\nok 3\nerror 4\n")
    manifest = corral.run(Grep, f"s3://{bucket}/logs/", f"s3://{bucket}/errors", backend="threads",
                          arg=["pattern=^error"])
    assert read_parts(s3, bucket, "errors/") == ["error 2", "error 4"]
    assert manifest["counters"] == {"grep": {"matched": 2}}
