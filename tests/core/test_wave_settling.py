"""Where ended attempts are settled. On the threads backend (``resolves_futures_unlocked``) the thread
whose task ended commits it and submits the next task, one thread at a time, and the driver's thread
only polls; on other executors the driver's thread settles every attempt, as before. Either way every
task is committed once, the observers hear of each attempt in order and never two at once, and an
error raised while settling on a task thread fails the job as it would on the driver's thread."""

from __future__ import annotations

import collections
import random
import threading
import time
from concurrent.futures import Future

import pytest

import corral
from corral import Executor, ExecutorSpec, Outcome, hookimpl
from corral.executors.local import ThreadExecutor
from corral.plugins import get_plugin_manager
from corral.retry import RetryPolicy
from corral.tasks import MapSpec
from corral.wave import Leftovers, SpeculationPolicy, TaskState, Wave

from . import jobs
from .util import lines, run


class Observer:
    """Records each task event's thread and kind, and the most calls in flight at once."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.events: list[tuple[str, str, str, int]] = []
        self.inside = 0
        self.most_inside = 0
        self.fail_at = fail_at

    def _enter(self, kind: str, event) -> None:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        time.sleep(0.0005)  # widen the window in which a second call could overlap this one
        self.events.append((threading.current_thread().name, kind, event.task, event.attempt))
        self.inside -= 1
        if kind == "finished" and self.fail_at is not None and len(self.events) >= self.fail_at:
            raise RuntimeError("the observer broke")

    @hookimpl
    def corral_task_started(self, event) -> None:
        self._enter("started", event)

    @hookimpl
    def corral_task_finished(self, event) -> None:
        self._enter("finished", event)


@pytest.fixture
def observer(isolated):
    found = Observer()
    get_plugin_manager().register(found, name="test-observer")
    yield found
    get_plugin_manager().unregister(name="test-observer")


@pytest.fixture
def many_files(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for n in range(40):
        (folder / f"f-{n:02d}.txt").write_text(f"line {n}\n")
    return folder


def _in_order(events) -> bool:
    started = set()
    for _, kind, task, attempt in events:
        if kind == "started":
            started.add((task, attempt))
        elif (task, attempt) not in started:
            return False
    return True


def test_on_threads_the_task_threads_settle_attempts_one_at_a_time(observer, many_files, tmp_path):
    m = run(jobs.Cat, many_files, tmp_path / "out", max_concurrency=2, map_bin_size="1")
    assert sorted(lines(tmp_path / "out")) == sorted(f"line {n}" for n in range(40))
    assert sum(1 for t in m["stages"][0]["tasks"].values() if t["committed_attempt"] == 1) == 40
    finished = [thread for thread, kind, _, _ in observer.events if kind == "finished"]
    assert len(finished) == 40
    # all but a few ended while no other thread held the wave: their own thread settled them
    assert sum(name.startswith("corral-task-") for name in finished) >= 30, finished
    assert observer.most_inside == 1
    assert _in_order(observer.events)


def test_on_processes_the_serving_thread_settles_attempts(observer, many_files, tmp_path):
    run(jobs.Cat, many_files, tmp_path / "out", backend="processes", max_concurrency=2, map_bin_size="1")
    assert sorted(lines(tmp_path / "out")) == sorted(f"line {n}" for n in range(40))
    finished = [thread for thread, kind, _, _ in observer.events if kind == "finished"]
    assert sum(name == "corral-workers" for name in finished) >= 30, collections.Counter(observer.events)
    assert len(observer.events) == 80 and observer.most_inside == 1 and _in_order(observer.events)


class _LockedThreads(ThreadExecutor):
    """The threads executor, as a third party's executor that does not say it resolves unlocked."""

    name = "locked-threads"
    resolves_futures_unlocked = False


class _LockedThreadsPlugin:
    @hookimpl
    def corral_executors(self):
        return [ExecutorSpec("locked-threads", lambda settings: _LockedThreads(settings.max_concurrency or 2))]


def test_an_executor_that_does_not_say_so_is_settled_on_the_drivers_thread(observer, many_files, tmp_path):
    get_plugin_manager().register(_LockedThreadsPlugin(), name="test-locked-threads")
    try:
        run(jobs.Cat, many_files, tmp_path / "out", backend="locked-threads", max_concurrency=2, map_bin_size="1")
    finally:
        get_plugin_manager().unregister(name="test-locked-threads")
    assert sorted(lines(tmp_path / "out")) == sorted(f"line {n}" for n in range(40))
    assert {thread for thread, _, _, _ in observer.events} == {"MainThread"}
    assert len(observer.events) == 80 and _in_order(observer.events)


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_an_observer_that_raises_while_settling_fails_the_job_as_anywhere(isolated, many_files, tmp_path, backend):
    broken = Observer(fail_at=9)
    get_plugin_manager().register(broken, name="test-broken-observer")
    try:
        with pytest.raises(RuntimeError, match="the observer broke"):
            run(jobs.Cat, many_files, tmp_path / "out", backend=backend, max_concurrency=2, map_bin_size="1")
    finally:
        get_plugin_manager().unregister(name="test-broken-observer")
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    # nothing more was settled once the error was raised: no task of the wave started after it
    finished_at = next(i for i, (_, kind, _, _) in enumerate(broken.events) if kind == "finished" and i >= 8)
    assert not [e for e in broken.events[finished_at + 1:] if e[1] == "started"]


class _ScatteredExecutor(Executor):
    """Ends each attempt after a random pause, on one of several threads of its own, holding no lock
    while it resolves the future: the races the wave's lock must survive."""

    name = "scattered"
    resolves_futures_unlocked = True

    def __init__(self, threads: int, fail_first: frozenset[str] = frozenset()) -> None:
        super().__init__(threads)
        self.fail_first = fail_first
        self.submitted: list[str] = []
        self._lock = threading.Lock()

    def submit(self, payload):
        future: Future[Outcome] = Future()
        with self._lock:
            self.submitted.append(payload["task"])
            first = self.submitted.count(payload["task"]) == 1

        def end() -> None:
            time.sleep(random.random() * 0.002)
            if first and payload["task"] in self.fail_first:
                future.set_result(Outcome(failure=corral.Failure(corral.USER_ERROR, "boom")))
            else:
                future.set_result(Outcome(result={"ok": True, "output": payload["output"]}))

        threading.Thread(target=end, daemon=True).start()
        return future


def _wave(executor: Executor, count: int, log: list) -> Wave:
    tasks = [TaskState(f"map-{n:04d}", None) for n in range(count)]

    def spec_for(state: TaskState) -> MapSpec:
        return MapSpec(job={}, stage=0, task=state.name, attempt=1, output=f"memory://w/{state.name}.a1",
                       output_kind="records")

    return Wave(
        executor, tasks,
        output_for=lambda state, attempt: f"memory://w/{state.name}.a{attempt}",
        on_start=lambda attempt: log.append(("start", attempt.state.name, threading.current_thread().name)),
        on_end=lambda attempt, outcome, committed, retry: log.append(("end", attempt.state.name, committed)),
        retry=RetryPolicy(retries=1, base=0.01, cap=0.01),
        speculation=SpeculationPolicy(enabled=False),
        leftovers=Leftovers(lambda attempt, outcome: None),
        spec_for=spec_for,
    )


@pytest.mark.parametrize("unlocked", [True, False])
def test_every_task_is_committed_once_when_attempts_end_on_many_threads(unlocked):
    executor = _ScatteredExecutor(6, fail_first=frozenset({"map-0007", "map-0123"}))
    executor.resolves_futures_unlocked = unlocked
    log: list = []
    wave = _wave(executor, 400, log)
    started = time.monotonic()
    wave.run()
    assert time.monotonic() - started < 30
    committed = [name for kind, name, *rest in log if kind == "end" and rest[0]]
    assert sorted(committed) == [f"map-{n:04d}" for n in range(400)]
    assert sorted(executor.submitted) == sorted([*committed, "map-0007", "map-0123"])  # one retry each
    assert all(t.committed is not None and len(t.attempts) == (2 if t.name in ("map-0007", "map-0123") else 1)
               for t in wave.tasks)
    starts = {thread for kind, _, thread in (e for e in log if e[0] == "start")}
    assert ("MainThread" in starts) and (len(starts) > 1) == unlocked


def test_a_finished_wave_is_freed_at_once_not_by_a_full_collection():
    """No reference cycle through the wave: its task states go as soon as the driver lets go of it
    (a cycle kept 10,000 of them, ~250 bytes a task of the driver's peak, until a full collection)."""
    import gc
    import weakref

    log: list = []
    wave = _wave(_ScatteredExecutor(2), 20, log)
    wave.run()
    gone = weakref.ref(wave)
    gc.disable()
    try:
        del wave
        assert gone() is None
    finally:
        gc.enable()
