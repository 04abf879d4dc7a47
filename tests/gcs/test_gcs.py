"""corral on gs:// through gcsfs, against gcp-storage-emulator (real HTTP; it stands in for Google Cloud
Storage; nothing of corral is mocked). Requests go through a recording proxy, so the tests see how corral
talks to the store: ranged reads, resumable (streaming) uploads, and a commit of server-side copies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.awkward import write_awkward_input
from tests.s3.faulty_proxy import FaultyProxy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.gcs


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    folder = tmp_path_factory.mktemp("awkward") / "in"
    return folder, write_awkward_input(folder)


def upload(gcs, folder: Path, prefix: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        gcs.pipe_file(f"{prefix}/{path.relative_to(folder).as_posix()}", path.read_bytes())


def output_counts(gcs, prefix: str) -> Counter:
    """``word<TAB>count`` part files under ``prefix`` (asserting each word appears once)."""
    counts: Counter = Counter()
    for path in sorted(gcs.find(prefix)):
        if path.rsplit("/", 1)[-1].startswith("part-"):
            for line in gcs.cat_file(path).decode("utf-8").split("\n")[:-1]:
                word, _, count = line.rpartition("\t")
                assert word not in counts, f"{word!r} appears twice"
                counts[word] = int(count)
    return counts


def corral(*argv: str, endpoint: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The ``corral`` command, as a user runs it, with gs:// served by ``endpoint``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["STORAGE_EMULATOR_HOST"] = endpoint
    command = shutil.which("corral")
    assert command, "the corral console script is not installed"
    return subprocess.run([command, *argv], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_wordcount_on_gs_equals_counter(gcs_emulator, gcs, gcs_bucket, awkward, backend):
    folder, expected = awkward
    upload(gcs, folder, f"{gcs_bucket}/in")
    with FaultyProxy(gcs_emulator.url, every=0) as proxy:
        done = corral("run", str(EXAMPLES / "wordcount.py"), f"gs://{gcs_bucket}/in/", "--out",
                      f"gs://{gcs_bucket}/out", "--work-dir", f"gs://{gcs_bucket}/work", "--split-size", "256KB",
                      "--reducers", "3", "--backend", backend, "-q", endpoint=proxy.url)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert output_counts(gcs, f"{gcs_bucket}/out") == expected
    assert sorted(p.rsplit("/", 1)[-1] for p in gcs.ls(f"{gcs_bucket}/out")) == [
        "_SUCCESS", "_corral", "part-00000", "part-00001", "part-00002"]
    assert not gcs.exists(f"{gcs_bucket}/work")  # the working folder on gs:// is cleaned up
    manifest = json.loads(gcs.cat_file(f"{gcs_bucket}/out/_corral/manifest.json"))
    splits = [split for bin_ in manifest["stages"][0]["plan"] for split in bin_]
    assert sum(1 for s in splits if "huge-line.txt" in json.dumps(s)) >= 8  # the 2 MB line crosses splits
    # splits are ranged reads; the .gz file (one split) is the only input read from its start
    input_reads = [s for s in proxy.seen if s.method == "GET" and f"/b/{gcs_bucket}/o/in" in s.path
                   and "alt=media" in s.query]
    huge = [s for s in input_reads if "huge-line" in s.path]
    assert len(huge) >= 8 and all(s.range and s.range.startswith("bytes=") for s in huge), huge[:3]
    # map outputs and part files are streamed as resumable uploads; the commit never asks for moveTo
    uploads = [s.query for s in proxy.seen if s.method == "POST" and "uploadType=resumable" in s.query]
    map_attempts = [a for name, t in manifest["stages"][0]["tasks"].items() if name.startswith("map-")
                    for a in t["attempts"]]
    map_uploads = sum(1 for q in uploads if q.startswith("name=work/") and "/stage-0/map-" in q)
    assert 2 <= manifest["stages"][0]["map_tasks"] <= map_uploads <= len(map_attempts)  # one object per attempt
    assert sum(1 for q in uploads if q.startswith("name=work/") and "/stage-0/reduce-" in q) == 3
    assert not [s for s in proxy.seen if "moveTo" in s.path]
    assert len([s for s in proxy.seen if "/rewriteTo/" in s.path]) == 3  # one server-side copy per part file


def test_the_commit_copies_part_files_in_parallel_and_never_calls_move_to(gcs_emulator, gcs, gcs_bucket):
    """Each request through the proxy takes 100 ms more, as a far-away store's would: the commit's 12
    copies overlap (gcsfs's ``mv`` would have called moveTo, which the emulator refuses with a 501 that
    gcsfs retries for about 30 s, and moved one file after another)."""
    text = "".join(f"w{i % 97} w{i % 89} common\n" for i in range(3000))
    gcs.pipe_file(f"{gcs_bucket}/in/words.txt", text.encode())
    with FaultyProxy(gcs_emulator.url, every=0, delay=0.1) as proxy:
        done = corral("run", str(EXAMPLES / "wordcount.py"), f"gs://{gcs_bucket}/in/", "--out",
                      f"gs://{gcs_bucket}/out", "--reducers", "12", "--backend", "threads", "-q", endpoint=proxy.url)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert output_counts(gcs, f"{gcs_bucket}/out") == Counter(text.split())
    copies = [s for s in proxy.seen if "/rewriteTo/" in s.path]
    assert len(copies) == 12
    targets = sorted(s.path.split("/rewriteTo/")[1].rsplit("/o/", 1)[1] for s in copies)
    assert targets == [f"out/part-{i:05d}" for i in range(12)]
    assert all("/o/out/_corral/work/" in s.path.split("/rewriteTo/")[0] for s in copies), copies[0]
    assert max(s.in_flight for s in copies) >= 3, [s.in_flight for s in copies]
    sources = {s.path.split("/rewriteTo/")[0].replace("/storage/v1", "") for s in copies}
    deletes = [s for s in proxy.seen if s.method == "DELETE" and s.path.replace("/storage/v1", "") in sources]
    assert len(deletes) == 12 and max(s.in_flight for s in deletes) >= 2
    assert not [s for s in proxy.seen if "moveTo" in s.path]


def test_filesystem_streams_large_writes_and_reads_ranges(gcs_emulator, gcs, gcs_bucket):
    """A 64 MB object written through corral's FileSystem goes up as a resumable upload, in 8 MiB chunks
    as it is written: memory holds a few chunks (about 24 MB traced, whatever the size), never the object.
    A range of it comes back in one ranged GET."""
    import tracemalloc

    from corral import get_filesystem

    url = f"gs://{gcs_bucket}/big.bin"
    chunk = bytes(range(256)) * 4096
    tracemalloc.start()
    try:
        with get_filesystem(url).open(url, "wb") as out:
            for _ in range(64):
                out.write(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert gcs.info(f"{gcs_bucket}/big.bin")["size"] == 64 << 20
    assert peak < 32 << 20, f"peak traced memory {peak >> 20} MB while writing a 64 MB object"
    with FaultyProxy(gcs_emulator.url, every=0) as proxy:
        os.environ["STORAGE_EMULATOR_HOST"] = proxy.url
        import gcsfs

        gcsfs.GCSFileSystem.clear_instance_cache()
        try:
            got = get_filesystem(url).read_range(url, 12_345_678, 12_345_700)
        finally:
            os.environ["STORAGE_EMULATOR_HOST"] = gcs_emulator.url
            gcsfs.GCSFileSystem.clear_instance_cache()
    assert got == (chunk * 13)[12_345_678:12_345_700]
    assert [s.range for s in proxy.seen if s.method == "GET" and "alt=media" in s.query] == ["bytes=12345678-12345699"]


def test_move_many_replaces_existing_objects_and_keeps_others(gcs_emulator, gcs, gcs_bucket):
    from corral import get_filesystem

    fs = get_filesystem(f"gs://{gcs_bucket}/")
    for i in range(7):
        gcs.pipe_file(f"{gcs_bucket}/src/{i}", b"new %d" % i)
    gcs.pipe_file(f"{gcs_bucket}/dst/3", b"old")
    gcs.pipe_file(f"{gcs_bucket}/dst/keep", b"untouched")
    fs.move_many([(f"gs://{gcs_bucket}/src/{i}", f"gs://{gcs_bucket}/dst/{i}") for i in range(7)])
    fs.move_many([])
    assert not gcs.exists(f"{gcs_bucket}/src")
    assert {p.rsplit("/", 1)[-1]: gcs.cat_file(p) for p in gcs.find(f"{gcs_bucket}/dst")} == {
        **{str(i): b"new %d" % i for i in range(7)}, "keep": b"untouched"}
    with pytest.raises(FileNotFoundError):
        fs.move_many([(f"gs://{gcs_bucket}/src/missing", f"gs://{gcs_bucket}/dst/x")])
