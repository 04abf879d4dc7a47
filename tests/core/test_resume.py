"""``--resume``: a run stopped half-way (SIGKILL of the driver, a failed task) continues from its
journal, reusing what it committed; output and counters equal an uninterrupted run's. A resume whose
inputs or settings changed is refused, naming what changed, and deletes nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from . import jobs
from .util import clean_env, cli, corral_command, counts, manifest, part_lines, run, run_command, word_counter

WORDS = [f"w{i}" for i in range(40)]


def _write_input(folder: Path, files: int = 12, lines: int = 30) -> str:
    folder.mkdir()
    text = ""
    for n in range(files):
        body = "".join(" ".join(WORDS[(n * 13 + i * 7 + k) % len(WORDS)] for k in range(5)) + "\n"
                       for i in range(lines))
        (folder / f"f{n:02d}.txt").write_text(body)
        text += body
    return text


def _journal(out: Path) -> list[dict]:
    path = out / "_corral" / "journal.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().split(b"\n"):
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return records


def _commits(out: Path, phase: str) -> int:
    return sum(1 for r in _journal(out) if r.get("t") == "commit" and r["phase"] == phase)


def kill_driver_when(argv: list, out: Path, ready, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``corral ARGV`` and SIGKILL the driver once ``ready(out)`` holds (read from its journal)."""
    process = subprocess.Popen([corral_command(), *map(str, argv)], env=clean_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready(out):
            assert process.poll() is None, f"the run ended before it was killed: {process.communicate()}"
            assert time.monotonic() < deadline, "the run never got there"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    done.pid = process.pid  # type: ignore[attr-defined]
    return done


COMMON = ["--map-bin-size", "1", "--reducers", "6", "--max-concurrency", "2", "--backend", "processes",
          "--arg", "sleep=0.01"]


@pytest.mark.parametrize("phase", ["map", pytest.param("reduce", marks=pytest.mark.slow)])
def test_resume_after_the_driver_is_killed_half_way(tmp_path, phase):
    text = _write_input(tmp_path / "in")
    out = tmp_path / "out"
    job = f"{jobs.__file__}:SlowCounted"
    # the journal is written every 2 s and at each phase's end: the waves last longer than that
    common = [*COMMON, "--arg", "rsleep=0.2" if phase == "map" else "rsleep=1.0"]
    if phase == "map":
        ready = lambda o: _commits(o, "map") >= 6  # noqa: E731 - half of the 12 map tasks
    else:
        ready = lambda o: _commits(o, "map") == 12 and _commits(o, "reduce") >= 2  # noqa: E731
    killed = kill_driver_when(["run", job, tmp_path / "in", "--out", out, *common], out, ready)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "_SUCCESS").exists()
    committed = {r["task"] for r in _journal(out) if r.get("t") == "commit"}

    done = run_command("corral", "run", job, tmp_path / "in", "--out", out, *common, "--resume")
    assert done.returncode == 0, done.stderr
    run_id = manifest(out)["run_id"]
    assert done.stderr.splitlines()[:2] == [
        f"corral: taking over the output folder's lease from run {run_id} on host {socket.gethostname()} "
        f"(pid {killed.pid}): its process is gone",
        f"corral: resuming run {run_id}: {len(committed)} of 18 tasks already committed",
    ]

    reference = tmp_path / "reference"
    assert run_command("corral", "run", job, tmp_path / "in", "--out", reference, *common, "-q").returncode == 0
    assert part_lines(out) == part_lines(reference)  # the same part files, line for line
    assert counts(out) == word_counter(text)
    resumed, uninterrupted = manifest(out), manifest(reference)
    assert resumed["counters"] == uninterrupted["counters"] == {
        "lines": {"total": 360}, "reduce": {"keys": 40}, "words": {"total": 1800},
    }
    assert resumed["status"] == "succeeded" and resumed["resumed"] == {"reused_tasks": len(committed)}
    reused = {name for name, t in resumed["stages"][0]["tasks"].items() if t.get("reused")}
    assert reused == committed
    for name in reused:
        (attempt,) = resumed["stages"][0]["tasks"][name]["attempts"]
        assert attempt["reused"] is True and attempt["status"] == "committed"
    assert sorted(p.name for p in (out / "_corral").iterdir()) == ["manifest.json"]  # journal, lock, work: gone


# --- an unfinished run: a task failed after some committed ----------------------------------------------


@pytest.fixture
def unfinished(tmp_path):
    """A run whose reduce fails (after every map task committed): the journal and working data stay."""
    text = _write_input(tmp_path / "in", files=4, lines=10)
    fail = tmp_path / "fail"
    fail.write_text("")
    out = tmp_path / "out"
    argv = ["run", f"{jobs.__file__}:FailReduceWhile", tmp_path / "in", "--out", out, "--map-bin-size", "1",
            "--reducers", "2", "--backend", "threads", "--retries", "0", "--arg", f"fail={fail}"]
    done = run_command("corral", *argv)
    assert done.returncode == 1 and "reduce failing on purpose" in done.stderr
    return {"argv": argv, "out": out, "fail": fail, "text": text, "folder": tmp_path / "in"}


def _state(out: Path) -> dict[str, bytes]:
    """Every file below ``out`` and its content (to show that nothing was deleted or changed)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_new_run_into_an_unfinished_one_names_resume_and_overwrite(unfinished, capsys):
    run_id = json.loads((unfinished["out"] / "_corral" / "journal.jsonl").read_text().splitlines()[0])["run_id"]
    before = _state(unfinished["out"])
    code, _, err = cli(capsys, *unfinished["argv"])
    assert code == 2
    assert err.strip().splitlines() == [
        f"corral: error: output folder {unfinished['out']} holds an unfinished run {run_id}: continue it with "
        "--resume, or start again with --overwrite"
    ]
    assert _state(unfinished["out"]) == before


def test_resume_continues_a_failed_run_reusing_its_map_tasks(unfinished, capsys):
    unfinished["fail"].unlink()
    code, _, err = cli(capsys, *unfinished["argv"], "--resume")
    assert code == 0, err
    assert "tasks already committed" in err and "resuming run" in err
    assert counts(unfinished["out"]) == word_counter(unfinished["text"])
    m = manifest(unfinished["out"])
    tasks = m["stages"][0]["tasks"]
    assert all(tasks[f"map-{j:04d}"].get("reused") for j in range(4))
    assert not any(t.get("reused") for name, t in tasks.items() if name.startswith("reduce"))
    assert m["counters"]["lines"] == {"total": 40}


def test_resume_runs_again_a_task_whose_output_is_gone(unfinished, capsys):
    unfinished["fail"].unlink()
    (gone,) = [p for p in (unfinished["out"] / "_corral" / "work").rglob("map-0002.*.bin")]
    gone.unlink()
    code, _, err = cli(capsys, *unfinished["argv"], "--resume")
    assert code == 0, err
    assert "resuming run" in err and ": 3 of 6 tasks already committed" in err
    assert counts(unfinished["out"]) == word_counter(unfinished["text"])
    tasks = manifest(unfinished["out"])["stages"][0]["tasks"]
    assert not tasks["map-0002"].get("reused") and tasks["map-0001"].get("reused")


@pytest.mark.parametrize("change, message", [
    (["--reducers", "3"], "--reducers was 2, is now 3"),
    (["--arg", "extra=1"], "--arg was fail={fail}, is now fail={fail} extra=1"),
    (["--split-size", "1MB"], "--split-size was 67108864, is now 1048576"),
])
def test_resume_with_other_settings_is_refused_and_deletes_nothing(unfinished, capsys, change, message):
    before = _state(unfinished["out"])
    code, _, err = cli(capsys, *unfinished["argv"], *change, "--resume")
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("corral: error: cannot resume run ")
    assert message.format(fail=unfinished["fail"]) in line
    assert line.endswith("Nothing was deleted: resume with the same job, inputs and settings, or start again "
                         "with --overwrite")
    assert _state(unfinished["out"]) == before


def test_resume_with_changed_inputs_is_refused_naming_them(unfinished, capsys):
    folder = unfinished["folder"]
    (folder / "f01.txt").write_text((folder / "f01.txt").read_text() + "more\n")
    (folder / "new.txt").write_text("new\n")
    (folder / "f03.txt").unlink()
    before = _state(unfinished["out"])
    code, _, err = cli(capsys, *unfinished["argv"], "--resume")
    assert code == 2
    (line,) = err.strip().splitlines()
    size = len((folder / "f01.txt").read_bytes())
    assert f"input {folder / 'f01.txt'} changed size ({size - 5} -> {size} bytes)" in line
    assert f"input {folder / 'f03.txt'} is gone" in line
    assert f"input {folder / 'new.txt'} is new" in line
    assert _state(unfinished["out"]) == before


def test_resume_with_a_modified_input_of_the_same_size_is_refused(unfinished, capsys):
    path = unfinished["folder"] / "f00.txt"
    path.write_bytes(path.read_bytes().replace(b"w", b"v"))
    os.utime(path, (time.time() + 5, time.time() + 5))
    code, _, err = cli(capsys, *unfinished["argv"], "--resume")
    assert code == 2 and f"input {path} was modified" in err


def test_overwrite_starts_an_unfinished_run_again(unfinished, capsys):
    old_work = [p for p in (unfinished["out"] / "_corral" / "work").iterdir()]
    unfinished["fail"].unlink()
    code, _, err = cli(capsys, *unfinished["argv"], "--overwrite")
    assert code == 0, err
    m = manifest(unfinished["out"])
    assert not any(t.get("reused") for t in m["stages"][0]["tasks"].values())
    assert "resumed" not in m
    assert all(not p.exists() for p in old_work)  # the abandoned run's working data is gone too
    assert counts(unfinished["out"]) == word_counter(unfinished["text"])


def test_resume_with_nothing_to_resume(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("a b\n")
    code, _, err = cli(capsys, "run", f"{jobs.__file__}:WordCount", tmp_path / "in.txt", "--out", tmp_path / "out",
                       "--resume", "--backend", "threads")
    assert code == 2
    assert err.strip() == (f"corral: error: nothing to resume in {tmp_path / 'out'}: it holds no unfinished run "
                           f"(no journal in {tmp_path / 'out'}/_corral)")
    assert not (tmp_path / "out").exists()
    run(jobs.WordCount, tmp_path / "in.txt", tmp_path / "out")
    code, _, err = cli(capsys, "run", f"{jobs.__file__}:WordCount", tmp_path / "in.txt", "--out", tmp_path / "out",
                       "--resume", "--backend", "threads")
    assert code == 2
    assert err.strip() == (f"corral: error: the run in {tmp_path / 'out'} already succeeded: nothing to resume "
                           "(use --overwrite to run it again)")


def test_a_run_that_committed_nothing_leaves_no_journal(tmp_path, capsys):
    """A failure before any task committed is not worth resuming: the next run needs no flag."""
    (tmp_path / "in.txt").write_text("a b\n")
    code, _, _ = cli(capsys, "run", f"{jobs.__file__}:AlwaysFails", tmp_path / "in.txt", "--out", tmp_path / "out",
                     "--backend", "threads", "--retries", "0")
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "out" / "_corral").iterdir()) == ["manifest.json"]
    run(jobs.WordCount, tmp_path / "in.txt", tmp_path / "out")
    assert counts(tmp_path / "out") == {"a": 1, "b": 1}


def test_resume_finishes_a_commit_that_was_cut_short(tmp_path, monkeypatch):
    """The driver stopped between moving two part files: the resumed run moves the rest."""
    import corral.driver

    text = _write_input(tmp_path / "in", files=3, lines=5)
    moved: list = []

    def move_one_then_fail(self, out_fs, moves):
        out_fs.move(*moves[0])
        moved.append(moves[0])
        raise OSError("the network went away")

    monkeypatch.setattr(corral.driver.Driver, "_move_outputs", move_one_then_fail)
    with pytest.raises(OSError, match="the network went away"):
        run(jobs.WordCount, tmp_path / "in", tmp_path / "out", reducers=3, map_bin_size="1")
    assert [p.name for p in (tmp_path / "out").glob("part-*")] == ["part-00000"]
    monkeypatch.undo()
    m = run(jobs.WordCount, tmp_path / "in", tmp_path / "out", reducers=3, map_bin_size="1", resume=True)
    assert m["resumed"] == {"reused_tasks": 6}
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*")) == ["part-00000", "part-00001", "part-00002"]
    assert counts(tmp_path / "out") == word_counter(text)
    assert (tmp_path / "out" / "_SUCCESS").exists()


def test_resume_and_overwrite_together_are_refused(unfinished, capsys):
    code, _, err = cli(capsys, *unfinished["argv"], "--resume", "--overwrite")
    assert code == 2
    assert err.strip() == ("corral: error: --resume and --overwrite exclude each other: continue the unfinished run, "
                           "or start again")


def test_a_damaged_journal_is_one_line(unfinished, capsys):
    journal = unfinished["out"] / "_corral" / "journal.jsonl"
    journal.write_text(journal.read_text() + '{"t": "commit", "stage": 0}\n')  # a record without its task
    code, _, err = cli(capsys, *unfinished["argv"], "--resume")
    assert code == 2
    assert err.strip() == (f"corral: error: the journal in {unfinished['out']}/_corral is damaged (KeyError: "
                           "'task'): start again with --overwrite")
    unfinished["fail"].unlink()
    code, _, err = cli(capsys, *unfinished["argv"], "--overwrite")
    assert code == 0, err
    assert counts(unfinished["out"]) == word_counter(unfinished["text"])


def test_resume_with_changed_code_or_another_job_is_refused_and_deletes_nothing(tmp_path, capsys):
    """The journal holds the job's name and a hash of its file: an edited job (or another class) would
    mix outputs of two programs, so the resume is refused, naming what changed."""
    job = tmp_path / "wc.py"
    job.write_text(
        "import os\nimport corral\n\n\nclass Counting(corral.Job):\n    def map(self, key, line):\n"
        "        yield from ((w, 1) for w in line.split())\n\n    def reduce(self, word, counts):\n"
        "        if os.path.exists(self.args['fail']):\n            raise ValueError('failing on purpose')\n"
        "        yield word, sum(counts)\n\n\nclass Other(Counting):\n    pass\n"
    )
    _write_input(tmp_path / "in", files=2, lines=3)
    (tmp_path / "fail").write_text("")
    argv = [tmp_path / "in", "--out", tmp_path / "out", "--backend", "threads", "--retries", "0",
            "--arg", f"fail={tmp_path / 'fail'}", "--map-bin-size", "1"]
    assert cli(capsys, "run", f"{job}:Counting", *argv)[0] == 1
    before = _state(tmp_path / "out")
    code, _, err = cli(capsys, "run", f"{job}:Other", *argv, "--resume")
    assert code == 2 and "the job was wc:Counting, is now wc:Other." in err
    job.write_text(job.read_text() + "# edited\n")
    code, _, err = cli(capsys, "run", f"{job}:Counting", *argv, "--resume")
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("corral: error: cannot resume run ")
    assert f": the job's code ({job}) changed. Nothing was deleted" in line
    assert _state(tmp_path / "out") == before


WATCH_JOURNAL_JOB = '''
import json, os, time
import corral

class WatchJournal(corral.Job):
    """Each line "name wait": wait that many seconds, then say whether the run's journal holds its plan."""
    def map(self, key, line):
        name, wait = line.split()
        time.sleep(float(wait))
        path = os.path.join(self.args["out"], "_corral", "journal.jsonl")
        try:
            with open(path, "rb") as f:
                records = [json.loads(r) for r in f.read().split(b"\\n") if r.strip()]
        except FileNotFoundError:
            records = []
        yield name, any(r.get("t") == "stage" for r in records)
'''


@pytest.mark.parametrize("waits, expected", [((0.3, 1.5), [False, True]), ((0.6,), [True])],
                         ids=["both-workers-busy", "one-worker-idle"])
def test_the_plan_is_journaled_once_a_worker_is_free(tmp_path, waits, expected):
    """The plan and run records (4 MB for 20,000 small files) are encoded and written while a worker
    is idle: at once when the first round of tasks leaves one idle (one task, two workers), else when
    the first task ends; never, within the journal's 2 s interval, while every worker has a task.

    Two tasks look at the journal at 0.3 s and 1.5 s: the first while both workers are busy, the second
    after the first task has ended (1.2 s of slack for one worker starting late), under the 2 s interval."""
    job = tmp_path / "watch.py"
    job.write_text(WATCH_JOURNAL_JOB)
    folder = tmp_path / "in"
    folder.mkdir()
    for n, wait in enumerate(waits):
        (folder / f"f{n}.txt").write_text(f"line{n} {wait}\n")
    out = tmp_path / "out"
    done = run_command("corral", "run", job, folder, "--out", out, "--backend", "processes", "--max-concurrency",
                       "2", "--map-bin-size", "10", "--arg", f"out={out}", "-q")
    assert (done.returncode, done.stderr) == (0, "")
    assert manifest(out)["stages"][0]["map_tasks"] == len(waits)
    assert sorted(line for lines in part_lines(out) for line in lines) == [
        f"line{n}\t{str(seen).lower()}" for n, seen in enumerate(expected)]


def test_the_next_phase_starts_while_the_journal_is_written(tmp_path, monkeypatch):
    """A phase's end asks the keeper for a flush and goes on: its reduce tasks start while a slow write
    of the plan (here 1 s, on the keeper's thread) is still going; the journal holds every record all
    the same, in order, once the run has ended (it is removed on success: read just before)."""
    import threading

    from corral import journal as journal_module

    real_write = journal_module.Journal._write
    slow_write_ended: list[float] = []
    written: list[str] = []

    def slow_write(self, records):
        slow = threading.current_thread().name == "corral-keeper" and any(r.get("t") == "stage" for r in records)
        if slow:
            time.sleep(1.0)
        real_write(self, records)
        written.extend(r.get("t") for r in records if r)
        if slow:
            slow_write_ended.append(time.time())

    monkeypatch.setattr(journal_module.Journal, "_write", slow_write)
    folder = tmp_path / "in"
    _write_input(folder, files=4)
    out = tmp_path / "out"
    result = run(jobs.WordCount, folder, out, max_concurrency=2, map_bin_size=2000)
    stage = result["stages"][0]
    assert stage["map_tasks"] == 2 and len(slow_write_ended) == 1
    reduce_started = min(a["start"] for name, task in stage["tasks"].items() if name.startswith("reduce")
                         for a in task["attempts"])
    assert reduce_started < slow_write_ended[0] - result["started"]
    assert written[:2] == ["run", "stage"] and written[-1] == "final"
    assert written.count("commit") == 2 + stage["reduce_tasks"]


def test_a_journal_write_torn_by_an_error_is_written_again_from_a_new_line(tmp_path):
    """A flush that fails half-way (a full disk) leaves a torn line; the records go out again with the
    next flush, from a new line, so that none is glued to the torn one and lost."""
    import errno

    from corral.filesystems.local import LocalFileSystem
    from corral.journal import Journal, read_journal

    class TearsOnce(LocalFileSystem):
        torn = False

        def append_pieces(self, url, pieces):
            if not self.torn:
                self.torn = True
                with open(url, "ab") as f:
                    f.write(b"".join(pieces)[:7])
                raise OSError(errno.ENOSPC, "No space left on device", url)
            return super().append_pieces(url, pieces)

    journal = Journal(TearsOnce(), str(tmp_path))
    (tmp_path / "_corral").mkdir()
    journal.add({"t": "run", "n": 1})
    with pytest.raises(OSError):
        journal.flush()
    journal.add({"t": "commit", "n": 2})
    journal.flush()
    assert read_journal(LocalFileSystem(), str(tmp_path)) == ([{"t": "run", "n": 1}, {"t": "commit", "n": 2}], 0)


def test_a_wave_of_quick_tasks_journals_its_commits_in_batches(tmp_path, monkeypatch):
    """Commits are written once ``FLUSH_RECORDS`` of them are pending, not only every 2 s: a crash loses
    at most that many, and a wave of quick tasks holds no more than that many records in memory (10,000
    no-op tasks held ~5,000, ~0.2 KB a task of the driver's peak)."""
    from corral import journal as journal_module

    monkeypatch.setattr(journal_module, "FLUSH_RECORDS", 10)
    real_write = journal_module.Journal._write
    batches: list[int] = []

    def counting_write(self, records):
        real_write(self, records)
        batches.append(sum(r.get("t") == "commit" for r in records))

    monkeypatch.setattr(journal_module.Journal, "_write", counting_write)
    folder = tmp_path / "in"
    folder.mkdir()
    for n in range(60):
        (folder / f"f{n:02d}.txt").write_text(f"line {n}\n")
    (tmp_path / "pids").mkdir()
    result = run(jobs.Sleeper, folder, tmp_path / "out", max_concurrency=2, map_bin_size="1",
                 arg=[f"folder={tmp_path / 'pids'}", "sleep=0.005"])
    assert result["stages"][0]["map_tasks"] == 60
    assert sum(batches) == 60 and result["seconds"] < journal_module.FLUSH_SECONDS  # all before 2 s went by
    assert len([b for b in batches if b]) >= 4, batches
    assert max(batches) <= 20, batches
