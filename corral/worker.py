"""``run_task(payload) -> result``: the single entry every executor and remote handler calls.

Both sides are plain JSON-able dicts (the payload is a ``corral.tasks`` spec's wire form). A task
never raises: a failure comes back as ``{"ok": False, "error": {"type", "message", "traceback"}}``
with the user's traceback, so that every backend (a thread, a process, a Lambda invoke, an HTTP
call) reports it the same way.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import resource
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.cancellation import TaskCancelled
from corral.collector import full_collections_held
from corral.errors import InputError, UsageError
from corral.fs import disk_full
from corral.job import Job
from corral.sidefiles import local_paths
from corral.split import Split

if TYPE_CHECKING:  # corral.tasks is imported when a task runs (a worker starts sooner)
    from corral.tasks import MapSpec, ReduceSpec

_CORRAL_DIR = str(Path(__file__).resolve().parent)
_job_classes: dict[tuple[str, str, str | None], type[Job]] = {}
_tasks_lock = threading.Lock()
_tasks_running = 0  # tasks of this process in run_task (the threads executor runs several)


def job_ref(job_class: type[Job]) -> dict[str, Any]:
    """How a worker finds ``job_class``: its module name, class name and (if any) source file."""
    module = sys.modules[job_class.__module__]
    path = getattr(module, "__file__", None)
    name = job_class.__module__
    if name == "__main__":
        if path is None:
            raise UsageError("a job defined in an interactive session cannot be shipped to workers")
        name = Path(path).stem
    if "<locals>" in job_class.__qualname__:
        raise UsageError(
            f"job class {job_class.__qualname__} is defined inside a function: workers cannot import it "
            "(define it at the top level of a module)"
        )
    return {"module": name, "class": job_class.__qualname__, "path": os.path.abspath(path) if path else None}


def load_job_class(ref: dict[str, Any]) -> type[Job]:
    """Import the job class ``ref`` names (cached: warm workers import it once)."""
    key = (ref["module"], ref["class"], ref.get("path"))
    cached = _job_classes.get(key)
    if cached is not None:
        return cached
    path = ref.get("path")
    if path and os.path.exists(path):
        module = load_module_from_path(path, ref["module"])
    else:
        module = importlib.import_module(ref["module"])
    job_class: Any = module
    for part in ref["class"].split("."):
        job_class = getattr(job_class, part)
    _job_classes[key] = job_class
    return job_class


def load_module_from_path(path: str, name: str) -> Any:
    """Import the file ``path`` as module ``name``, with its folder importable (for its local imports)."""
    existing = sys.modules.get(name)
    if existing is not None and os.path.abspath(getattr(existing, "__file__", "") or "") == path:
        return existing
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def run_task(
    payload: dict[str, Any], progress: ProgressSink | None = None, *, shared_process: bool = False
) -> dict[str, Any]:
    """Run one task attempt described by ``payload``; return its result (never raises).

    ``shared_process``: this process is the driver's too (the threads executor). Its high-water mark
    is then never reset (which would hide the driver's own peak from whoever measures the process),
    and the attempt reports the process's peak.

    With ``progress`` (or a sink installed in this process by ``report_progress_to``), what the task
    counts is reported while it runs, every ``PROGRESS_INTERVAL`` seconds: ``{"task", "attempt",
    "counters": [[group, name, amount added], …], "cpu_seconds": added}``.
    """
    # on a thread of the driver's process, the attempt's CPU is its thread's from here: setting up
    # counts as its own, not as the driver's (the same clock as _thread_cpu_clock's)
    thread_started = time.thread_time() if shared_process else None
    from corral.tasks import MapSpec, execute_map, execute_reduce, spec_from_json

    started = time.perf_counter()
    sink = progress or _default_sink
    key = (payload.get("task"), payload.get("attempt"))
    downloads = 0
    spec: MapSpec | ReduceSpec | None = None
    with _no_full_collections(shared_process) as (cpu_clock, alone):
        # else another task's memory counts in, or the driver's peak would be lost (threads)
        own_peak = alone and not shared_process and reset_peak_memory()
        cpu_started = cpu_clock() if thread_started is None else thread_started
        try:
            spec = spec_from_json(payload)
            job = load_job_class(spec.job)(spec.args)
            if spec.files:
                job._side_files, downloads = local_paths(list(spec.files))
            step = job.steps()[spec.stage]
            if sink is not None:
                _reporter.watch(key, job, cpu_clock, sink)
            result = execute_map(spec, job, step) if isinstance(spec, MapSpec) else execute_reduce(spec, job, step)
            result.update(ok=True, counters=[[group, name, amount] for (group, name), amount in job._counters.items()])
        except Exception as exc:
            result = {"ok": False, "error": _full_disk_error(exc) if disk_full(exc) else {
                "type": type(exc).__name__,
                "message": str(exc),
                "traceback": user_traceback(exc),
                "kind": _error_kind(exc),
            }}
            found = getattr(exc, "corral_input", None)  # what the task was reading (corral.failure_context)
            if found:
                result["error"]["input"] = found
        finally:
            if sink is not None:
                _reporter.forget(key)
    # the attempt's CPU includes what ends it: a full collection held back for it, and reading its
    # memory (syscalls made for it, on its thread; on the threads backend they were counted as the
    # driver's, 10-25 us of its 200 a no-op task)
    peak, resident = peak_memory_mb(since_reset=own_peak), rss_mb()
    cpu_seconds = cpu_clock() - cpu_started
    result.update(
        task=payload.get("task"),
        attempt=payload.get("attempt"),
        seconds=round(time.perf_counter() - started, 6),
        cpu_seconds=round(cpu_seconds, 6),
        peak_memory_mb=peak,
        rss_mb=resident,
        worker=worker_id(),
        bytes_in=_bytes_in(payload, spec),
    )
    if downloads:
        result["side_file_downloads"] = downloads
    if "bytes_out" not in result and result.get("index"):  # a map task's shuffle object: its partitions
        result["bytes_out"] = sum(length for _, length in result["index"])
    return result


def _bytes_in(payload: dict[str, Any], spec: MapSpec | ReduceSpec | None = None) -> int:
    """The bytes a task reads: its splits (map) or its partition of every map output (reduce). The spec
    read from the payload, when there is one, gives its splits (10,000 of them are not made twice)."""
    splits = getattr(spec, "splits", None)
    if splits is not None:
        return sum(split.end - split.start for split in splits)
    if payload.get("kind") == "map":
        return sum(split.end - split.start for split in map(Split.from_json, payload.get("splits", ())))
    return sum(int(source[2]) for source in payload.get("sources", ()))


def _full_disk_error(exc: Exception) -> dict[str, Any]:
    """A full disk: one line naming the path written (``corral.fs.writing``); the traceback only when
    the place is not known (the user's own code wrote there)."""
    where = getattr(exc, "corral_writing", None)
    if where:
        return {"type": type(exc).__name__, "kind": "disk full", "traceback": None,
                "message": f"the disk is full: no space left on device writing {where}"}
    return {"type": type(exc).__name__, "kind": "disk full", "traceback": user_traceback(exc),
            "message": f"the disk is full: {exc}"}


def _error_kind(exc: Exception) -> str:
    if isinstance(exc, TaskCancelled):
        return "cancelled"
    return "input" if isinstance(exc, InputError) else "user"


@contextmanager
def _no_full_collections(shared_process: bool = False) -> Iterator[tuple[Callable[[], float], bool]]:
    """Hold back the garbage collector's full collections while a task runs (``corral.collector``); yield
    the task's CPU clock and whether the task runs alone in this process.

    A task's buffers are millions of long-lived objects (a list per key); each full collection walks
    all of them again, which cost map loops 10-15%. What reaches the oldest generation waits for the
    end of the last task running in the process (the threads executor runs several).

    The CPU clock is the process's when the task runs alone in it (a worker process, a container:
    I/O threads count too), else the task's thread's: the threads executor runs several at once, and
    its process is the driver's (``shared_process``), whose CPU is not the task's.
    """
    global _tasks_running
    with full_collections_held():
        with _tasks_lock:
            _tasks_running += 1
            alone = _tasks_running == 1
        try:
            yield (time.process_time if alone and not shared_process else _thread_cpu_clock()), alone
        finally:
            with _tasks_lock:
                _tasks_running -= 1


def _thread_cpu_clock() -> Callable[[], float]:
    """The calling thread's CPU time, readable from other threads too (the progress reporter)."""
    if hasattr(time, "pthread_getcpuclockid"):
        clock = time.pthread_getcpuclockid(threading.get_ident())
        return lambda: time.clock_gettime(clock)
    return time.thread_time  # only right on the task's own thread: the reporter then sends no CPU


# --- progress of running tasks ----------------------------------------------------------------------
ProgressSink = Callable[[dict[str, Any]], None]
#: Seconds between two progress reports of a running task (the live page wants one every 2 s at most).
PROGRESS_INTERVAL = 1.0
_default_sink: ProgressSink | None = None


def report_progress_to(sink: ProgressSink | None) -> None:
    """Make every task this process runs report its progress to ``sink`` (a worker pool's initializer)."""
    global _default_sink
    _default_sink = sink


class _Reporter:
    """The tasks of this process that report progress, and the thread that sends their deltas.

    Counting stays what it was (``increment_counter`` adds to a Counter): every interval, the thread
    copies each task's counters and sends what changed since its last report.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[tuple[Any, Any], list[Any]] = {}  # key -> [job, cpu clock, sink, counters sent, cpu sent]
        self._thread: threading.Thread | None = None

    def watch(self, key: tuple[Any, Any], job: Job, cpu_clock: Callable[[], float], sink: ProgressSink) -> None:
        with self._lock:
            self._tasks[key] = [job, cpu_clock, sink, {}, cpu_clock()]
            if self._thread is None or not self._thread.is_alive():  # none yet, or this is a forked child
                self._thread = threading.Thread(target=self._run, name="corral-progress", daemon=True)
                self._thread.start()

    def forget(self, key: tuple[Any, Any]) -> None:
        with self._lock:
            self._tasks.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(PROGRESS_INTERVAL)
            with self._lock:
                tasks = list(self._tasks.items())
            for (task, attempt), entry in tasks:
                job, cpu_clock, sink, sent, cpu_sent = entry
                counts = dict(job._counters)  # one C-level copy: safe while the task's thread counts
                delta = [[group, name, amount - sent.get((group, name), 0)]
                         for (group, name), amount in counts.items() if amount != sent.get((group, name), 0)]
                cpu = cpu_clock() if cpu_clock is not time.thread_time else cpu_sent
                entry[3], entry[4] = counts, cpu
                try:
                    sink({"task": task, "attempt": attempt, "counters": delta, "cpu_seconds": round(cpu - cpu_sent, 6)})
                except Exception:  # progress is a nicety: never the reason a task fails
                    pass


_reporter = _Reporter()
if hasattr(os, "register_at_fork"):  # a forked worker starts with no tasks, a free lock and no thread
    os.register_at_fork(after_in_child=lambda: _Reporter.__init__(_reporter))


# --- measurements -----------------------------------------------------------------------------------
_worker: tuple[int, str] | None = None


def worker_id() -> str:
    """This process's id for the run: ``PID-RANDOM``, new in every process (a forked worker, a container's
    runtime), so that tasks that ran in one warm worker can be told apart from another's."""
    global _worker
    if _worker is None or _worker[0] != os.getpid():
        _worker = (os.getpid(), secrets.token_hex(3))
    return f"{_worker[0]}-{_worker[1]}"


def rss_mb() -> float | None:
    """This process's resident memory now, in MB (None where /proc is missing). ``/proc/self/statm``
    stays open in each process that read it: opening it cost 11 us of a task's 200, reading it 1.5."""
    global _statm
    try:
        if _statm is None or _statm[0] != os.getpid():  # a forked child's copy names its parent
            if _statm is not None:
                os.close(_statm[1])
            _statm = None
            _statm = (os.getpid(), os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
        resident = int(os.pread(_statm[1], 128, 0).split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(resident * _PAGE_SIZE / (1 << 20), 1)


_statm: tuple[int, int] | None = None  # (pid, descriptor of /proc/self/statm opened by that process)


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def reset_peak_memory() -> bool:
    """Start this process's peak resident memory afresh (Linux 4.0+: ``5`` into ``/proc/self/clear_refs``
    sets VmHWM to the memory now), so that a warm worker's next task reports its own peak, not the
    biggest of every task before it; False where that cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _vm_hwm_kib() is not None


def peak_memory_mb(since_reset: bool = False) -> float:
    """This process's peak resident memory in MB: since ``reset_peak_memory`` (VmHWM), else over its
    lifetime (``ru_maxrss``: Linux reports KiB, macOS bytes)."""
    peak = _vm_hwm_kib() if since_reset else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":
            return round(peak / (1 << 20), 1)
    return round(peak / 1024, 1)


def _vm_hwm_kib() -> int | None:
    """``VmHWM`` of ``/proc/self/status`` (the peak resident memory, in KiB), None without it."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` without corral's own frames, so the user's code stands out."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_CORRAL_DIR)]
    if not frames:  # raised by corral itself (bad input, a key that is not a str): the message says it all
        return ""
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)
