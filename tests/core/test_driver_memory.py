"""The driver's memory over many tasks: a committed task's spec and splits are gone (it keeps where the
output is, not the attempt's whole result), the manifest and the journal are written in pieces of about
32 KB that read as the whole text did, and a run on the threads backend leaves the driver process's
peak memory as it was (the tasks share its process)."""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc
from pathlib import Path

import pytest

import corral
from corral.driver import manifest_pieces
from corral.errors import JobFailed
from corral.fs import get_filesystem
from corral.journal import Journal, read_journal
from corral.jsontext import encode
from corral.split import Split
from corral.tasks import MapSpec

from . import jobs
from .util import counts, manifest, run, word_counter


class CountsLiveSpecs(corral.Job):
    """Map-only, a file a task: the task of the file ``last`` (mapped after every other, one task at a
    time) counts the map specs and splits alive in this process, the driver's (threads backend)."""

    def map(self, key, line):
        if line == "last":
            gc.collect()
            alive = gc.get_objects()
            # this run's only (its input folder, an --arg): an earlier test's executor may hold its own
            folder = self.args["folder"]
            self.increment_counter("alive", "specs", sum(
                isinstance(o, MapSpec) and any(s.url.startswith(folder) for s in o.splits) for o in alive))
            self.increment_counter("alive", "splits", sum(
                isinstance(o, Split) and o.url.startswith(folder) for o in alive))
        return ()


def _counted(inputs: Path, out: Path, **settings: str) -> dict:
    """CountsLiveSpecs over ``inputs`` (its folder told as an --arg), a file a task, on threads."""
    return run(CountsLiveSpecs, inputs, out, map_bin_size="1", arg=[f"folder={inputs}/"], **settings)


def _one_line_files(folder: Path, count: int) -> Path:
    folder.mkdir()
    for n in range(count):
        (folder / f"in-{n:04d}.txt").write_text("last\n" if n == count - 1 else f"line {n}\n")
    return folder


def test_the_driver_holds_no_spec_nor_splits_of_a_committed_task(tmp_path):
    inputs = _one_line_files(tmp_path / "in", 40)
    m = _counted(inputs, tmp_path / "out", max_concurrency="1")
    assert m["stages"][0]["map_tasks"] == 40
    alive = m["counters"]["alive"]
    # the last task's own (the driver's and the worker's copy), not the 39 committed before it
    assert alive["specs"] <= 3 and alive["splits"] <= 3, alive


def _whole_text(m: dict) -> str:
    """The manifest as it was written before it was written in pieces: all of it in one string."""
    return "{\n" + ",\n".join(f" {encode(key)}: {encode(value)}" for key, value in m.items()) + "\n}\n"


def test_the_manifest_is_written_in_pieces_with_the_same_text(tmp_path):
    m = _counted(_one_line_files(tmp_path / "in", 300), tmp_path / "out")
    data = (tmp_path / "out" / "_corral" / "manifest.json").read_bytes()
    assert data == _whole_text(m).encode("utf-8")  # byte for byte, a top-level key a line
    assert json.loads(data) == manifest(tmp_path / "out") == json.loads(json.dumps(m))
    pieces = list(manifest_pieces(m))
    assert len(data) > 150_000 and len(pieces) > 4
    assert max(len(p) for p in pieces) < 40 << 10


def test_writing_the_manifest_of_many_tasks_holds_a_piece_of_it_at_a_time(tmp_path):
    m = _counted(_one_line_files(tmp_path / "in", 20), tmp_path / "out")
    (stage,) = m["stages"]
    entry = stage["tasks"]["map-0000"]
    stage["tasks"] = {f"map-{j:05d}": json.loads(json.dumps(entry)) for j in range(10_000)}
    stage["plan"] = [[[f"/data/in/file-{j:05d}.txt", 0, 100]] for j in range(10_000)]
    size = len(_whole_text(m))
    tracemalloc.start()
    try:
        with open(tmp_path / "manifest.json", "wb") as f:
            for piece in manifest_pieces(m):
                f.write(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 3_000_000
    assert peak < size / 5, (peak, size)  # the whole text and its bytes: twice its size
    assert json.loads((tmp_path / "manifest.json").read_bytes()) == json.loads(json.dumps(m))


def _records(tasks: int) -> list[dict]:
    """Journal records as a run of ``tasks`` one-file map tasks writes them (the long ones included)."""
    files = [f"/data/in/file-{j:05d}.txt" for j in range(tasks)]
    records: list[dict] = [
        {"t": "run", "run_id": "r1", "fingerprint": [[url, 2, "1796188865.4555082"] for url in files]},
        {"t": "stage", "stage": 0, "map_tasks": tasks, "reduce_tasks": 0, "plan": [[[url, 0, 2]] for url in files]},
    ]
    records += [{"t": "commit", "stage": 0, "phase": "map", "task": f"map-{j:04d}", "attempt": 1,
                 "output": f"/out/_corral/work/r1/stage-0/map-{j:04d}.a1-abcdef",
                 "result": {"output": "x", "bytes_out": 0},
                 "stats": {"seconds": 0.001, "peak_memory_mb": 41.5, "worker": "1-ab", "note": "é"},
                 "ran": [1796188865.123, 1796188865.125]} for j in range(tasks)]
    records.append({})  # a resumed driver's new line
    records.append({"t": "final", "moves": [[f"/out/w/map-{j:04d}", f"/out/part-{j:05d}"] for j in range(tasks)]})
    return records


def _old_text(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" if r else "\n"
                   for r in records).encode("utf-8")


def test_the_journal_is_written_in_pieces_with_the_same_lines(tmp_path):
    records = _records(5_000)
    out = tmp_path / "out"
    journal = Journal(get_filesystem(str(out)), str(out))
    for record in records:
        journal.add(record)
    tracemalloc.start()
    try:
        journal.flush()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    data = (out / "_corral" / "journal.jsonl").read_bytes()
    assert data == _old_text(records)
    assert peak < len(data) / 5, (peak, len(data))  # the whole text and its bytes: twice its size
    read, objects = read_journal(get_filesystem(str(out)), str(out))
    assert read == [r for r in records if r] and objects == 0


def test_on_a_store_that_cannot_append_the_journal_is_an_object_a_flush(tmp_path):
    records = _records(300)
    out = "memory://driver-memory/out"
    fs = get_filesystem(out)
    journal = Journal(fs, out)
    for record in records[:100]:
        journal.add(record)
    journal.flush()
    for record in records[100:]:
        journal.add(record)
    journal.flush()
    first = fs.read_bytes(f"{out}/_corral/journal/000001.jsonl")
    second = fs.read_bytes(f"{out}/_corral/journal/000002.jsonl")
    assert first + second == _old_text(records)
    assert read_journal(fs, out) == ([r for r in records if r], 2)


def test_a_journal_whose_commits_hold_the_whole_result_is_resumed(tmp_path):
    """Commits are journaled with what the driver keeps of the result; a journal written before, with
    the attempt's whole result (its measurements, its "ok"…), resumes as well."""
    folder = tmp_path / "in"
    folder.mkdir()
    lines = [f"w{n % 7} w{n % 5} w{n % 3}\n" for n in range(40)]
    for n in range(4):
        (folder / f"f{n}.txt").write_text("".join(lines[n * 10:(n + 1) * 10]))
    text = "".join(lines)
    fail = tmp_path / "fail"
    fail.write_text("")
    out = tmp_path / "out"
    settings = {"map_bin_size": "1", "reducers": 2, "retries": 0, "arg": [f"fail={fail}"]}
    with pytest.raises(JobFailed, match="reduce failing on purpose"):
        run(jobs.FailReduceWhile, folder, out, **settings)
    path = out / "_corral" / "journal.jsonl"
    records = [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    commits = [r for r in records if r.get("t") == "commit"]
    assert len(commits) == 4 and all(set(r["result"]) <= {"output", "bytes_out", "index", "counters"}
                                     for r in commits)
    for r in commits:  # as the driver journaled them before
        r["result"].update(ok=True, task=r["task"], attempt=r["attempt"], records_in=10, records_out=30,
                           seconds=0.01, cpu_seconds=0.01, peak_memory_mb=40.0, rss_mb=40.0, worker="1-ab")
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    fail.unlink()
    m = run(jobs.FailReduceWhile, folder, out, resume=True, **settings)
    assert all(m["stages"][0]["tasks"][f"map-{j:04d}"].get("reused") for j in range(4))
    assert counts(out) == word_counter(text)


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_a_threads_run_leaves_the_driver_process_peak_memory_as_it_was(tmp_path):
    """Its tasks run alone in turn (one at a time) in the driver's process: none resets the process's
    high-water mark (which would hide the driver's own peak), and each reports the process's peak."""
    block = bytearray(200 << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    del block
    peak = _vm_hwm_mb()
    (tmp_path / "in.txt").write_text("a b a\n")
    m = run(jobs.WordCount, tmp_path / "in.txt", tmp_path / "out", max_concurrency=1, reducers=1)
    assert _vm_hwm_mb() >= peak
    attempts = [a for task in m["stages"][0]["tasks"].values() for a in task["attempts"]]
    assert len(attempts) == 2 and all(a["stats"]["peak_memory_mb"] >= peak - 1 for a in attempts), attempts
