"""Ctrl-C and SIGTERM, sent for real to a real ``corral run``: the run stops at once, cancels what
runs, keeps its journal, says ``corral: interrupted; resume with --resume`` and exits 130 / 143 with
no ``_SUCCESS``; ``--resume`` then finishes it. A second Ctrl-C exits at once.

Each run gets a session of its own with SIGINT at its default (a non-interactive shell starts
background jobs with SIGINT ignored, and the signal would never arrive).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from . import jobs
from .util import clean_env, corral_command, counts, run_command, word_counter


def _start(argv: list) -> subprocess.Popen:
    return subprocess.Popen(
        [corral_command(), *map(str, argv)], env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_journal(out: Path, process: subprocess.Popen, record: str, timeout: float = 30) -> None:
    """Until the run's journal holds a record of type ``record``: "stage" (the plan: the run has got
    going) or "commit" (a task committed: something to resume). A late worker only delays it, where a
    fixed sleep would signal a run that had not got so far."""
    journal = out / "_corral" / "journal.jsonl"
    deadline = time.monotonic() + timeout
    while not (journal.exists() and f'"t":"{record}"' in journal.read_text()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"no {record} record within {timeout} s"
        time.sleep(0.02)


def _finish(process: subprocess.Popen, timeout: float) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"the run did not stop within {timeout} s of the signal")
    return process.returncode, err, time.monotonic() - started


@pytest.fixture
def slow_run(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    text = ""
    for n in range(10):
        body = "".join(f"w{(n + i) % 17} v{i % 4}\n" for i in range(10))
        (folder / f"{n}.txt").write_text(body)
        text += body
    argv = ["run", f"{jobs.__file__}:SlowCounted", folder, "--out", tmp_path / "out", "--map-bin-size", "1",
            "--reducers", "2", "--max-concurrency", "2", "--arg", "sleep=0.1"]
    return argv, tmp_path / "out", word_counter(text)


@pytest.mark.parametrize("sig, code, backend", [
    (signal.SIGINT, 130, "processes"), (signal.SIGTERM, 143, "processes"), (signal.SIGINT, 130, "threads"),
])
def test_a_signal_to_the_driver_alone_stops_the_run_and_resume_finishes_it(slow_run, sig, code, backend):
    argv, out, expected = slow_run
    process = _start([*argv, "--backend", backend])
    _wait_for_journal(out, process, "commit")  # tasks of 1 s on two workers: a map wave of 5 s
    process.send_signal(sig)  # to the driver only, not its workers (not a terminal's whole group)
    returncode, err, seconds = _finish(process, timeout=15)
    assert (returncode, err.splitlines()[-1]) == (code, "corral: interrupted; resume with --resume")
    assert "Traceback" not in err
    assert seconds < 6
    assert not (out / "_SUCCESS").exists() and not list(out.glob("part-*"))
    manifest = json.loads((out / "_corral" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["error"] == f"interrupted by {signal.Signals(sig).name}"
    assert not (out / "_corral" / "lock").exists()
    done = run_command("corral", *argv, "--backend", backend, "--resume")
    assert done.returncode == 0, done.stderr
    assert "tasks already committed" in done.stderr
    assert counts(out) == expected


def test_ctrl_c_in_a_terminal_reaches_every_process_and_stops_cleanly(slow_run):
    """A terminal's Ctrl-C signals the whole process group: the driver and its workers."""
    argv, out, _ = slow_run
    process = _start([*argv, "--backend", "processes"])
    _wait_for_journal(out, process, "commit")
    os.killpg(process.pid, signal.SIGINT)
    returncode, err, _ = _finish(process, timeout=15)
    assert returncode == 130
    assert err.splitlines() == ["corral: interrupted; resume with --resume"]  # no worker's traceback either


@pytest.mark.slow
def test_ctrl_c_stops_a_threads_run_whose_task_will_not_stop(tmp_path):
    """A task sleeping in user code on a thread cannot be stopped; the run ends without waiting for it."""
    (tmp_path / "in.txt").write_text("a b\n")
    process = _start(["run", f"{jobs.__file__}:SleepingWordCount", tmp_path / "in.txt", "--out", tmp_path / "out",
                      "--backend", "threads", "--arg", "sleep=60"])
    _wait_for_journal(tmp_path / "out", process, "stage")
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    returncode, err, seconds = _finish(process, timeout=20)
    assert returncode == 130
    assert err.splitlines()[-1] == "corral: interrupted"  # nothing was committed: nothing to resume
    assert seconds < 10
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_a_second_ctrl_c_exits_at_once(tmp_path):
    (tmp_path / "in.txt").write_text("a b\n")
    started = tmp_path / "started"
    process = _start(["run", f"{jobs.__file__}:SleepingWordCount", tmp_path / "in.txt", "--out", tmp_path / "out",
                      "--backend", "threads", "--arg", "sleep=60", "--arg", f"started={started}"])
    deadline = time.monotonic() + 30
    while not started.exists():  # the task is in its sleep: the first Ctrl-C has a task to wait for
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the task did not start"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)  # the driver now waits a few seconds for the stuck task
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    returncode, err, seconds = _finish(process, timeout=10)
    assert returncode == 130
    assert "corral: interrupted again: exiting now" in err.splitlines()
    assert seconds < 2


def test_a_ctrl_c_once_the_success_marker_is_written_leaves_a_succeeded_run(tmp_path, monkeypatch):
    """Ctrl-C while a run that has written ``_SUCCESS`` removes its working data (seconds on an object store
    with many objects): the run has succeeded and stays so, with its manifest saying so (not "interrupted"
    next to a ``_SUCCESS``, a journal left to resume and exit 130)."""
    import corral.driver

    from .util import manifest, run

    clean_up = corral.driver.Driver._clean_up

    def interrupted_clean_up(self, success):
        if success:
            signal.raise_signal(signal.SIGINT)  # the handler runs here, as for a Ctrl-C at this moment
        return clean_up(self, success)

    monkeypatch.setattr(corral.driver.Driver, "_clean_up", interrupted_clean_up)
    (tmp_path / "in.txt").write_text("a b a\n")
    out = tmp_path / "out"
    assert run(jobs.WordCount, tmp_path / "in.txt", out)["status"] == "succeeded"
    assert manifest(out)["status"] == "succeeded" and (out / "_SUCCESS").exists()
    assert sorted(p.name for p in (out / "_corral").iterdir()) == ["manifest.json"]  # cleaned up all the same
    assert counts(out) == {"a": 2, "b": 1}
