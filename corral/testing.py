"""Testing a job the way its author would: run it in this process on a few lines, look at what it wrote.

::

    from corral.testing import run_job

    def test_word_count():
        result = run_job(WordCount, ["a b", "b"])
        assert sorted(result.output) == [("a", 1), ("b", 2)]
        assert result.counters["words"]["seen"] == 3

``run_job`` is a real run (mrjob's ``make_runner()`` and ``parse_output()`` in one call): the same
planner, map tasks, shuffle, combiner, partitioner, reducers and commit as ``corral run``, on the
``threads`` backend, one task at a time, in a temporary folder. By default the input is cut into 2 map
tasks and the job has 2 reducers (``map_tasks=``, ``reducers=``), so that a job that only works as one
task fails here as it would on real data: state kept in ``map_init`` and emitted in ``map_final``
comes out once per task, and a class attribute changed by a task is reported (``SharedStateError``),
since on a real run each worker process has its own copy of it.

The input is a list of lines (``str``, without newlines) for the job's first stage, or a list of
``(key, value)`` pairs for a later one (``from_stage=2``: what stage 1 would write). Line ``N`` of
the file ``input-00000S.txt`` that a failure names is ``input[S + N - 1]``. A failing task raises
``corral.JobFailed`` with the message ``corral run`` prints: the task, the input it was reading, the
user's traceback. Tasks are not retried (``retries=0``) unless asked.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import types
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.errors import UsageError
from corral.job import Job

__all__ = ["JobOutput", "SharedStateError", "run_job"]

_MISSING = object()


@dataclass
class JobOutput:
    """What a run wrote: its pairs, part file by part file (in name order, as ``corral run`` commits them),
    and its counters (``{group: {name: total}}``, over the committed attempts)."""

    parts: list[list[tuple[Any, Any]]]
    counters: dict[str, dict[str, int]]
    manifest: dict[str, Any] = field(repr=False)

    @property
    def output(self) -> list[tuple[Any, Any]]:
        """Every output pair, in the order a real run writes them (part-00000's first)."""
        return [pair for part in self.parts for pair in part]

    def counter(self, group: str, name: str) -> int:
        """One counter's total (0 if it was never incremented)."""
        return self.counters.get(group, {}).get(name, 0)


class SharedStateError(AssertionError):
    """A class attribute of the job changed while it ran: state shared by the tasks of one worker process."""


def run_job(
    job: type[Job],
    input: Sequence[str] | Sequence[tuple[Any, Any]],
    *,
    from_stage: int = 1,
    map_tasks: int = 2,
    reducers: int | None = 2,
    args: Mapping[str, str] | None = None,
    check_class_state: bool = True,
    **settings: Any,
) -> JobOutput:
    """Run ``job`` on ``input`` in this process; return its output pairs and counters.

    ``input``: lines for stage 1, or ``(key, value)`` pairs for the stage ``from_stage`` (1 is the first,
    as corral's messages count). ``map_tasks``: the input is cut into that many map tasks (fewer if it
    has fewer records; a csv file is always one). ``reducers``: reduce tasks of every stage with a reduce
    (None: corral's own choice; a Step's ``reducers`` wins). ``args``: the job's ``self.args``
    (``--arg``). ``settings``: any other option of ``corral run`` by its name (``memory_budget="64KB"``,
    ``retries=2``, ``max_records_per_file=10``…). With ``check_class_state``, a class attribute of the
    job that the run changed raises ``SharedStateError``.
    """
    if not (isinstance(job, type) and issubclass(job, Job)):
        raise TypeError(f"run_job takes a Job subclass, not {job!r}")
    if map_tasks < 1:
        raise ValueError(f"map_tasks must be at least 1, not {map_tasks}")
    records = _check_input(input, from_stage)
    job_class = _importable(job)
    before = _class_state(job_class) if check_class_state else {}
    try:
        with tempfile.TemporaryDirectory(prefix="corral-testing-") as folder:
            inputs = _write_input(os.path.join(folder, "input"), records, from_stage, map_tasks,
                                  whole=getattr(job, "input_format", "lines") == "csv")
            out = os.path.join(folder, "out")
            manifest = _run(job_class, inputs, out, folder, from_stage, reducers, args, settings)
            parts = [_read_part(os.path.join(out, name)) for name in sorted(os.listdir(out))
                     if name.startswith("part-")]
    finally:
        if job_class is not job:
            sys.modules.pop(job_class.__module__, None)
    if check_class_state:
        _check_class_state(job_class, before)
    return JobOutput(parts, manifest.get("counters", {}), manifest)


# --- the input ----------------------------------------------------------------------------------


def _check_input(input: Sequence[Any], from_stage: int) -> list[Any]:
    if isinstance(input, str | bytes):
        raise TypeError("input is a list of lines (or of (key, value) pairs), not one string")
    records = list(input)
    if from_stage < 1:
        raise ValueError(f"from_stage counts from 1 (the job's first stage), not {from_stage}")
    if from_stage == 1:
        for n, line in enumerate(records):
            if not isinstance(line, str):
                hint = " ((key, value) pairs are the input of a later stage: from_stage=2)" if isinstance(
                    line, tuple) else ""
                raise TypeError(f"input[{n}] is {type(line).__name__}, not a line (str){hint}")
            if "\n" in line or "\r" in line:
                raise ValueError(f"input[{n}] holds a line break: each item is one line, without its newline")
        return records
    for n, pair in enumerate(records):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise TypeError(f"input[{n}] is not a (key, value) pair: stage {from_stage} reads what stage "
                            f"{from_stage - 1} wrote")
    return [tuple(pair) for pair in records]


def _chunks(items: list[Any], count: int) -> list[tuple[int, list[Any]]]:
    """(first index, items) of ``count`` consecutive chunks of about the same length (none empty)."""
    count = max(1, min(count, len(items)))
    bounds = [len(items) * k // count for k in range(count + 1)]
    return [(bounds[k], items[bounds[k]: bounds[k + 1]]) for k in range(count)]


def _write_input(folder: str, records: list[Any], from_stage: int, map_tasks: int, whole: bool) -> list[str]:
    """The input files, in order: one per map task (one in all for csv, a file read whole)."""
    from corral.output import RecordFile

    os.makedirs(folder)
    paths = []
    for first, chunk in _chunks(records, 1 if whole else map_tasks):
        if from_stage == 1:
            path = os.path.join(folder, f"input-{first:06d}.txt")
            with open(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
                f.write("".join(line + "\n" for line in chunk))
        else:
            path = os.path.join(folder, f"input-{first:06d}.rec")
            writer = RecordFile(path, source="input")
            writer.add_all(chunk)
            writer.close()
        paths.append(path)
    return paths


# --- the run ------------------------------------------------------------------------------------


def _run(job_class: type[Job], inputs: list[str], out: str, folder: str, from_stage: int, reducers: int | None,
         args: Mapping[str, str] | None, settings: Mapping[str, Any]) -> dict[str, Any]:
    from corral.config import load_settings
    from corral.driver import Driver

    flags: dict[str, Any] = {
        "backend": "threads", "max_concurrency": 1, "retries": 0, "speculative": False, "quiet": True,
        # one split per input file and each file its own map task: map_tasks tasks, whatever the sizes
        "split_size": 1 << 40, "map_bin_size": 1, "reducers": reducers,
        "output_format": "jsonl", "output_compression": "none",
        "arg": [f"{k}={v}" for k, v in (args or {}).items()],
    }
    for name, value in settings.items():
        if name in ("output_format", "output_compression"):
            raise UsageError(f"run_job reads the pairs a job writes; {name} is not one of its settings")
        flags[name] = value
    # neither the environment (CORRAL_*) nor a corral.toml where the tests run changes a test's run
    resolved = load_settings(flags, folder=folder, environ={})
    return Driver(job_class, inputs, out, resolved, first_stage=from_stage - 1).run()


def _read_part(path: str) -> list[tuple[Any, Any]]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return [(row["key"], row["value"]) for row in map(json.loads, f)]


def _importable(job: type[Job]) -> type[Job]:
    """``job``, or for a class the worker would not import as it is (defined in a function, in a script run
    as ``__main__``, in an interactive session) a subclass of it in a module registered in ``sys.modules``:
    tasks run in this process, on this very class, without importing a script a second time."""
    module = sys.modules.get(job.__module__)
    if "<locals>" not in job.__qualname__ and job.__module__ != "__main__" and getattr(module, "__file__", None):
        return job
    name = f"corral_testing_{uuid.uuid4().hex[:12]}"
    holder = types.ModuleType(name)
    subclass = type(job.__name__, (job,), {"__module__": name, "__qualname__": job.__name__})
    setattr(holder, job.__name__, subclass)
    sys.modules[name] = holder
    return subclass


# --- class attributes ---------------------------------------------------------------------------


def _plain_attributes(klass: type) -> dict[str, Any]:
    """The class's own data attributes (not methods, properties, nested classes or modules)."""
    found = {}
    for name, value in vars(klass).items():
        if name.startswith("__") or isinstance(value, types.FunctionType | types.ModuleType | type | staticmethod
                                               | classmethod | property) or hasattr(value, "__get__"):
            continue
        found[name] = value
    return found


def _names(job_class: type[Job]) -> set[str]:
    """The data attributes the job's own classes (not corral's Job) define."""
    return {name for k in job_class.__mro__ if k is not Job and issubclass(k, Job) for name in _plain_attributes(k)}


def _class_state(job_class: type[Job]) -> dict[str, Any]:
    """A copy of the value each of the job's class attributes has (as the job's tasks see it)."""
    state = {}
    for name in _names(job_class):
        try:
            state[name] = copy.deepcopy(getattr(job_class, name))
        except Exception:  # cannot be copied (a lock, a connection): not compared
            state[name] = _MISSING
    return state


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return repr(a) == repr(b)


def _check_class_state(job_class: type[Job], before: dict[str, Any]) -> None:
    changed = []
    name_of = job_class.__qualname__
    for name in sorted(_names(job_class) | set(before)):
        old = before.get(name, _MISSING)
        if name not in before:
            changed.append(f"{name_of}.{name} (set by the run)")
        elif old is _MISSING:
            continue  # not copied, not compared
        elif not hasattr(job_class, name):
            changed.append(f"{name_of}.{name} (deleted by the run)")
        elif not _same(old, getattr(job_class, name)):
            changed.append(f"{name_of}.{name} (was {_short(old)}, now {_short(getattr(job_class, name))})")
    if changed:
        raise SharedStateError(
            f"the job changed class attribute{'s' if len(changed) > 1 else ''} while it ran: {'; '.join(changed)}. "
            "A class attribute is shared by every task a worker process runs, and each process has its own, so "
            "what tasks see depends on how they land on workers. Keep a task's state on self (set it in map_init "
            "or reduce_init); for a cache that holds the same for every task, pass check_class_state=False")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
