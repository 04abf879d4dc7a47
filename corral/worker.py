"""``run_task(payload) -> result``: the single entry every executor and remote handler calls.

Both sides are plain JSON-able dicts. A task never raises: a failure comes back as
``{"ok": False, "error": {"type", "message", "traceback"}}`` with the user's traceback, so that every
backend (a thread, a process, a Lambda invoke, an HTTP call) reports it the same way.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import resource
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from corral.cancellation import TaskCancelled
from corral.errors import InputError, UsageError
from corral.job import Job
from corral.sidefiles import local_paths

_CORRAL_DIR = str(Path(__file__).resolve().parent)
_job_classes: dict[tuple[str, str, str | None], type[Job]] = {}
_gc_thresholds = gc.get_threshold()  # what full collections were set to before the running tasks
_gc_lock = threading.Lock()
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


def run_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one task attempt described by ``payload``; return its result (never raises)."""
    from corral.tasks import execute_map, execute_reduce

    started = time.perf_counter()
    try:
        job = load_job_class(payload["job"])(payload.get("args"))
        downloads = 0
        if payload.get("files"):
            job._side_files, downloads = local_paths(payload["files"])
        step = job.steps()[payload["stage"]]
        execute = execute_map if payload["kind"] == "map" else execute_reduce
        with _no_full_collections():
            result = execute(payload, job, step)
    except Exception as exc:
        return {
            "ok": False,
            "task": payload.get("task"),
            "attempt": payload.get("attempt"),
            "error": {
                "type": type(exc).__name__,
                "message": str(exc),
                "traceback": user_traceback(exc),
                "kind": _error_kind(exc),
            },
        }
    result.update(
        ok=True,
        task=payload["task"],
        attempt=payload["attempt"],
        counters=[[group, name, amount] for (group, name), amount in job._counters.items()],
        seconds=round(time.perf_counter() - started, 6),
        peak_memory_mb=peak_memory_mb(),
    )
    if downloads:
        result["side_file_downloads"] = downloads
    return result


def _error_kind(exc: Exception) -> str:
    if isinstance(exc, TaskCancelled):
        return "cancelled"
    return "input" if isinstance(exc, InputError) else "user"


@contextmanager
def _no_full_collections() -> Iterator[None]:
    """Hold back the garbage collector's full collections while a task runs.

    A task's buffers are millions of long-lived objects (a list per key); each full collection walks
    all of them again, which cost map loops 10-15%. Young collections go on (cycles that user code
    makes and drops are still freed); what reaches the oldest generation waits for the task's end.
    """
    global _tasks_running, _gc_thresholds
    with _gc_lock:
        if _tasks_running == 0:
            _gc_thresholds = gc.get_threshold()
            gc.set_threshold(_gc_thresholds[0], _gc_thresholds[1], 1 << 30)
        _tasks_running += 1
    try:
        yield
    finally:
        with _gc_lock:
            _tasks_running -= 1
            if _tasks_running == 0:
                gc.set_threshold(*_gc_thresholds)


def peak_memory_mb() -> float:
    """This process's peak resident memory in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20) if sys.platform == "darwin" else peak / 1024, 1)


def user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` without corral's own frames, so the user's code stands out."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_CORRAL_DIR)]
    if not frames:  # raised by corral itself (bad input, a key that is not a str): the message says it all
        return ""
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)
