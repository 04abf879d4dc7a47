"""The executor contract: run task payloads somewhere, report each attempt's outcome and measurements.

Executors know nothing about MapReduce: they get a job to deploy once, then opaque JSON-able payloads.
Retries, ordering and commits are the driver's; measuring an attempt (duration, peak memory, cold
start, failure kind) is the executor's.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.settings import Settings
    from corral.sidefiles import SideFile
    from corral.sizing import MemorySizing

#: Failure kinds. Throttling is backpressure and does not count toward the retry limit: an executor
#: that meets throttling retries it itself (with backoff) or reports THROTTLED, which the driver retries
#: without counting until the job's ``--deadline``; a task still throttled then fails the job.
USER_ERROR = "user error"
INPUT_ERROR = "input error"
TIMEOUT = "timed out"
OUT_OF_MEMORY = "out of memory"
THROTTLED = "throttled"
INFRASTRUCTURE = "infrastructure"
#: A disk the attempt wrote to is full (its output's, or its spill folder): the message names the path.
#: Retried once (another worker may have room), never more.
DISK_FULL = "disk full"
#: The driver stopped the attempt itself (a speculative attempt that lost, an interrupted run): not a
#: failure of the task, never retried or counted.
CANCELLED = "cancelled"


@dataclass
class Failure:
    kind: str
    message: str
    traceback: str | None = None
    limit: float | None = None  # the memory limit (MB) or timeout (s) that was hit
    peak: float | None = None  # peak memory (MB) when it was hit
    #: what the task was reading when it failed: file, byte range, line, record (or the key it reduced)
    input: dict[str, Any] | None = None

    def describe(self) -> str:
        """One line: ``ValueError: bad record`` or ``ran out of memory at the 256 MB limit``."""
        if self.kind == OUT_OF_MEMORY and self.limit:
            return f"ran out of memory at the {self.limit:g} MB limit"
        if self.kind == TIMEOUT and self.limit:
            return f"timed out after the {self.limit:g} s limit"
        return self.message

    def where(self) -> str | None:
        """``while reading FILE bytes S to E, line N: 'record'`` (or ``while reducing key 'k'``), if known."""
        from corral.failure_context import describe

        return describe(self.input)


@dataclass
class Outcome:
    """What one attempt came to: the task's result, or a failure; plus what the executor measured."""

    result: dict[str, Any] | None = None
    failure: Failure | None = None
    stats: dict[str, Any] = field(default_factory=dict)  # seconds, peak_memory_mb, cold_start, billed_ms…

    @property
    def ok(self) -> bool:
        return self.failure is None


#: What ``corral.worker.run_task`` measures and reports about an attempt, copied into its stats (the
#: manifest's per-attempt figures, which the report and the advice read).
WORKER_STATS = ("seconds", "peak_memory_mb", "cpu_seconds", "rss_mb", "worker", "records_in", "keys_in",
                "records_out", "bytes_in", "bytes_out", "side_file_downloads")


#: Attempts' memory figures (MB, to 0.1) as one float object a value: a driver holds every attempt's
#: stats to the end of the run, and its attempts repeat a few values (10,000 tasks: 0.6 MB less).
_FIGURES: dict[float, float] = {}
_MAX_FIGURES = 10_000


def outcome_from_result(result: dict[str, Any], stats: dict[str, Any] | None = None) -> Outcome:
    """Turn ``corral.worker.run_task``'s answer into an Outcome (every executor receives one)."""
    stats = dict(stats or {})
    for key in WORKER_STATS:
        if result.get(key) is not None:
            stats.setdefault(key, result[key])
    if isinstance(stats.get("worker"), str):  # a few workers run many tasks: one string each
        stats["worker"] = sys.intern(stats["worker"])
    for key in ("peak_memory_mb", "rss_mb"):
        value = stats.get(key)
        if type(value) is float and (value in _FIGURES or len(_FIGURES) < _MAX_FIGURES):
            stats[key] = _FIGURES.setdefault(value, value)
    if result.get("ok"):
        return Outcome(result=result, stats=stats)
    error = result.get("error") or {}
    # "input": bad input data (the message names the file and offset); "infrastructure": the worker
    # could not run the task at all (e.g. a remote handler could not read its payload)
    kinds = {"input": INPUT_ERROR, "cancelled": CANCELLED, "infrastructure": INFRASTRUCTURE, "disk full": DISK_FULL}
    kind = kinds.get(str(error.get("kind")), USER_ERROR)
    message = f"{error.get('type', 'Error')}: {error.get('message', '')}"
    if kind != USER_ERROR:
        message = error.get("message", "")
    found = error.get("input")
    return Outcome(failure=Failure(kind, message, error.get("traceback"), input=found if isinstance(found, dict)
                                   else None), stats=stats)


@dataclass(frozen=True)
class JobSource:
    """What a remote executor deploys: the job module and class, its third-party requirements, and the
    locations (input, output and working URLs) its tasks read and write, e.g. for mounting them.

    ``inputs``, ``output`` and ``work`` say what each location is for, e.g. to grant a cloud function
    exactly what it needs: tasks only *read* the inputs, and read and write below ``work`` (the working
    root shared by runs; each run uses a folder under it). Tasks never write ``output``: the driver
    moves committed results there itself.
    """

    ref: dict[str, Any]  # corral.worker.job_ref(...)
    requirements: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    output: str | None = None
    work: str | None = None
    #: the job's side files (``corral.sidefiles``): ``build_package`` puts the small ones in the package;
    #: a remote executor's ``deploy`` uploads the others (``corral.upload_side_files``).
    files: tuple[SideFile, ...] = ()


class Executor(ABC):
    """Runs task payloads with at most ``max_concurrency`` at once."""

    name: str = ""
    #: Set by the driver before the first ``submit``: an executor whose tasks report progress while
    #: they run (``corral.worker.run_task``'s ``progress`` argument) passes each report to it, as it is,
    #: from any thread. Executors that cannot (remote functions) ignore it.
    progress: Callable[[dict[str, Any]], None] | None = None
    #: True if the executor holds none of its locks while it resolves a future, so that a callback
    #: of the future may call ``submit`` and ``cancel``: the driver then settles an ended attempt and
    #: submits the next on the thread that resolved it (``corral.wave.Wave``), not on its own.
    resolves_futures_unlocked: bool = False

    def __init__(self, max_concurrency: int) -> None:
        self.max_concurrency = max_concurrency

    def deploy(self, job: JobSource) -> None:  # noqa: B027 - optional for local executors
        """Called once before any task (and by ``corral deploy``): make ``job`` runnable where tasks run."""

    def undeploy(self, job: JobSource) -> None:  # noqa: B027 - optional: by default nothing to remove
        """Called by ``corral undeploy``: remove what ``deploy`` created for ``job`` (functions, roles…),
        and nothing else. Removing what is already gone is not an error."""

    @abstractmethod
    def submit(self, payload: dict[str, Any]) -> Future[Outcome]:
        """Start one attempt. The future never raises: failures come back as ``Outcome.failure``."""

    def cancel(self, attempt: Future[Outcome]) -> None:  # noqa: B027 - optional: by default attempts run on
        """Stop the attempt behind ``attempt`` (a future ``submit`` returned) if this executor can: a
        speculative duplicate that lost, say. Its future then resolves with a ``CANCELLED`` failure, or,
        where the attempt cannot be stopped, with whatever it came to (the driver discards it).
        Default: nothing; the attempt runs to its end."""

    def cancel_all(self) -> None:  # noqa: B027 - optional
        """The run was interrupted (Ctrl-C, SIGTERM): stop every running attempt now (terminate local
        workers, stop this run's containers, abandon remote invocations), so that ``close`` returns
        promptly and nothing of the run keeps running. Default: nothing."""

    def cores(self) -> int | None:
        """Local executors: the cores of this machine their workers share, against which the workers'
        CPU time is the run's CPU utilisation. None (the default) where tasks run elsewhere."""
        return None

    def sizing(self) -> MemorySizing | None:
        """Remote executors: the platform's memory settings and prices (``corral.MemorySizing``), for
        the cost so far and the memory right-sizing advice. None (the default) where there are none."""
        return None

    def report(self) -> dict[str, Any]:
        """Figures about the whole run that only the executor knows (e.g. billed GB-seconds and an
        estimated cost), called once after the last task. The driver stores the JSON-able dict in the
        manifest under ``report``; its ``summary`` entry, a line of text if present, is printed at
        the end of the run. Default: nothing to report."""
        return {}

    def close(self) -> None:  # noqa: B027
        """Release workers, connections, emulators."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        # an interrupt (Ctrl-C, a signal turned into SystemExit) leaving the block stops the attempts
        # first: close() alone would wait for them to finish
        if kind is not None and not issubclass(kind, Exception):
            self.cancel_all()
        self.close()


def default_concurrency() -> int:
    """The CPUs this process may run on (its affinity, e.g. a container's cpuset): local backends run one
    task per CPU unless ``--max-concurrency`` says otherwise."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class ExecutorSpec:
    """An executor a plugin provides: ``create(settings)`` builds it for one run."""

    name: str
    create: Callable[[Settings], Executor]
    description: str = ""
