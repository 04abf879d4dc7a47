"""corral on S3 when S3 pushes back: a proxy in front of moto answers 503 SlowDown to every third request.

The proxy is a test fixture (``faulty_proxy.py``, aiohttp); corral, s3fs and botocore are unchanged and
talk HTTP to it. Its record of requests also shows how corral uses S3: ranged GETs for splits, listings
in pages, multipart uploads for large objects.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.s3.faulty_proxy import FaultyProxy
from tests.s3.test_s3 import expected_counts, read_parts

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CORRAL = str(Path(sys.executable).with_name("corral"))  # this environment's console script
pytestmark = pytest.mark.moto


def test_wordcount_is_exact_when_every_third_request_is_slowed_down(moto_server, s3, bucket):
    texts = [f"alpha beta {i}\ngamma beta delta\n{'epsilon ' * (i % 5)}\n" * 400 for i in range(10)]
    for i, text in enumerate(texts):
        s3.put_object(Bucket=bucket, Key=f"in/part{i:02d}.txt", Body=text.encode())
    with FaultyProxy(moto_server["AWS_ENDPOINT_URL_S3"], every=3) as proxy:
        done = subprocess.run(
            [CORRAL, "run", str(EXAMPLES / "wordcount.py"), f"s3://{bucket}/in/",
             "--out", f"s3://{bucket}/out", "--split-size", "16KB", "--reducers", "3", "--backend", "processes"],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "AWS_ENDPOINT_URL_S3": proxy.url},
        )
    assert done.returncode == 0, done.stderr
    got = Counter({k: int(v) for k, v in (line.split("\t") for line in read_parts(s3, bucket, "out/"))})
    assert got == expected_counts(texts)
    assert proxy.faults >= 10, f"only {proxy.faults} faults were injected in {len(proxy.seen)} requests"
    # splits are read with ranged GETs (never a whole object per split)
    input_gets = [s for s in proxy.seen if s.method == "GET" and "/in/part" in s.path and not s.faulted]
    assert input_gets and all(s.range and s.range.startswith("bytes=") for s in input_gets), input_gets[:5]
    print(f"{len(proxy.seen)} requests, {proxy.faults} answered 503 SlowDown, {len(input_gets)} ranged input GETs")


def test_large_writes_stream_as_multipart_uploads_through_slowdowns(moto_server, s3, bucket):
    """A 160 MB object written through corral's FileSystem: uploaded in 8 MiB parts as it is written, so
    memory holds a few parts (about 58 MB traced, whatever the object's size), never the object; and
    complete despite 503s. (fsspec's default 50 MB parts peaked near 200 MB.)"""
    code = f"""
import os, sys, tracemalloc
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from corral import get_filesystem
url = "s3://{bucket}/big/object.bin"
chunk = bytes(range(256)) * 4096  # 1 MB
tracemalloc.start()
with get_filesystem(url).open(url, "wb") as out:
    for n in range(160):
        out.write(chunk)
print(tracemalloc.get_traced_memory()[1])
"""
    with FaultyProxy(moto_server["AWS_ENDPOINT_URL_S3"], every=3) as proxy:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "AWS_ENDPOINT_URL_S3": proxy.url})
    assert done.returncode == 0, done.stderr
    peak = int(done.stdout.split()[-1])
    head = s3.head_object(Bucket=bucket, Key="big/object.bin")
    assert head["ContentLength"] == 160 << 20
    body = s3.get_object(Bucket=bucket, Key="big/object.bin", Range="bytes=167772000-167772159")["Body"].read()
    assert body == (bytes(range(256)) * 4096)[167772000 % (1 << 20):][:160]
    parts = [s for s in proxy.seen if s.method == "PUT" and "partNumber=" in s.query and not s.faulted]
    assert {s.query.split("partNumber=")[1].split("&")[0] for s in parts} >= {"1", "2", "3"}
    assert any(s.method == "POST" and "uploads" in s.query for s in proxy.seen)  # CreateMultipartUpload
    assert peak < 80 << 20, f"peak traced memory {peak >> 20} MB while writing a 160 MB object"
    assert proxy.faults > 0
    print(f"160 MB written in {len(parts)} parts; peak traced memory {peak / 2**20:.1f} MB")


def test_reducers_read_map_outputs_on_s3_in_few_large_ranged_gets(moto_server, s3, bucket):
    """A ranged GET is a request paid for and waited on: a reducer reads each map output's segment in
    blocks of 256 KB to 1 MB on S3 (on a local disk it reads 64 KB blocks, to keep its memory flat)."""
    texts = ["".join(f"w{n:07d} x{i}\n" for n in range(i, 120_000, 2)) for i in range(2)]  # ~1 MB of keys each
    for i, text in enumerate(texts):
        s3.put_object(Bucket=bucket, Key=f"wide/part{i}.txt", Body=text.encode())
    with FaultyProxy(moto_server["AWS_ENDPOINT_URL_S3"], every=0) as proxy:
        done = subprocess.run(
            [CORRAL, "run", str(EXAMPLES / "wordcount.py"), f"s3://{bucket}/wide/",
             "--out", f"s3://{bucket}/wide-out", "--reducers", "1", "--backend", "processes", "--keep-intermediate"],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "AWS_ENDPOINT_URL_S3": proxy.url},
        )
    assert done.returncode == 0, done.stderr
    assert Counter({k: int(v) for k, v in (line.split("\t") for line in read_parts(s3, bucket, "wide-out/"))}) \
        == expected_counts(texts)
    outputs = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="wide-out/_corral/work/")
               .get("Contents", []) if o["Key"].endswith(".bin")}
    assert len(outputs) == 2 and all(size > 600_000 for size in outputs.values()), outputs
    reads = [s for s in proxy.seen if s.method == "GET" and s.path.endswith(".bin")]
    sizes = [int(end) - int(start) + 1 for start, end in (s.range.split("=")[1].split("-") for s in reads)]
    assert len(reads) <= 2 * 2, sizes  # a block or two per map output, not one per 64 KB
    assert max(sizes) > 256 << 10


def test_committing_200_part_files_takes_parallel_copies_and_one_bulk_delete(moto_server, s3, bucket):
    """Every request through the proxy takes 50 ms more, as a far-away store's would. 200 moves one after
    another (s3fs's ``mv``: a HEAD, a copy and a delete each) would be 600 sequential round trips, 30 s;
    the commit overlaps its copies and deletes the sources with one DeleteObjects."""
    for i in range(200):
        s3.put_object(Bucket=bucket, Key=f"work/reduce-{i:03d}.a1", Body=b"part %d\n" % i)
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from corral import get_filesystem
fs = get_filesystem("s3://{bucket}/")
fs.move_many([(f"s3://{bucket}/work/reduce-{{i:03d}}.a1", f"s3://{bucket}/out/part-{{i:05d}}") for i in range(200)])
"""
    with FaultyProxy(moto_server["AWS_ENDPOINT_URL_S3"], every=0, delay=0.05) as proxy:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "AWS_ENDPOINT_URL_S3": proxy.url})
    assert done.returncode == 0, done.stderr
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
    assert keys == [f"out/part-{i:05d}" for i in range(200)]
    assert s3.get_object(Bucket=bucket, Key="out/part-00123")["Body"].read() == b"part 123\n"
    copies = [s for s in proxy.seen if s.method == "PUT" and s.copy_source]
    assert len(copies) == 200
    # as many at once as botocore's connection pool allows (10 by default)
    assert max(s.in_flight for s in copies) >= 8, [s.in_flight for s in copies][:40]
    assert [s.query for s in proxy.seen if s.method == "POST"] == ["delete"]  # one DeleteObjects
    assert not [s for s in proxy.seen if s.method == "DELETE"]
    assert len(proxy.seen) <= 2 * 200 + 5, len(proxy.seen)  # a HEAD and a copy per file, then the delete


def test_the_drivers_commit_on_s3_overlaps_its_copies(moto_server, s3, bucket):
    texts = ["".join(f"w{(i * 7 + n) % 301} common\n" for n in range(2000)) for i in range(3)]
    for i, text in enumerate(texts):
        s3.put_object(Bucket=bucket, Key=f"in/{i}.txt", Body=text.encode())
    with FaultyProxy(moto_server["AWS_ENDPOINT_URL_S3"], every=0, delay=0.02) as proxy:
        done = subprocess.run(
            [CORRAL, "run", str(EXAMPLES / "wordcount.py"), f"s3://{bucket}/in/",
             "--out", f"s3://{bucket}/out", "--reducers", "24", "--backend", "threads", "-q"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "AWS_ENDPOINT_URL_S3": proxy.url},
        )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    got = Counter({k: int(v) for k, v in (line.split("\t") for line in read_parts(s3, bucket, "out/"))})
    assert got == expected_counts(texts)
    copies = [s for s in proxy.seen if s.method == "PUT" and s.copy_source]
    assert len(copies) == 24 and all("/out/part-000" in s.path for s in copies)
    assert max(s.in_flight for s in copies) >= 8, [s.in_flight for s in copies]
    assert not [s for s in proxy.seen if s.method == "DELETE"]  # sources go in bulk (DeleteObjects)
