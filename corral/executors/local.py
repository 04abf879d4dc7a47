"""The built-in ``threads`` and ``processes`` executors."""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from corral.errors import UsageError
from corral.executor import (
    INFRASTRUCTURE,
    Executor,
    ExecutorSpec,
    Failure,
    JobSource,
    Outcome,
    outcome_from_result,
)
from corral.executors.relay import ProgressRelay
from corral.hookspecs import hookimpl
from corral.worker import run_task


def _chain(source: Future, convert: Any) -> Future[Outcome]:
    """A future resolving to ``convert(source)`` once ``source`` is done."""
    target: Future[Outcome] = Future()

    def done(f: Future) -> None:
        try:
            target.set_result(convert(f))
        except BaseException as exc:  # never lose an attempt: report it as an infrastructure failure
            target.set_result(Outcome(failure=Failure(INFRASTRUCTURE, f"{type(exc).__name__}: {exc}")))

    source.add_done_callback(done)
    return target


class ThreadExecutor(Executor):
    """Runs tasks on threads of the driver's process (shares memory: ``memory://`` works)."""

    name = "threads"

    def __init__(self, max_concurrency: int) -> None:
        super().__init__(max_concurrency)
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="corral-task")

    def submit(self, payload: dict[str, Any]) -> Future[Outcome]:
        started = time.perf_counter()
        return _chain(
            self._pool.submit(run_task, payload, self.progress),
            lambda f: outcome_from_result(f.result(), {"seconds": round(time.perf_counter() - started, 6)}),
        )

    def cores(self) -> int | None:
        return default_concurrency()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class ProcessExecutor(Executor):
    """Runs tasks in a pool of worker processes, started once and reused (warm) for every task.

    A worker that dies (killed, out of memory) fails its attempt as an infrastructure failure and the
    pool is replaced, so the driver can retry.
    """

    name = "processes"

    def __init__(self, max_concurrency: int) -> None:
        super().__init__(max_concurrency)
        self._lock = threading.Lock()
        self._relay = ProgressRelay(self._forward_progress)  # running tasks' counter deltas, from the workers
        self._pool = self._new_pool()
        self._relay.start()

    def _forward_progress(self, report: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress(report)

    def cores(self) -> int | None:
        return default_concurrency()

    def _new_pool(self) -> ProcessPoolExecutor:
        """A pool of warm workers, started now. While the driver is single-threaded (the CLI, before
        anything else starts), workers are forked from it directly, which takes milliseconds; else
        they come from a fork server, so that no worker is a forked copy of a process with threads
        (whose locks could be held forever in the copy)."""
        initializer, initargs = self._relay.initializer
        if not sys.platform.startswith("linux"):
            context = multiprocessing.get_context("spawn")
        elif threading.active_count() == 1:
            import corral.executors.warm  # noqa: F401 - the workers inherit what the driver imported

            pool = ProcessPoolExecutor(self.max_concurrency, mp_context=multiprocessing.get_context("fork"),
                                       initializer=initializer, initargs=initargs)
            pool.submit(int)  # with "fork", the first submit forks every worker, before the pool's thread
            return pool
        else:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["corral.executors.warm"])
        pool = ProcessPoolExecutor(self.max_concurrency, mp_context=context, initializer=initializer,
                                   initargs=initargs)
        # start the fork server and the workers in the background, while the driver plans the inputs
        threading.Thread(target=self._warm_up, args=(pool,), daemon=True).start()
        return pool

    def _warm_up(self, pool: ProcessPoolExecutor) -> None:
        try:
            for _ in range(self.max_concurrency):
                pool.submit(int)
        except Exception:  # a broken or closed pool shows itself to the next real task
            pass

    def deploy(self, job: JobSource) -> None:
        for url in job.locations:
            if url.startswith("memory://"):
                raise UsageError(f"{url} lives in the driver's memory, which worker processes cannot see: "
                                 "use --backend threads")

    def submit(self, payload: dict[str, Any]) -> Future[Outcome]:
        started = time.perf_counter()
        with self._lock:
            pool = self._pool
            try:
                future = pool.submit(run_task, payload)
            except BrokenProcessPool:
                pool = self._pool = self._new_pool()
                future = pool.submit(run_task, payload)

        def convert(f: Future) -> Outcome:
            seconds = round(time.perf_counter() - started, 6)
            try:
                result = f.result()
            except BrokenProcessPool:
                self._replace(pool)
                return Outcome(
                    failure=Failure(INFRASTRUCTURE, "the worker process died (killed or out of memory)"),
                    stats={"seconds": seconds},
                )
            return outcome_from_result(result, {"seconds": seconds})

        return _chain(future, convert)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                self._pool = self._new_pool()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._relay.close()


def default_concurrency() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@hookimpl
def corral_executors() -> list[ExecutorSpec]:
    return [
        ExecutorSpec(
            "processes",
            lambda settings: ProcessExecutor(settings.max_concurrency or default_concurrency()),
            "a pool of local worker processes, one per core (default)",
        ),
        ExecutorSpec(
            "threads",
            lambda settings: ThreadExecutor(settings.max_concurrency or default_concurrency()),
            "threads of the driver process (for I/O-bound jobs and memory:// data)",
        ),
    ]
