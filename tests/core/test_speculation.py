"""Speculative attempts: a straggler gets a duplicate once most of its wave is done; the first attempt
to finish commits, the output is unchanged, and the manifest and summary count them."""

from __future__ import annotations

import time

import pytest

import corral.driver
from corral.plugins import get_plugin_manager
from corral.wave import SpeculationPolicy

from . import jobs
from .util import cli, counts, manifest, run, word_counter

WAIT = 4.0  # the straggler's first attempt runs this long unless a duplicate finishes first


@pytest.fixture
def straggling_input(tmp_path):
    """Eight one-task files; the one holding the line ``straggle`` is slow on its first attempt."""
    folder = tmp_path / "in"
    folder.mkdir()
    text = ""
    for n in range(8):
        body = "".join(f"w{(n * 7 + i) % 11} x{i % 3}\n" for i in range(6)) + ("straggle\n" if n == 5 else "")
        (folder / f"part-{n}.txt").write_text(body)
        text += body
    return folder, word_counter(text)


@pytest.fixture
def short_floor(monkeypatch):
    """A floor of 0.3 s instead of a few seconds, so that the test is quick."""
    monkeypatch.setattr(corral.driver, "SPECULATION_FLOOR_SECONDS", 0.3)


def _straggler_task(m):
    (task,) = [t for t in m["stages"][0]["tasks"].values() if len(t["attempts"]) > 1]
    return task


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_a_straggler_gets_a_duplicate_that_commits(straggling_input, tmp_path, short_floor, backend):
    folder, expected = straggling_input
    started = time.monotonic()
    m = run(jobs.Straggler, folder, tmp_path / "out", backend=backend, max_concurrency=3, map_bin_size="1",
            reducers=2, arg=[f"marker={tmp_path / 'marker'}", f"wait={WAIT}", "sleep=0.02"])
    assert counts(tmp_path / "out") == expected  # nothing lost or counted twice
    task = _straggler_task(m)
    first, duplicate = task["attempts"]
    assert duplicate["speculative"] is True and duplicate["status"] == "committed"
    assert task["committed_attempt"] == 2
    assert first["status"] in ("cancelled", "discarded")  # stopped, or left to end and thrown away
    assert "speculative" not in first
    assert m["speculative"] == {"attempts": 1, "won": 1}
    phases = m["stages"][0]["phases"]
    assert phases["map"]["speculative_attempts"] == 1 and phases["map"]["speculative_won"] == 1
    assert phases["map"]["seconds"] < WAIT - 1  # the wave did not wait for the straggler
    assert phases["reduce"]["speculative_attempts"] == 0
    assert time.monotonic() - started < WAIT + 3


def test_no_speculative_waits_for_the_straggler(straggling_input, tmp_path, short_floor):
    folder, expected = straggling_input
    m = run(jobs.Straggler, folder, tmp_path / "out", max_concurrency=3, map_bin_size="1", reducers=2,
            speculative=False, arg=[f"marker={tmp_path / 'marker'}", "wait=1.5", "sleep=0.02"])
    assert counts(tmp_path / "out") == expected
    assert m["speculative"] == {"attempts": 0, "won": 0}
    assert all(len(t["attempts"]) == 1 for t in m["stages"][0]["tasks"].values())
    assert m["stages"][0]["phases"]["map"]["seconds"] >= 1.5


def test_speculative_attempts_never_exceed_the_free_workers(straggling_input, tmp_path, short_floor):
    folder, _ = straggling_input
    m = run(jobs.Straggler, folder, tmp_path / "out", backend="processes", max_concurrency=2, map_bin_size="1",
            reducers=2, arg=[f"marker={tmp_path / 'marker'}", f"wait={WAIT}", "sleep=0.05"])
    assert m["speculative"]["attempts"] == 1
    spans = [(a["start"], a["end"]) for t in m["stages"][0]["tasks"].values() for a in t["attempts"]]
    moments = sorted({s for s, _ in spans})
    running = [sum(1 for s, e in spans if s <= at < e) for at in moments]
    assert max(running) <= 2  # the duplicate waited for a free worker; the straggler held one until it ended


def test_the_summary_counts_speculative_attempts(straggling_input, tmp_path, capsys, short_floor):
    folder, _ = straggling_input
    code, _, err = cli(capsys, "run", f"{jobs.__file__}:Straggler", folder, "--out", tmp_path / "out",
                       "--backend", "threads", "--max-concurrency", "3", "--map-bin-size", "1",
                       "--arg", f"marker={tmp_path / 'marker'}", "--arg", f"wait={WAIT}", "--arg", "sleep=0.02")
    assert code == 0, err
    assert "(11 tasks, 1 speculative attempts, 1 won); output in" in err.splitlines()[-1]
    assert manifest(tmp_path / "out")["settings"]["speculative"] is True


def test_the_threshold_is_twice_the_median_with_a_floor():
    policy = SpeculationPolicy(floor=5.0)
    assert policy.threshold([1.0, 1.0, 1.2]) == 5.0  # 2 x 1.0 is under the floor
    assert policy.threshold([4.0, 6.0, 8.0, 10.0]) == 14.0  # 2 x the median (7.0)
    assert SpeculationPolicy(floor=0.1).threshold([0.5]) == 1.0


def test_no_duplicate_before_three_quarters_of_the_wave_is_committed(tmp_path, short_floor):
    """Three tasks, one slow: two thirds of the wave is committed while it runs, under the 75% rule."""
    folder = tmp_path / "in"
    folder.mkdir()
    for n, body in enumerate(["a\n", "b\n", "straggle\n"]):
        (folder / f"{n}.txt").write_text(body)
    m = run(jobs.Straggler, folder, tmp_path / "out", max_concurrency=3, map_bin_size="1", reducers=1,
            arg=[f"marker={tmp_path / 'marker'}", "wait=1.0"])
    assert m["speculative"] == {"attempts": 0, "won": 0}
    assert counts(tmp_path / "out") == {"a": 1, "b": 1, "straggle": 1}
    assert all(len(t["attempts"]) == 1 for t in m["stages"][0]["tasks"].values())
    assert m["stages"][0]["phases"]["map"]["seconds"] >= 1.0


def test_the_progress_bar_counts_speculative_attempts_and_wins(capsys):
    from corral import progress
    from corral.events import PhaseFinished, PhaseStarted, TaskFinished
    from corral.executor import CANCELLED, Failure, Outcome
    from corral.settings import Settings

    hook = get_plugin_manager().hook
    settings = Settings(progress=True)
    assert not hook.corral_task_finished.get_hookimpls()  # no bar yet: no per-attempt hook to call
    progress.corral_phase_started(event=PhaseStarted(0, "map", 3, settings))
    won, lost = Outcome(result={}), Outcome(failure=Failure(CANCELLED, "cancelled"))
    for task, attempt, outcome, committed, speculative in [
        ("map-0000", 1, won, True, False), ("map-0001", 2, won, True, True), ("map-0001", 1, lost, False, False),
        ("map-0002", 2, lost, False, True), ("map-0002", 1, won, True, False),
    ]:
        hook.corral_task_finished(event=TaskFinished(0, "map", task, attempt, outcome, committed, False,
                                                     settings, speculative=speculative))
    progress.corral_phase_finished(event=PhaseFinished(0, "map", 3, 1.0, settings))
    assert not hook.corral_task_finished.get_hookimpls()
    shown = capsys.readouterr().err
    assert "stage 1 map: 100%" in shown and "3/3" in shown
    assert shown.rstrip().endswith("2 speculative, 1 won]")
