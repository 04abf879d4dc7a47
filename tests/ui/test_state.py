"""The live state (``GET /api/state``) from the observer events: what counts while tasks run, what a
failed or discarded attempt takes back, tasks by state, and the cost so far of a remote run."""

from __future__ import annotations

import pytest

from corral.events import JobFinished, JobStarted, PhaseStarted, TaskFinished, TaskProgress, TaskStarted
from corral.executor import Failure, Outcome
from corral.settings import Settings
from corral.sizing import MemorySizing
from corral.ui.state import LiveState

S = Settings()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def finished(task, attempt, outcome, committed=False, will_retry=False):
    return TaskFinished(0, "map", task, attempt, outcome, committed, will_retry, S)


def ok(counters, **stats):
    return Outcome(result={"ok": True, "counters": counters}, stats=stats)


def test_running_deltas_count_until_the_attempt_fails_and_are_replaced_when_it_commits():
    clock = Clock()
    state = LiveState(clock)
    state.on_job_started(JobStarted("j:J", 1, ["in"], "out", S, "r1", "processes", 2, 2, None))
    state.on_phase_started(PhaseStarted(0, "map", 2, S))
    state.on_task_started(TaskStarted(0, "map", "map-0000", 1, S))
    state.on_task_started(TaskStarted(0, "map", "map-0001", 1, S))
    state.on_task_progress(TaskProgress(0, "map", "map-0000", 1, [("lines", "seen", 40)], 0.5, S))
    state.on_task_progress(TaskProgress(0, "map", "map-0001", 1, [("lines", "seen", 30)], 0.5, S))
    snap = state.snapshot()
    assert snap["counters"] == {"lines": {"seen": 70}}
    assert snap["tasks"] == {"pending": 0, "running": 2, "retrying": 0, "committed": 0, "failed": 0, "total": 2}

    # map-0001's attempt fails: its 30 lines no longer count; the task waits to be retried
    state.on_task_finished(finished("map-0001", 1, Outcome(failure=Failure("user error", "ValueError: x")),
                                    will_retry=True))
    snap = state.snapshot()
    assert snap["counters"] == {"lines": {"seen": 40}}
    assert snap["tasks"]["retrying"] == 1 and snap["retries"] == 1
    assert snap["failures"][0] | {"at": 0} == {"at": 0, "stage": 0, "task": "map-0001", "attempt": 1,
                                               "kind": "user error", "message": "ValueError: x", "will_retry": True}
    # map-0000 commits with its totals (the final count, not the deltas seen so far)
    state.on_task_finished(finished("map-0000", 1, ok([["lines", "seen", 100]], records_in=100, cpu_seconds=2.0),
                                    committed=True))
    # a report that arrives after its attempt ended is not counted again
    state.on_task_progress(TaskProgress(0, "map", "map-0000", 1, [("lines", "seen", 60)], 0.1, S))
    snap = state.snapshot()
    assert snap["counters"] == {"lines": {"seen": 100}} and snap["records_in"] == 100
    assert snap["cpu"]["cpu_seconds"] == 2.5  # 0.5 reported while running, the rest at the end (and 0.5 of 0001)
    state.on_task_started(TaskStarted(0, "map", "map-0001", 2, S))
    state.on_task_finished(finished("map-0001", 2, ok([["lines", "seen", 100]]), committed=True))
    clock.now += 10
    state.on_job_finished(JobFinished(True, "out", 10.0, {"lines": {"seen": 200}}, {"advice": []}, None, S))
    snap = state.snapshot()
    assert snap["status"] == "succeeded" and snap["counters"] == {"lines": {"seen": 200}}
    assert snap["counter_rates"] == {"lines": {"seen": 20.0}}  # the run's average once it is over
    assert snap["tasks"]["committed"] == 2 and snap["elapsed"] == 10.0


def test_cost_so_far_of_a_remote_run_and_its_memory_cap():
    sizing = MemorySizing(platform="AWS Lambda", memory_mb=1024, mb_per_vcpu=1769, usd_per_gb_second=0.0000166667,
                          usd_per_request=0.2e-6)
    state = LiveState(Clock())
    state.on_job_started(JobStarted("j:J", 1, ["in"], "out", S, "r1", "lambda", 10, None, sizing))
    state.on_phase_started(PhaseStarted(0, "map", 1, S))
    state.on_task_started(TaskStarted(0, "map", "map-0000", 1, S))
    state.on_task_finished(finished("map-0000", 1, ok([], billed_ms=2000, memory_size_mb=1024, max_memory_used_mb=80,
                                                      cold_start=True, throttles=3,
                                                      throttle_message="TooManyRequestsException: Rate Exceeded."),
                                    committed=True))
    snap = state.snapshot()
    assert snap["cost"]["usd"] == pytest.approx(2 * 0.0000166667 + 0.2e-6)
    assert snap["cost"]["gb_seconds"] == 2.0 and snap["cost"]["invocations"] == 1
    assert snap["memory_cap_mb"] == 1024 and snap["cpu"] is None and snap["throttles"] == 3
    assert snap["throttled"] == [{"at": 0.0, "stage": 0, "task": "map-0000", "attempt": 1, "throttles": 3,
                                  "message": "TooManyRequestsException: Rate Exceeded."}]
    assert snap["live_counters"] is False  # remote functions report counters when a task ends
    (attempt,) = snap["attempts"]
    assert attempt["peak_memory_mb"] == 80 and attempt["memory_cap_mb"] == 1024 and attempt["cold_start"] is True
