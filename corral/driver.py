"""The driver: plan -> map wave -> reduce wave -> commit, stage after stage; retries; the manifest.

The driver decides everything that matters for correctness: which attempt of a task is committed
(the first to succeed; any later duplicate is discarded), when a task is retried, and the final
commit (part files moved into place, then ``_SUCCESS``). Attempts only ever write under their own
attempt names, so retries and duplicates can neither lose nor duplicate a record.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import random
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from corral import __version__
from corral.errors import JobFailed, UsageError
from corral.events import (
    JobFinished,
    JobStarted,
    PhaseFinished,
    PhaseStarted,
    TaskFinished,
    TaskProgress,
    TaskStarted,
)
from corral.executor import INPUT_ERROR, THROTTLED, Executor, JobSource, Outcome
from corral.fs import FileInfo, display, get_filesystem, join
from corral.job import Job, Step
from corral.output import OutputSpec, output_spec, part_names
from corral.planner import choose_reducers, list_inputs, plan_map_tasks, task_sizes
from corral.plugins import get_plugin_manager
from corral.settings import Settings
from corral.sidefiles import side_files, work_url
from corral.split import INPUT_FORMATS
from corral.worker import job_ref

log = logging.getLogger("corral")

#: Retry backoff: base * 2**(failures-1), capped, with full jitter on the upper half.
BACKOFF_BASE = 0.1
BACKOFF_CAP = 30.0


def create_executor(settings: Settings) -> Executor:
    """Build the executor named by ``settings.backend`` from the plugins' ``corral_executors``."""
    specs = {spec.name: spec for specs in get_plugin_manager().hook.corral_executors() for spec in specs}
    spec = specs.get(settings.backend)
    if spec is None:
        source = settings.source("backend")
        where = f"from {source}; " if source != "default" else ""
        raise UsageError(f"unknown backend {settings.backend!r} ({where}available: {', '.join(sorted(specs))})")
    return spec.create(settings)


def parse_job_args(items: Sequence[str]) -> dict[str, str]:
    """``["KEY=VALUE", …]`` from ``--arg`` -> a dict; a UsageError naming an item without ``=``."""
    args = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid value for --arg: {item!r} is not KEY=VALUE")
        args[key] = value
    return args


def _absolute(url: str) -> str:
    """A local path made absolute; other URLs as they are."""
    return url if "://" in url else os.path.abspath(url)


def read_requirements(path: str) -> list[str]:
    """The requirements of a ``--requirements`` file: one per line; blank lines and comments skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"invalid value for --requirements: cannot read {path}: {exc}") from None
    found = []
    for number, line in enumerate(lines, 1):
        text = line.split(" #", 1)[0].strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("-"):
            raise UsageError(f"invalid value for --requirements: {path} line {number}: pip options such as "
                             f"{text.split()[0]} are not supported (list requirements only)")
        found.append(text)
    return found


def work_root(out: str, settings: Settings) -> str:
    """The working root shared by runs (``--work-dir``, else ``OUT/_corral/work``); a run works in a folder in it."""
    return _absolute(settings.work_dir or join(out, "_corral", "work"))


def make_job_source(
    job_class: type[Job],
    settings: Settings,
    inputs: Sequence[str] = (),
    out: str | None = None,
    run_id: str = "",
    job: Job | None = None,
) -> JobSource:
    """What an executor deploys for ``job_class`` run on ``inputs`` into ``out`` (both optional, for
    ``corral deploy``): the job, its requirements (its ``requirements`` plus ``--requirements``), and
    the locations its tasks read (the inputs) and read and write (the working root)."""
    if job is None:
        job = job_class(parse_job_args(settings.arg))
    requirements = list(job.requirements)
    if settings.requirements:
        requirements += [r for r in read_requirements(settings.requirements) if r not in requirements]
    inputs = tuple(_absolute(i) for i in inputs)
    output = _absolute(out.rstrip("/") if len(out) > 1 else out) if out else None
    work = work_root(output, settings) if output else (_absolute(settings.work_dir) if settings.work_dir else None)
    run_work = join(work, run_id) if work and run_id else work
    locations = (*inputs, *([output] if output else []), *([run_work] if run_work else []))
    files = side_files(job_class, settings.file)
    return JobSource(job_ref(job_class), tuple(requirements), locations, inputs=inputs, output=output, work=work,
                     files=files)


def _executor_report(executor: Executor) -> dict[str, Any]:
    """``executor.report()``; a report that fails is logged, never the reason a job fails."""
    try:
        return dict(executor.report() or {})
    except Exception as exc:
        log.warning("the %s executor could not report: %s", executor.name or "executor", exc)
        return {}


@dataclass
class TaskState:
    task: str
    make_payload: Callable[[int], dict[str, Any]]
    attempts: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0  # failures that count toward --retries (not throttles)
    committed: dict[str, Any] | None = None


class Driver:
    """Runs one job. ``run()`` returns the manifest or raises ``JobFailed`` / ``UsageError``."""

    def __init__(self, job_class: type[Job], inputs: Sequence[str], out: str, settings: Settings) -> None:
        self.job_class = job_class
        self.inputs = list(inputs)
        # local paths absolute: workers may run elsewhere (a container) with the same paths mounted
        self.out = _absolute(out.rstrip("/") if len(out) > 1 else out)
        self.settings = settings
        self.hook = get_plugin_manager().hook
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        self.work = join(work_root(self.out, settings), self.run_id)
        self.stages: list[dict[str, Any]] = []
        self.counters: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.started = time.time()
        self.report: dict[str, Any] = {}
        self.executor_info: dict[str, Any] = {"name": settings.backend}
        self._running: dict[tuple[str, int], tuple[int, str]] = {}  # (task, attempt) -> (stage, phase)
        self.output = OutputSpec()
        self.side_files: list[dict[str, Any]] = []  # in every task's payload (see corral.sidefiles)

    # --- the job --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.args = parse_job_args(self.settings.arg)
        job = self.job_class(self.args)
        steps = job.steps()
        if not steps:
            raise UsageError(f"{self.job_class.__name__}.steps() returned no stages")
        self.output = output_spec(self.job_class, self.settings)
        input_format = getattr(self.job_class, "input_format", "lines")
        if input_format not in INPUT_FORMATS:
            raise UsageError(f"invalid value for {self.job_class.__qualname__}.input_format: {input_format!r} is not "
                             f"one of {', '.join(INPUT_FORMATS)}")
        out_fs = get_filesystem(self.out)
        files = list_inputs(self.inputs)  # first: a mistyped input must not cost the previous output
        for info in files:
            if info.url.startswith(self.out.rstrip("/") + "/"):
                raise UsageError(f"input {display(info.url)} is inside the output folder {display(self.out)}")
        source = make_job_source(self.job_class, self.settings, self.inputs, self.out, self.run_id, job)
        root = work_root(self.out, self.settings)
        self.side_files = [{**f.to_json(), "url": work_url(root, f)} for f in source.files]
        # the backend checks its settings first: a value it refuses must not cost the previous output
        executor = create_executor(self.settings)
        try:
            self._prepare_output(out_fs)
        except BaseException:
            executor.close()
            raise
        manifest: dict[str, Any] = {}
        try:
            try:
                with executor:
                    self.concurrency = executor.max_concurrency
                    executor.deploy(source)
                    cores, sizing = executor.cores(), executor.sizing()
                    self.executor_info = {"name": executor.name or self.settings.backend,
                                          "max_concurrency": self.concurrency, "cores": cores,
                                          "sizing": sizing.to_json() if sizing else None}
                    executor.progress = self._task_progress
                    self.hook.corral_job_started(
                        event=JobStarted(self._job_name(), len(steps), self.inputs, self.out, self.settings,
                                         self.run_id, self.executor_info["name"], self.concurrency, cores, sizing)
                    )
                    final: list[tuple[str, str]] = []
                    for index, step in enumerate(steps):
                        last = index == len(steps) - 1
                        files, final = self._run_stage(executor, job, index, step, files, last)
            finally:  # what the executor measured over the run (e.g. cost), failed or not
                self.report = _executor_report(executor)
            out_fs.move_many([(src, join(self.out, name)) for src, name in final])
            manifest = self._manifest("succeeded", None)
            self._write_manifest(out_fs, manifest)
            out_fs.write_bytes(join(self.out, "_SUCCESS"), b"")
        except Exception as exc:  # whatever stopped the job is recorded; no _SUCCESS is written
            manifest = self._manifest("failed", str(exc))
            self._write_manifest(out_fs, manifest)
            raise
        finally:
            if not self.settings.keep_intermediate:
                get_filesystem(self.work).remove(self.work, recursive=True)
                if not self.settings.work_dir:
                    out_fs.remove(join(self.out, "_corral", "work"), recursive=True)
            self.hook.corral_job_finished(
                event=JobFinished(
                    ok=manifest.get("status") == "succeeded",
                    out=self.out,
                    seconds=time.time() - self.started,
                    counters=self._plain_counters(),
                    manifest=manifest,
                    error=manifest.get("error"),
                    settings=self.settings,
                )
            )
        return manifest

    def _job_name(self) -> str:
        return f"{self.job_class.__module__}:{self.job_class.__qualname__}"

    def _prepare_output(self, out_fs: Any) -> None:
        if not out_fs.exists(self.out):
            return
        try:
            existing = out_fs.expand(self.out)
        except FileNotFoundError:
            existing = []
        leftovers = existing or out_fs.exists(join(self.out, "_SUCCESS"))
        if leftovers:
            if not self.settings.overwrite:
                raise UsageError(
                    f"output folder {display(self.out)} already holds output (use --overwrite to replace it)"
                )
            out_fs.remove(self.out, recursive=True)
        else:
            out_fs.remove(join(self.out, "_SUCCESS"))

    # --- one stage ------------------------------------------------------------------------------
    def _run_stage(
        self, executor: Executor, job: Job, index: int, step: Step, files: list[FileInfo], last: bool
    ) -> tuple[list[FileInfo], list[tuple[str, str]]]:
        settings = self.settings
        kind = "text" if index == 0 else "records"
        total = sum(f.size for f in files)
        split_size, bin_size = task_sizes(
            total, settings.split_size, settings.map_bin_size, settings.explicit, self.concurrency
        )
        whole_files = kind == "text" and type(job).input_format == "csv"
        bins = plan_map_tasks(files, split_size, bin_size, self.concurrency, kind, whole_files,
                              fixed_bin_size="map_bin_size" in settings.explicit)
        map_only = step.reduce is None
        partitions = 0 if map_only else (step.reducers or choose_reducers(
            total, len(bins), settings.reducers, settings.reduce_bin_size,
            "reduce_bin_size" in settings.explicit, self.concurrency,
        ))
        stage_dir = join(self.work, f"stage-{index}")
        map_output_kind = "shuffle" if not map_only else ("text" if last else "records")
        record: dict[str, Any] = {
            "stage": index,
            "map_tasks": len(bins),
            "reduce_tasks": partitions,
            "split_size": split_size,
            "input_bytes": total,
            "plan": [[[s.url, s.start, s.end] for s in b] for b in bins],
            "tasks": {},
        }
        self.stages.append(record)
        final = {"output_spec": self.output.to_json()} if last else {}
        base = {
            "job": job_ref(self.job_class),
            "args": self.args,
            "stage": index,
            "memory_budget": settings.memory_budget,
            "files": self.side_files,
        }

        def map_payload(task: str, splits: list, attempt: int) -> dict[str, Any]:
            suffix = {"shuffle": ".bin", "records": ".rec", "text": ""}[map_output_kind]
            name = f"{task}.a{attempt}-{secrets.token_hex(3)}{suffix}"
            return {
                **base,
                "kind": "map",
                "task": task,
                "attempt": attempt,
                "splits": [s.to_json() for s in splits],
                "partitions": partitions,
                "output": join(stage_dir, name),
                "output_kind": map_output_kind,
                "input_format": type(job).input_format,
                "input_errors": type(job).input_errors,
                "input_header": bool(type(job).input_header),
                **(final if map_only else {}),
            }

        map_tasks = [
            TaskState(f"map-{j:04d}", partial(map_payload, f"map-{j:04d}", b))
            for j, b in enumerate(bins)
        ]
        self._run_wave(executor, index, "map", map_tasks, record)
        if map_only:
            outputs = [t.committed for t in map_tasks]
        else:
            reduce_kind = "text" if last else "records"

            def reduce_payload(r: int, attempt: int) -> dict[str, Any]:
                task = f"reduce-{r:04d}"
                suffix = "" if last else ".rec"
                return {
                    **base,
                    "kind": "reduce",
                    "task": task,
                    "attempt": attempt,
                    "partition": r,
                    "sources": [
                        [t.committed["output"], *t.committed["index"][r]] for t in map_tasks  # type: ignore[index]
                    ],
                    "output": join(stage_dir, f"{task}.a{attempt}-{secrets.token_hex(3)}{suffix}"),
                    "output_kind": reduce_kind,
                    **final,
                }

            reduce_tasks = [
                TaskState(f"reduce-{r:04d}", partial(reduce_payload, r))
                for r in range(partitions)
            ]
            self._run_wave(executor, index, "reduce", reduce_tasks, record)
            outputs = [t.committed for t in reduce_tasks]
        assert all(outputs)
        record["intermediate_objects"] = 0 if map_only else len(map_tasks)
        if last:
            return [], [
                (url, name)
                for n, o in enumerate(outputs)
                for url, name in zip(o["parts"], part_names(n, len(o["parts"]), self.output), strict=True)  # type: ignore[index]
            ]
        return [FileInfo(o["output"], o["bytes_out"]) for o in outputs], []  # type: ignore[index]

    # --- a wave of tasks, with retries ----------------------------------------------------------
    def _run_wave(
        self, executor: Executor, stage: int, phase: str, tasks: list[TaskState], record: dict[str, Any]
    ) -> None:
        started = time.time()
        self.hook.corral_phase_started(event=PhaseStarted(stage, phase, len(tasks), self.settings))
        ready: list[TaskState] = list(reversed(tasks))
        delayed: list[tuple[float, int, TaskState]] = []  # (due time, tie-breaker, task)
        running: dict[Future[Outcome], tuple[TaskState, dict[str, Any]]] = {}
        limit = executor.max_concurrency
        try:
            while ready or delayed or running:
                now = time.monotonic()
                while delayed and delayed[0][0] <= now:
                    ready.append(heapq.heappop(delayed)[2])
                while ready and len(running) < limit:
                    state = ready.pop()
                    payload = state.make_payload(len(state.attempts) + 1)
                    state.attempts.append({"attempt": payload["attempt"], "output": payload["output"],
                                           "start": round(time.time() - self.started, 3)})
                    self._running[(state.task, payload["attempt"])] = (stage, phase)
                    self.hook.corral_task_started(
                        event=TaskStarted(stage, phase, state.task, payload["attempt"], self.settings))
                    running[executor.submit(payload)] = (state, payload)
                timeout = max(0.0, delayed[0][0] - time.monotonic()) if delayed else None
                if not running:
                    time.sleep(timeout or 0)
                    continue
                done, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
                for future in done:
                    state, payload = running.pop(future)
                    self._finish_attempt(stage, phase, state, payload, future.result(), delayed)
        finally:  # a failed job's manifest shows its attempts too (failure kinds, measurements)
            for state in tasks:
                if state.attempts:
                    record["tasks"][state.task] = {
                        "phase": phase,
                        "committed_attempt": state.committed["attempt"] if state.committed else None,
                        "attempts": state.attempts,
                    }
        for state in tasks:
            self._add_counters(state.committed)
        self.hook.corral_phase_finished(
            event=PhaseFinished(stage, phase, len(tasks), time.time() - started, self.settings)
        )

    def _finish_attempt(
        self,
        stage: int,
        phase: str,
        state: TaskState,
        payload: dict[str, Any],
        outcome: Outcome,
        delayed: list[tuple[float, int, TaskState]],
    ) -> None:
        attempt = payload["attempt"]
        entry = state.attempts[attempt - 1]
        entry["end"] = round(time.time() - self.started, 3)
        entry["stats"] = outcome.stats
        self._running.pop((state.task, attempt), None)
        committed = will_retry = False
        if outcome.ok and state.committed is None:
            state.committed = outcome.result
            entry["status"] = "committed"
            committed = True
        else:
            entry["status"] = "discarded" if outcome.ok else "failed"
            self._discard(payload["output"])
        if not outcome.ok:
            failure = outcome.failure
            assert failure is not None
            entry["failure"] = {"kind": failure.kind, "message": failure.describe(), "traceback": failure.traceback}
            if failure.kind != THROTTLED:
                state.failures += 1
            # throttling never counts toward --retries, but cannot outlast the job's --deadline
            out_of_time = failure.kind == THROTTLED and time.time() - self.started >= self.settings.deadline
            # bad input fails the same way every time: retrying it only delays the message
            if state.failures > self.settings.retries or failure.kind == INPUT_ERROR or out_of_time:
                self.hook.corral_task_finished(
                    event=TaskFinished(stage, phase, state.task, attempt, outcome, False, False, self.settings)
                )
                self._fail(stage, state, attempt, failure)
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, state.failures - 1)) * (0.5 + random.random() / 2)
            log.info(
                "retrying %s (attempt %d %s: %s) in %.2f s",
                state.task, attempt, failure.kind, failure.describe(), delay,
            )
            heapq.heappush(delayed, (time.monotonic() + delay, id(state), state))
            will_retry = True
        self.hook.corral_task_finished(
            event=TaskFinished(stage, phase, state.task, attempt, outcome, committed, will_retry, self.settings)
        )

    def _fail(self, stage: int, state: TaskState, attempt: int, failure: Any) -> None:
        where = f"stage {stage + 1} " if len(self.stages) > 1 or stage else ""
        message = f"{where}task {state.task} attempt {attempt}: {failure.describe()}"
        if failure.traceback:
            message += "\n" + failure.traceback.rstrip()
        raise JobFailed(message)

    def _discard(self, url: str) -> None:
        try:
            get_filesystem(url).remove(url, recursive=True)  # a final task's output may be a folder of parts
        except OSError as exc:  # leftovers are harmless: nothing reads an uncommitted attempt
            log.debug("could not remove %s: %s", url, exc)

    def _task_progress(self, report: dict[str, Any]) -> None:
        """``executor.progress``: a running attempt's counter deltas, passed on to the observers."""
        where = self._running.get((report.get("task"), report.get("attempt")))  # type: ignore[arg-type]
        if where is None:  # the attempt ended meanwhile: its totals came with its result
            return
        self.hook.corral_task_progress(event=TaskProgress(
            where[0], where[1], report["task"], report["attempt"],
            [(str(g), str(n), int(a)) for g, n, a in report.get("counters", ())],
            float(report.get("cpu_seconds") or 0.0), self.settings,
        ))

    # --- counters and manifest ------------------------------------------------------------------
    def _add_counters(self, result: dict[str, Any] | None) -> None:
        for group, name, amount in (result or {}).get("counters", ()):
            self.counters[group][name] += amount

    def _plain_counters(self) -> dict[str, dict[str, int]]:
        return {group: dict(sorted(names.items())) for group, names in sorted(self.counters.items())}

    def _manifest(self, status: str, error: str | None) -> dict[str, Any]:
        manifest = {
            "corral_version": __version__,
            "job": self._job_name(),
            "run_id": self.run_id,
            "status": status,
            "error": error,
            "started": self.started,
            "seconds": round(time.time() - self.started, 3),
            "inputs": self.inputs,
            "out": self.out,
            "backend": self.settings.backend,
            "output": self.output.to_json(),
            "settings": self.settings.to_json(),
            "counters": self._plain_counters(),
            "stages": self.stages,
            "executor": self.executor_info,
            **({"report": self.report} if self.report else {}),
        }
        manifest["advice"] = self._advice(manifest)
        return manifest

    def _advice(self, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        """Every plugin's ``corral_job_advice``; advice that fails is logged, never why a job fails."""
        try:
            return [item for items in self.hook.corral_job_advice(manifest=manifest) for item in items or ()]
        except Exception as exc:
            log.warning("advice about the run failed: %s: %s", type(exc).__name__, exc)
            return []

    def _write_manifest(self, out_fs: Any, manifest: dict[str, Any]) -> None:
        out_fs.write_bytes(
            join(self.out, "_corral", "manifest.json"),
            json.dumps(manifest, indent=1, default=str).encode("utf-8"),
        )
