"""The built-in ``threads`` and ``processes`` executors.

``processes`` is a pool of warm worker processes, each with a pipe of its own to the driver, and one
thread of the driver that hands attempts to idle workers and reads their results. A worker that dies
(killed, ``os._exit``, the kernel's OOM killer) fails only the attempt it ran, saying how it died, and
is replaced; a running attempt is cancelled by ending its worker. Workers die with the driver.

Why not ``concurrent.futures.ProcessPoolExecutor``: one dead worker breaks the whole pool, failing
every running task; it cannot stop one running task; and it does not say how a worker died. pebble's
``ProcessPool`` (evaluated) reports each task's dead worker with its exit code, replaces the worker and
cancels running tasks, but its workers share one pipe guarded by process-shared locks: a worker killed
while holding one (the OOM killer does not choose its moment) stalls the others for the lock's 60 s
timeout; a worker dying while no task runs breaks the pool; and importing it costs 45-100 ms, a third
of a tiny job. A pipe per worker confines a death to that worker's attempt.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.util
import os
import queue
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection, wait
from typing import Any

from corral import speedups
from corral.cancellation import cancellable
from corral.errors import UsageError
from corral.executor import (
    CANCELLED,
    INFRASTRUCTURE,
    OUT_OF_MEMORY,
    Executor,
    ExecutorSpec,
    Failure,
    JobSource,
    Outcome,
    default_concurrency,
    outcome_from_result,
)
from corral.executors.oom import OomWatch
from corral.hookspecs import hookimpl
from corral.worker import run_task

log = logging.getLogger("corral")

#: How long ``close`` waits for a worker to leave after its pipe closed, before killing it.
_STOP_GRACE = 5.0
#: How long ``close`` waits after ``cancel_all`` for task threads to reach their next batch.
_THREAD_GRACE = 2.0


def _cancelled_outcome(seconds: float = 0.0) -> Outcome:
    return Outcome(failure=Failure(CANCELLED, "the attempt was cancelled"), stats={"seconds": round(seconds, 6)})


# --- threads -------------------------------------------------------------------------------------


class _ThreadAttempt:
    __slots__ = ("cancelled", "future", "payload", "running")

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.future: Future[Outcome] = Future()
        self.cancelled = False  # the task stops at its next batch (its flag for corral.cancellation)
        self.running = False

    def is_set(self) -> bool:
        return self.cancelled


class ThreadExecutor(Executor):
    """Runs tasks on threads of the driver's process (shares memory: ``memory://`` works).

    Threads cannot be killed: a cancelled attempt stops at its next batch of input or output
    (``corral.cancellation``); a task inside one long call of the user's code finishes that call first.
    The threads are daemons, so that an interrupted run can exit without waiting for such a call.
    """

    name = "threads"
    resolves_futures_unlocked = True  # the driver's bookkeeping then runs on the task threads

    def __init__(self, max_concurrency: int) -> None:
        super().__init__(max_concurrency)
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_ThreadAttempt | None] = queue.SimpleQueue()
        self._attempts: dict[Future[Outcome], _ThreadAttempt] = {}  # submitted and not resolved
        self._stopping = False
        self._cancelled = False
        self._threads = [threading.Thread(target=self._work, name=f"corral-task-{n}", daemon=True)
                         for n in range(max_concurrency)]
        for thread in self._threads:
            thread.start()

    def submit(self, payload: dict[str, Any]) -> Future[Outcome]:
        attempt = _ThreadAttempt(payload)
        with self._lock:
            if self._stopping:
                attempt.future.set_result(_cancelled_outcome())
                return attempt.future
            self._attempts[attempt.future] = attempt
        self._queue.put(attempt)
        return attempt.future

    def _work(self) -> None:
        while (attempt := self._queue.get()) is not None:
            with self._lock:
                if attempt.cancelled:  # cancelled while it waited: resolved already
                    continue
                attempt.running = True
            started = time.perf_counter()
            try:
                with cancellable(attempt):
                    result = run_task(attempt.payload, self.progress, shared_process=True)
                outcome = outcome_from_result(result, {"seconds": round(time.perf_counter() - started, 6)})
            except BaseException as exc:  # never lose an attempt: report it as an infrastructure failure
                outcome = Outcome(failure=Failure(INFRASTRUCTURE, f"{type(exc).__name__}: {exc}"))
            with self._lock:
                self._attempts.pop(attempt.future, None)
            attempt.future.set_result(outcome)

    def cancel(self, attempt: Future[Outcome]) -> None:
        with self._lock:
            entry = self._attempts.get(attempt)
            if entry is None or entry.cancelled:
                return
            entry.cancelled = True
            waiting = not entry.running
            if waiting:
                del self._attempts[attempt]
        if waiting:
            attempt.set_result(_cancelled_outcome())

    def cancel_all(self) -> None:
        with self._lock:
            self._stopping = self._cancelled = True
            futures = list(self._attempts)
        for future in futures:
            self.cancel(future)

    def cores(self) -> int | None:
        return default_concurrency()

    def close(self) -> None:
        """Let running attempts finish (queued ones are cancelled); after ``cancel_all``, wait only a
        moment for the running ones to reach their next batch."""
        with self._lock:
            self._stopping = True
            queued = [f for f, a in self._attempts.items() if not a.running]
        for future in queued:
            self.cancel(future)
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + _THREAD_GRACE if self._cancelled else None
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


# --- processes -----------------------------------------------------------------------------------


class _Attempt:
    __slots__ = ("cancelled", "future", "oom_kills", "payload", "started")

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.future: Future[Outcome] = Future()
        self.started = 0.0
        self.cancelled = False
        self.oom_kills: int | None = None


class _Worker:
    __slots__ = ("attempt", "conn", "process")

    def __init__(self, process: Any, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.attempt: _Attempt | None = None


class ProcessExecutor(Executor):
    """Runs tasks in a pool of worker processes, started once and reused (warm) for every task."""

    name = "processes"
    resolves_futures_unlocked = True  # the serving thread then settles attempts, not the driver's

    def __init__(self, max_concurrency: int) -> None:
        super().__init__(max_concurrency)
        self._lock = threading.Lock()
        self._queue: deque[_Attempt] = deque()  # submitted, waiting for an idle worker
        self._attempts: dict[Future[Outcome], _Attempt] = {}  # submitted and not resolved
        self._workers: list[_Worker] = []
        self._stopping = False  # no more replacements (cancel_all, close)
        self._done = False  # the serving thread is to end
        self._closed = False
        self._oom = OomWatch()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)  # a full pipe wakes the thread already
        self._later = self._replacement_context()
        if sys.platform.startswith("linux") and threading.active_count() == 1:
            # While the driver is single-threaded (the CLI, before anything else starts), workers are
            # forked from it directly, which takes milliseconds, before the serving thread starts.
            import corral.executors.warm  # noqa: F401 - the workers inherit what the driver imported

            context = multiprocessing.get_context("fork")
            for _ in range(max_concurrency):
                self._workers.append(self._start_worker(context))
        # else the serving thread starts them from the fork server while the driver plans the inputs
        self._thread = threading.Thread(target=self._serve, name="corral-workers", daemon=True)
        self._thread.start()
        _open_executors.add(self)

    @staticmethod
    def _replacement_context() -> Any:
        """How workers are started once the driver has threads: from a fork server (started on first
        use, with corral imported), so that no worker is a forked copy of a process with threads
        (whose locks could be held forever in the copy); spawned where fork is not safe (macOS)."""
        if not sys.platform.startswith("linux"):
            return multiprocessing.get_context("spawn")
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["corral.executors.warm"])
        return context

    def _start_worker(self, context: Any) -> _Worker:
        ours, theirs = context.Pipe()
        forked = context.get_start_method() == "fork"
        # a forked worker inherits the driver's end of every pipe: it closes them, so that a pipe the
        # driver closes reads as closed in its worker (how ``close`` tells workers to leave)
        inherited = [ours.fileno(), self._wake_read, self._wake_write, *(w.conn.fileno() for w in self._workers)]
        if not forked:
            inherited = []
        # a worker from the fork server would have the environment of when the server started (the
        # first run of this process), not the driver's now: it gets the driver's, as a forked one does
        environ = None if forked else dict(os.environ)
        process = context.Process(
            target=_worker_main, args=(theirs, os.getpid() if forked else None, inherited, environ),
            name="corral-worker",
        )
        process.start()
        theirs.close()
        return _Worker(process, ours)

    def cores(self) -> int | None:
        return default_concurrency()

    def deploy(self, job: JobSource) -> None:
        for url in job.locations:
            if url.startswith("memory://"):
                raise UsageError(f"{url} lives in the driver's memory, which worker processes cannot see: "
                                 "use --backend threads")

    # --- the driver's side ----------------------------------------------------------------------
    def submit(self, payload: dict[str, Any]) -> Future[Outcome]:
        attempt = _Attempt(payload)
        with self._lock:
            if self._stopping:
                attempt.future.set_result(_cancelled_outcome())
                return attempt.future
            self._attempts[attempt.future] = attempt
            self._queue.append(attempt)
            self._dispatch()
            missing = self._queue and len(self._workers) < self.max_concurrency
        if missing:  # workers failed to start before: the serving thread tries again
            self._wake()
        return attempt.future

    def cancel(self, attempt: Future[Outcome]) -> None:
        """A queued attempt is dropped; a running one ends with its worker (replaced at once)."""
        with self._lock:
            entry = self._attempts.get(attempt)
            if entry is None or entry.cancelled:
                return
            entry.cancelled = True
            if entry in self._queue:
                self._queue.remove(entry)
                del self._attempts[attempt]
            else:
                worker = next((w for w in self._workers if w.attempt is entry), None)
                if worker is not None:
                    _kill(worker.process)
                return
        attempt.set_result(_cancelled_outcome())

    def cancel_all(self) -> None:
        """Kill every worker now; every attempt not finished resolves as cancelled."""
        with self._lock:
            self._stopping = True
            queued = list(self._queue)
            self._queue.clear()
            for attempt in queued:
                del self._attempts[attempt.future]
            for worker in self._workers:
                if worker.attempt is not None:
                    worker.attempt.cancelled = True
                _kill(worker.process)
        for attempt in queued:
            attempt.future.set_result(_cancelled_outcome())
        self._wake()

    def close(self) -> None:
        """Let running attempts finish (queued ones are cancelled), then stop the workers. Closing twice
        is closing once."""
        with self._lock:
            if self._closed:
                return
            self._closed = self._stopping = True
            queued = list(self._queue)
            self._queue.clear()
            for attempt in queued:
                del self._attempts[attempt.future]
            running = [a.future for a in self._attempts.values()]
        for attempt in queued:
            attempt.future.set_result(_cancelled_outcome())
        for future in running:
            future.result()
        with self._lock:
            self._done = True
        self._wake()
        self._thread.join()
        for worker in self._workers:
            worker.conn.close()  # the worker reads the end of its pipe and leaves
        deadline = time.monotonic() + _STOP_GRACE
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                _kill(worker.process)
                worker.process.join()
        self._workers.clear()
        _open_executors.discard(self)
        os.close(self._wake_read)
        os.close(self._wake_write)
        self._oom.close()

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"x")
        except OSError:  # closed: the serving thread is gone already
            pass

    def _dispatch(self) -> None:
        """Hand queued attempts to idle workers (with the lock held)."""
        for worker in self._workers:
            if not self._queue:
                return
            if worker.attempt is not None or worker.process.exitcode is not None:
                continue
            attempt = self._queue.popleft()
            attempt.oom_kills = self._oom.count()
            attempt.started = time.perf_counter()
            try:
                worker.conn.send(attempt.payload)
            except (OSError, ValueError):  # the worker has just died: the attempt waits for another
                self._queue.appendleft(attempt)
                continue
            worker.attempt = attempt

    # --- the serving thread ---------------------------------------------------------------------
    def _serve(self) -> None:
        """Start missing workers, read results, notice deaths, until ``close``."""
        while True:
            self._start_missing()
            with self._lock:
                if self._done:
                    return
                waiting: dict[Any, tuple[_Worker, bool]] = {}
                for worker in self._workers:
                    waiting[worker.conn] = (worker, True)
                    waiting[worker.process.sentinel] = (worker, False)
            for ready in wait([*waiting, self._wake_read]):
                if ready == self._wake_read:
                    os.read(self._wake_read, 512)
                    continue
                worker, is_result = waiting[ready]
                if is_result:
                    self._receive(worker)
                else:
                    self._bury(worker)

    def _start_missing(self) -> None:
        with self._lock:
            missing = 0 if self._stopping else self.max_concurrency - len(self._workers)
        for _ in range(missing):
            try:
                worker = self._start_worker(self._later)
            except Exception as exc:  # no worker can start: fail what waits, rather than hang
                self._fail_queued(f"cannot start a worker process: {type(exc).__name__}: {exc}")
                return
            with self._lock:
                self._workers.append(worker)
                self._dispatch()

    def _fail_queued(self, message: str) -> None:
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
            for attempt in queued:
                del self._attempts[attempt.future]
        for attempt in queued:
            attempt.future.set_result(Outcome(failure=Failure(INFRASTRUCTURE, message)))

    def _receive(self, worker: _Worker) -> None:
        try:
            result = worker.conn.recv()
        except (EOFError, OSError):  # the worker died: its sentinel says how
            worker.process.join(_STOP_GRACE)
            self._bury(worker)
            return
        except Exception as exc:  # an answer that does not unpickle: the attempt failed, the worker lives
            result = {"ok": False, "error": {"type": type(exc).__name__, "message": f"unreadable result: {exc}",
                                             "kind": "user"}}
        if isinstance(result, tuple):  # ("progress", report): the running attempt's counter deltas
            if self.progress is not None:
                try:
                    self.progress(result[1])
                except Exception:  # progress is a nicety: never the reason attempts stop being served
                    log.exception("progress report failed")
            return
        with self._lock:
            attempt, worker.attempt = worker.attempt, None
            if attempt is not None:
                self._attempts.pop(attempt.future, None)
            self._dispatch()
        if attempt is not None:
            seconds = round(time.perf_counter() - attempt.started, 6)
            attempt.future.set_result(outcome_from_result(result, {"seconds": seconds}))

    def _bury(self, worker: _Worker) -> None:
        """A worker ended: fail (or cancel) its attempt, drop it; ``_start_missing`` replaces it."""
        worker.process.join(_STOP_GRACE)
        with self._lock:
            if worker not in self._workers:
                return
            self._workers.remove(worker)
            attempt, worker.attempt = worker.attempt, None
            if attempt is not None:
                self._attempts.pop(attempt.future, None)
        worker.conn.close()
        if attempt is None:
            return
        seconds = time.perf_counter() - attempt.started
        if attempt.cancelled:
            attempt.future.set_result(_cancelled_outcome(seconds))
            return
        failure = self._death(worker.process, attempt)
        attempt.future.set_result(Outcome(failure=failure, stats={"seconds": round(seconds, 6)}))

    def _death(self, process: Any, attempt: _Attempt) -> Failure:
        """How a worker died, in the words the user reads: exit code, signal, or the OOM killer."""
        code = process.exitcode
        who = f"worker process {process.pid}"
        if code is not None and code < 0 and -code == signal.SIGKILL and self._oom.killed(process.pid,
                                                                                         attempt.oom_kills):
            limit = self._oom.limit_mb()
            where = f" at the {limit:g} MB limit of its memory cgroup" if limit else ""
            return Failure(OUT_OF_MEMORY, f"{who} killed: out of memory (the kernel's OOM killer{where})")
        if code is not None and code < 0:
            try:
                name = f" ({signal.Signals(-code).name})"
            except ValueError:
                name = ""
            return Failure(INFRASTRUCTURE, f"{who} killed by signal {-code}{name}")
        return Failure(INFRASTRUCTURE, f"{who} exited with code {code}")


#: Executors not closed yet. At exit (a driver that never reached ``close``) their workers are killed,
#: before multiprocessing's own exit handler would wait for them forever (atexit runs handlers last
#: registered first, and multiprocessing.util registered its handler when it was imported, above).
_open_executors: weakref.WeakSet[ProcessExecutor] = weakref.WeakSet()


@atexit.register
def _kill_leftover_workers() -> None:
    for executor in list(_open_executors):
        for worker in list(executor._workers):
            _kill(worker.process)


def _kill(process: Any) -> None:
    try:
        process.kill()
    except (OSError, ValueError, AttributeError):  # gone already
        pass


# --- in the worker process -----------------------------------------------------------------------


def _worker_main(conn: Connection, parent: int | None, inherited: list[int],
                 environ: dict[str, str] | None = None) -> None:
    """A worker's life: run each payload the driver sends, answer its result; leave when the pipe
    closes. Ctrl-C is the driver's to handle (it cancels the attempts): the worker ignores SIGINT, and
    SIGTERM ends it (not a handler the driver installed before the fork). ``environ``, when given, is
    the driver's environment, which replaces the one the worker came with."""
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for fd in inherited:
        try:
            os.close(fd)
        except OSError:
            pass
    _die_with_parent(parent)
    sending = threading.Lock()  # the task's progress reports go out from another thread

    def progress(report: dict[str, Any]) -> None:
        with sending:
            conn.send(("progress", report))

    while True:
        try:
            payload = conn.recv()
        except (EOFError, OSError):
            return
        result = run_task(payload, progress)
        with sending:
            conn.send(result)


def _die_with_parent(parent: int | None) -> None:
    """End this worker when the process that started it ends (the driver, or the fork server, which
    ends with the driver), so a killed driver leaves no worker running or holding its stdout open.

    Linux: the kernel's parent-death signal. Elsewhere: a thread that watches the parent's pid.
    """
    if sys.platform.startswith("linux") and _parent_death_signal(signal.SIGKILL):
        if parent is not None and os.getppid() != parent:  # it died before the signal was set
            os._exit(1)
        return
    expected = os.getppid()
    threading.Thread(target=_watch_parent, args=(expected,), name="corral-parent-watch", daemon=True).start()


def _parent_death_signal(signum: int) -> bool:
    """Linux's PR_SET_PDEATHSIG: in C where ``corral._speedups`` is built, else through ctypes (whose
    import costs each worker ~6 ms as it starts). Whether it was set."""
    if speedups.die_with_parent is not None:
        try:
            speedups.die_with_parent(signum)
            return True
        except OSError:
            return False
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl(1, signum, 0, 0, 0) == 0  # PR_SET_PDEATHSIG


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)




def _spec(name: str, create: Callable[[int], Executor], description: str) -> ExecutorSpec:
    return ExecutorSpec(name, lambda settings: create(settings.max_concurrency or default_concurrency()), description)


#: The executors that run tasks on this machine's cores (``--backend``).
LOCAL_BACKENDS = ("processes", "threads")


@hookimpl
def corral_executors() -> list[ExecutorSpec]:
    return [
        _spec("processes", ProcessExecutor, "a pool of local worker processes, one per core (default)"),
        _spec("threads", ThreadExecutor, "threads of the driver process (for I/O-bound jobs and memory:// data)"),
    ]
