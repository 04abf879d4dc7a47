"""A wave of tasks (one phase of a stage): attempts submitted up to the executor's concurrency,
failures retried by the ``RetryPolicy``, stragglers duplicated by the ``SpeculationPolicy``, and the
first attempt of each task to succeed committed.

Attempts write only under their own names, so a duplicate can never change the output: whichever
attempt of a task ends well first is committed, and any other is cancelled (where the executor can)
or discarded when it ends.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from bisect import insort
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from corral.collector import full_collections_held
from corral.executor import CANCELLED, Executor, Failure, Outcome
from corral.fs import remove_quietly
from corral.retry import RetryPolicy
from corral.tasks import TaskSpec

log = logging.getLogger("corral")

#: How often the loop wakes while it waits for attempts: to notice an interrupt, to look for stragglers.
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class SpeculationPolicy:
    """When a straggler gets a duplicate attempt: once ``share`` of the wave is committed and a slot is
    free, a task running longer than ``max(factor x the median duration of the wave's committed
    tasks, floor)`` gets one more attempt."""

    enabled: bool = True
    floor: float = 5.0
    factor: float = 2.0
    share: float = 0.75

    def threshold(self, sorted_durations: list[float]) -> float:
        n = len(sorted_durations)
        median = (sorted_durations[(n - 1) // 2] + sorted_durations[n // 2]) / 2
        return max(self.factor * median, self.floor)


@dataclass(slots=True)
class Committed:
    """What the driver keeps of a committed attempt's result, and journals for ``--resume``: where its
    output is and how big, and what it counted (its measurements are in its record's stats). A slot
    class, not the result's dict: a wave of 10,000 tasks holds one each to its end."""

    output: str
    bytes_out: int = 0
    index: list[list[int]] | None = None  # a map task's shuffle object: each partition's [offset, length]
    parts: tuple[str, ...] | None = None  # a final task's part files
    counters: list[list[Any]] | None = None  # [[group, name, amount], …]; None if it counted nothing

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> Committed:
        """From the attempt's result (``corral.worker.run_task``), or from the journal (``to_json``)."""
        parts = result.get("parts")
        return cls(result["output"], result.get("bytes_out") or 0, result.get("index"),
                   None if parts is None else tuple(parts), result.get("counters") or None)

    def to_json(self) -> dict[str, Any]:
        found = {"output": self.output, "bytes_out": self.bytes_out, "index": self.index, "parts": self.parts,
                 "counters": self.counters}
        return {key: value for key, value in found.items() if value is not None}


@dataclass(slots=True)
class TaskState:
    """One task of a wave: its spec (that of its first attempt; made by the wave's ``spec_for`` when it
    first submits a task without one, dropped once the task is committed), its attempts' records, its
    commit."""

    name: str
    spec: TaskSpec | None
    attempts: list[dict[str, Any]] = field(default_factory=list)  # as the manifest records them
    failures: int = 0  # failures that count toward --retries
    committed: Committed | None = None  # what is kept of the committed attempt's result
    running: int = 0  # attempts in flight
    speculated: bool = False  # a duplicate attempt was launched
    reused: bool = False  # committed by an earlier run of this job (--resume)

    @property
    def committed_attempt(self) -> int | None:
        return next((a["attempt"] for a in self.attempts if a.get("status") == "committed"), None)


@dataclass(slots=True)
class Attempt:
    state: TaskState
    spec: TaskSpec
    entry: dict[str, Any]  # its record in state.attempts
    started: float  # time.monotonic() at submit


class TaskFailedError(Exception):
    """A task failed and the retry policy gives up on it."""

    def __init__(self, state: TaskState, attempt: int, failure: Failure) -> None:
        super().__init__(f"task {state.name} attempt {attempt}: {failure.describe()}")
        self.state, self.attempt, self.failure = state, attempt, failure


class Leftovers:
    """Attempts the driver no longer needs that are still running (speculative losers), across waves;
    and the queue every attempt's future joins as it ends (across waves too: a loser ends in a later
    wave, or after the last).

    They still hold an executor slot until they end; then their output is deleted. ``pump``, while a
    wave runs on an executor that resolves its futures unlocked, is called on the thread that ended an
    attempt, after the future is queued (``Wave._pump``)."""

    def __init__(self, on_end: Callable[[Attempt, Outcome], None]) -> None:
        self.attempts: dict[Future[Outcome], Attempt] = {}
        self._on_end = on_end
        self._ended: queue.SimpleQueue[Future[Outcome]] = queue.SimpleQueue()
        self.pump: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self.attempts)

    def watch(self, future: Future[Outcome]) -> None:
        """Queue ``future`` for ``ended`` once it ends (at once if it has)."""
        future.add_done_callback(self._one_ended)

    def _one_ended(self, future: Future[Outcome]) -> None:
        self._ended.put(future)
        pump = self.pump
        if pump is not None:
            pump()

    def ended(self, timeout: float | None = 0.0) -> list[Future[Outcome]]:
        """The watched futures that ended since the last call, waiting up to ``timeout`` seconds for
        one (0: not at all); each is returned once."""
        found: list[Future[Outcome]] = []
        if timeout != 0 and self._ended.empty():
            try:
                found.append(self._ended.get(timeout=timeout))
            except queue.Empty:
                return found
        while not self._ended.empty():  # one taker at a time (a wave's lock, or no wave): no race
            found.append(self._ended.get_nowait())
        return found

    def add(self, future: Future[Outcome], attempt: Attempt) -> None:
        self.attempts[future] = attempt

    def collect(self, done: Iterable[Future[Outcome]]) -> None:
        for future in done:
            attempt = self.attempts.pop(future, None)
            if attempt is not None:
                outcome = future.result()
                entry = attempt.entry
                entry["stats"] = outcome.stats
                if outcome.ok:
                    entry["status"] = "discarded"
                elif outcome.failure is not None and outcome.failure.kind == CANCELLED:
                    entry["status"] = "cancelled"
                else:
                    entry["status"] = "failed"
                    entry["failure"] = _failure_record(outcome.failure)
                discard(attempt.spec.output)
                self._on_end(attempt, outcome)

    def wait(self, timeout: float | None) -> None:
        """Wait for every leftover attempt to end (at most ``timeout`` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # a wave that raised may have taken some off the queue without settling them
        self.collect([future for future in self.attempts if future.done()])
        while self.attempts:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self.collect(self.ended(left))
            if deadline is not None and time.monotonic() >= deadline:
                return


def discard(url: str) -> None:
    remove_quietly(url, recursive=True)  # a final task's output may be a folder of parts


def _failure_record(failure: Failure | None) -> dict[str, Any]:
    assert failure is not None
    return {"kind": failure.kind, "message": failure.describe(), "traceback": failure.traceback}


class _HeldLock:
    """A lock that notes which thread holds it (``Wave._pump``). A class, not a generator context
    manager (it is taken twice a task), and one that does not point back at its wave: a cycle would
    keep a finished wave's 10,000 task states alive until a full collection."""

    __slots__ = ("holder", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holder: int | None = None

    def __enter__(self) -> None:
        self.lock.acquire()
        self.holder = threading.get_ident()

    def __exit__(self, *exc: object) -> None:
        self.holder = None
        self.lock.release()


class Wave:
    """Runs ``tasks`` to completion on ``executor``; raises ``TaskFailedError`` when one cannot be done.

    ``output_for(state, attempt)`` names an attempt's output; ``on_start(attempt)`` hears of every
    attempt before it is submitted, ``on_end(attempt, outcome, committed, will_retry)`` of every one
    that ends; ``check()`` is called while waiting and raises to
    stop the wave (an interrupt, a lost lease); ``spec_for(state)`` makes the spec of a task that has
    none when it is first submitted; ``after_submitting()`` is called after each round of submissions.

    On an executor that resolves its futures unlocked (``Executor.resolves_futures_unlocked``), an
    ended attempt is settled (committed or retried, the next task submitted) on the thread that ended
    it, one thread at a time under the wave's lock, and the driver's thread wakes only to check for
    signals, stragglers and retries due, or when the wave is done. Waking the driver's thread for
    every attempt, with a task thread waiting for its next submission, cost more of the driver's CPU
    than the bookkeeping itself: the GIL changing hands (10,000 no-op tasks on 2 threads: 0.35 → 0.25
    ms of the driver's CPU a task, output on tmpfs).
    """

    def __init__(
        self,
        executor: Executor,
        tasks: list[TaskState],
        *,
        output_for: Callable[[TaskState, int], str],
        on_start: Callable[[Attempt], None],
        on_end: Callable[[Attempt, Outcome, bool, bool], None],
        retry: RetryPolicy,
        speculation: SpeculationPolicy,
        leftovers: Leftovers,
        check: Callable[[], None] = lambda: None,
        spec_for: Callable[[TaskState], TaskSpec] | None = None,
        after_submitting: Callable[[], None] = lambda: None,
    ) -> None:
        self.executor = executor
        self.tasks = tasks
        self.output_for = output_for
        self.on_start = on_start
        self.on_end = on_end
        self.retry = retry
        self.speculation = speculation
        self.leftovers = leftovers
        self.check = check
        self.spec_for = spec_for
        self.after_submitting = after_submitting
        self.running: dict[Future[Outcome], Attempt] = {}  # in submit order: oldest first
        self.ready: list[TaskState] = [t for t in reversed(tasks) if t.committed is None]
        self.delayed: list[tuple[float, int, TaskState]] = []  # (due time, tie-breaker, task)
        self.left = len(self.ready)  # tasks not committed yet
        self.durations: list[float] = []  # of this wave's committed attempts, sorted
        self.speculative = 0  # duplicate attempts launched
        self.speculative_won = 0
        self._woken = threading.Event()  # set by them: the wave is done or failed, or a retry waits
        self._error: BaseException | None = None  # what settling raised on another thread
        self._over = False  # run() has returned or raised: nothing more is settled or submitted here
        self._holding = _HeldLock()  # the wave's state, when other threads settle attempts too
        self._skipped = False  # an attempt ended on the thread holding the lock, which settles it

    def run(self) -> None:
        pumping = self.executor.resolves_futures_unlocked
        taken: list[Future[Outcome]] = []
        try:
            if pumping:
                self.leftovers.pump = self._pump
            while True:
                with self._holding:
                    self._settle(taken)
                    if not self.left:
                        return
                    self.check()
                    now = time.monotonic()
                    while self.delayed and self.delayed[0][0] <= now:
                        self.ready.append(heapq.heappop(self.delayed)[2])
                    self._submit_ready()
                    if self.speculation.enabled and self.durations and not self.ready:
                        self._speculate(now)
                    self._settle_own()
                    timeout = POLL_SECONDS
                    if self.delayed:
                        timeout = min(timeout, max(0.0, self.delayed[0][0] - time.monotonic()))
                    idle = not self.running and not self.leftovers
                taken = []
                if idle:  # every task waits for its retry
                    time.sleep(timeout)
                elif pumping:
                    self._woken.wait(timeout)
                    self._woken.clear()
                else:
                    taken = self.leftovers.ended(timeout)
        finally:
            self.leftovers.pump = None
            with self._holding:
                self._over = True
                self._let_go()

    def _settle(self, taken: list[Future[Outcome]]) -> None:
        """Settle the attempts that ended (``taken``, and those queued since); raise what settling
        raised on another thread."""
        if self._error is not None:
            raise self._error
        done = [*taken, *self.leftovers.ended()]
        self.leftovers.collect(done)
        for future in done:
            attempt = self.running.pop(future, None)
            if attempt is not None:
                self._ended(attempt, future.result())

    def _settle_own(self) -> None:
        """Before letting go of the wave: settle the attempts that ended on this thread while it held
        it (a cancelled one, a future resolved as it was submitted), and submit in their place."""
        while self._skipped and self.left:
            self._skipped = False
            self._settle([])
            self._submit_ready()

    def _submit_ready(self) -> None:
        # a burst of payloads (a map task over 10,000 small files: 10,000 lists) would else set off a
        # full collection over everything the driver holds before the last task of the burst is sent
        # (35 ms of 70, 20,000 files on 2 workers)
        free = self.executor.max_concurrency - len(self.running) - len(self.leftovers)
        if free > 1 and len(self.ready) > 1:
            with full_collections_held(collect=False):
                for _ in range(min(free, len(self.ready))):
                    self._submit(self.ready.pop(), speculative=False)
        elif free > 0 and self.ready:  # one attempt ended, one goes out (no burst)
            self._submit(self.ready.pop(), speculative=False)
        self.after_submitting()

    def _pump(self) -> None:
        """On the thread that ended an attempt: settle what ended and submit what is ready, once the
        thread holding the wave lets go (if that is this thread, it does so itself before it lets go)."""
        if self._holding.holder == threading.get_ident():
            self._skipped = True
            return
        with self._holding:
            if self._error is not None or self._over:
                return
            try:
                self._settle([])
                self._submit_ready()
                self._settle_own()
            except BaseException as exc:  # the driver's thread raises it
                self._error = exc
        if self._error is not None or not self.left or self.delayed:
            self._woken.set()

    # --- attempts ------------------------------------------------------------------------------
    def _submit(self, state: TaskState, speculative: bool) -> None:
        number = len(state.attempts) + 1
        if state.spec is None:  # submitted for the first time (a committed task is never submitted)
            assert self.spec_for is not None, f"{state.name} has no spec"
            state.spec = self.spec_for(state)
        spec = state.spec if number == 1 else state.spec.for_attempt(number, self.output_for(state, number))
        entry: dict[str, Any] = {"attempt": number, "output": spec.output}
        if speculative:
            entry["speculative"] = True
        state.attempts.append(entry)
        state.running += 1
        attempt = Attempt(state, spec, entry, time.monotonic())
        self.on_start(attempt)
        future = self.executor.submit(spec.to_json())
        self.running[future] = attempt
        self.leftovers.watch(future)

    def _ended(self, attempt: Attempt, outcome: Outcome) -> None:
        state, entry = attempt.state, attempt.entry
        state.running -= 1
        entry["stats"] = outcome.stats
        if outcome.ok:
            if state.committed is None:
                self._commit(attempt, outcome)
            else:  # cannot happen while losers are let go at the commit; kept for safety
                entry["status"] = "discarded"
                discard(attempt.spec.output)
                self.on_end(attempt, outcome, False, False)
            return
        failure = outcome.failure
        assert failure is not None
        entry["status"] = "failed"
        entry["failure"] = _failure_record(failure)
        discard(attempt.spec.output)
        if self.retry.counts(failure):
            state.failures += 1
        if state.running or state.committed is not None:  # another attempt of the task is still going
            self.on_end(attempt, outcome, False, False)
            return
        delay = self.retry.delay(failure, state.failures)
        if delay is None:
            self.on_end(attempt, outcome, False, False)
            raise TaskFailedError(state, attempt.entry["attempt"], failure)
        log.info("retrying %s (attempt %d %s: %s) in %.2f s",
                 state.name, entry["attempt"], failure.kind, failure.describe(), delay)
        heapq.heappush(self.delayed, (time.monotonic() + delay, id(state), state))
        self.on_end(attempt, outcome, False, True)

    def _commit(self, attempt: Attempt, outcome: Outcome) -> None:
        state = attempt.state
        assert outcome.result is not None
        state.committed = Committed.from_result(outcome.result)
        state.spec = None
        attempt.entry["status"] = "committed"
        self.left -= 1
        insort(self.durations, time.monotonic() - attempt.started)
        if attempt.entry.get("speculative"):
            self.speculative_won += 1
        self.on_end(attempt, outcome, True, False)
        for future, other in list(self.running.items()):  # the task's other attempt lost
            if other.state is state:
                self._give_up(future)

    def _give_up(self, future: Future[Outcome]) -> None:
        """Hand a running attempt that is no longer needed to the leftovers, cancelling it if possible."""
        attempt = self.running.pop(future)
        attempt.state.running -= 1
        self.leftovers.add(future, attempt)
        try:
            self.executor.cancel(future)
        except Exception as exc:  # it then runs to its end and is discarded
            log.debug("could not cancel %s attempt %d: %s", attempt.state.name, attempt.entry["attempt"], exc)

    def _let_go(self) -> None:
        """On the way out (done, failed, interrupted): attempts still running become leftovers."""
        for future in list(self.running):
            self._give_up(future)

    # --- speculation ---------------------------------------------------------------------------
    def _speculate(self, now: float) -> None:
        free = self.executor.max_concurrency - len(self.running) - len(self.leftovers)
        if free <= 0 or len(self.tasks) - self.left < self.speculation.share * len(self.tasks):
            return
        threshold = self.speculation.threshold(self.durations)
        stragglers = []
        for attempt in self.running.values():  # oldest first: stop at the first young one
            if now - attempt.started <= threshold:
                break
            if not attempt.state.speculated and attempt.state.committed is None:
                stragglers.append(attempt)
        for attempt in stragglers[:free]:
            attempt.state.speculated = True
            self.speculative += 1
            log.info("%s has run %.1f s (threshold %.1f s): starting a speculative attempt",
                     attempt.state.name, now - attempt.started, threshold)
            self._submit(attempt.state, speculative=True)
