"""The driver: plan -> map wave -> reduce wave -> commit, stage after stage; retries; the manifest.

The driver decides everything that matters for correctness: which attempt of a task is committed
(the first to succeed; any later duplicate is discarded), when a task is retried, and the final
commit (part files moved into place, then ``_SUCCESS``). Attempts only ever write under their own
attempt names, so retries and duplicates can neither lose nor duplicate a record.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from operator import methodcaller
from typing import Any

from corral import __version__, speedups
from corral.collector import full_collections_held, tasks_starting
from corral.errors import InputError, JobFailed, UsageError
from corral.events import (
    JobFinished,
    JobStarted,
    PhaseFinished,
    PhaseStarted,
    TaskFinished,
    TaskProgress,
    TaskStarted,
)
from corral.executor import Executor, ExecutorSpec, JobSource, Outcome
from corral.filesystems.local import is_local
from corral.fs import (
    FileInfo,
    FileSystem,
    canonical,
    disk_full,
    display,
    file_size,
    file_url,
    get_filesystem,
    join,
    remove_quietly,
    store_errors,
    writing,
)
from corral.interrupts import Interrupted, InterruptGuard
from corral.job import Job, Step, listed
from corral.journal import Journal, read_journal
from corral.jsontext import chunks, encode, pieces
from corral.lease import Keeper, Lease, LeaseLostError
from corral.output import OutputSpec, output_spec, part_names
from corral.planner import choose_reducers, count_splits, list_inputs, plan_map_tasks, task_sizes
from corral.plugins import get_plugin_manager
from corral.resume import Resume, code_hash, fingerprint, nothing_to_resume, plan_settings
from corral.retry import RetryPolicy
from corral.settings import Settings
from corral.sidefiles import side_files, work_url
from corral.split import INPUT_FORMATS, Split, url_start_end
from corral.tasks import MapSpec, ReduceSpec, TaskSpec, sample_keys
from corral.total_order import range_bounds, sample_windows
from corral.wave import Attempt, Committed, Leftovers, SpeculationPolicy, TaskFailedError, TaskState, Wave
from corral.worker import job_ref, user_traceback

log = logging.getLogger("corral")

#: A task runs this long at least before it gets a speculative duplicate (whatever the median).
SPECULATION_FLOOR_SECONDS = 5.0
#: How long ``close()`` of an interrupted executor may take before the driver stops waiting for it.
CLOSE_AFTER_INTERRUPT_SECONDS = 5.0


def executor_spec(settings: Settings) -> ExecutorSpec:
    """The executor named by ``settings.backend`` among the plugins' ``corral_executors``."""
    specs = {spec.name: spec for specs in get_plugin_manager().hook.corral_executors() for spec in specs}
    spec = specs.get(settings.backend)
    if spec is None:
        source = settings.source("backend")
        where = f"from {source}; " if source != "default" else ""
        raise UsageError(f"unknown backend {settings.backend!r} ({where}available: {', '.join(sorted(specs))})")
    return spec


def create_executor(settings: Settings) -> Executor:
    """Build the executor named by ``settings.backend`` from the plugins' ``corral_executors``."""
    return executor_spec(settings).create(settings)


def parse_job_args(items: Sequence[str]) -> dict[str, str]:
    """``["KEY=VALUE", …]`` from ``--arg`` -> a dict; a UsageError naming an item without ``=``."""
    args = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid value for --arg: {item!r} is not KEY=VALUE")
        args[key] = value
    return args


def _symbolic_links(folder: str) -> frozenset[str] | None:
    """The names of the symbolic links in a local folder (None if it cannot be listed): in C where
    ``corral._speedups`` is built (the types readdir gives; 20,000 entries: 11 → 3 ms)."""
    try:
        if speedups.symbolic_links is not None:
            return frozenset(speedups.symbolic_links(folder or "."))
        with os.scandir(folder or ".") as entries:
            return frozenset(entry.name for entry in entries if entry.is_symlink())
    except OSError:
        return None


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
    requirements = listed(job_class, "requirements", "requirement strings")
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


def manifest_pieces(manifest: dict[str, Any]) -> Iterator[bytes]:
    """The manifest as JSON, a top-level key a line, in pieces of about 32 KB: a task's record at a
    time is encoded (by json's C encoder, which ``indent`` would turn off: a manifest of 10,000 tasks
    took 1.8 s in the pure-Python one), never the text of every task at once."""

    def texts() -> Iterator[str]:
        yield "{\n"
        separator = ""
        for key, value in manifest.items():
            yield f"{separator} {encode(key)}: "
            yield from chunks(value, 3)  # stages, a stage, its tasks (or plan): then a task's record whole
            separator = ",\n"
        yield "\n}\n"

    return pieces(texts())


def _executor_report(executor: Executor) -> dict[str, Any]:
    """``executor.report()``; a report that fails is logged, never the reason a job fails."""
    try:
        return dict(executor.report() or {})
    except Exception as exc:
        log.warning("the %s executor could not report: %s", executor.name or "executor", exc)
        return {}


#: Splits smaller than SMALL_SPLIT are for small inputs: a plan of more than MAX_SMALL_SPLITS of them is
#: refused (``--split-size 1`` on a 1 MB file would make a million tasks' worth of splits and manifest).
SMALL_SPLIT = 64 << 10
MAX_SMALL_SPLITS = 10_000


class Driver:
    """Runs one job. ``run()`` returns the manifest or raises ``JobFailed``, ``UsageError`` or
    ``Interrupted``."""

    def __init__(self, job_class: type[Job], inputs: Sequence[str], out: str, settings: Settings, *,
                 first_stage: int = 0) -> None:
        """``first_stage`` > 0 runs the job's stages from that one on, its inputs being corral's records
        files as an earlier stage writes them (``corral.testing`` feeds a later stage this way)."""
        self.job_class = job_class
        self.first_stage = first_stage
        self.inputs = list(inputs)
        # local paths absolute: workers may run elsewhere (a container) with the same paths mounted
        self.out = _absolute(out.rstrip("/") if len(out) > 1 else out)
        self.settings = settings
        self.hook = get_plugin_manager().hook
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        self._attempt_token = secrets.token_hex(3)  # in its attempts' output names
        self.work = join(work_root(self.out, settings), self.run_id)
        self.stages: list[dict[str, Any]] = []
        self.counters: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.started = time.time()
        self.report: dict[str, Any] = {}
        self.retry = RetryPolicy(settings.retries, self.started + settings.deadline)
        self.speculation = SpeculationPolicy(settings.speculative, SPECULATION_FLOOR_SECONDS)
        self.guard = InterruptGuard()
        self.leftovers = Leftovers(self._leftover_ended)
        self.journal: Journal | None = None
        self.lease: Lease | None = None
        self.resume: Resume | None = None
        self.replace_old = False  # an earlier run's output is replaced, at the commit (--overwrite)
        self.committed_here = 0  # tasks this driver committed (journaled)
        self.speculative = {"attempts": 0, "won": 0}
        self.executor_info: dict[str, Any] = {"name": settings.backend}
        self._planned_bins: dict[int, list[Sequence[Split]]] = {}  # stage -> splits per map task, as planned
        self._keeper: Keeper | None = None
        self._journal_soon = False  # a plan waits to be journaled by the keeper (_tasks_sent, _journal_plan)
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
        if not 0 <= self.first_stage < len(steps):
            raise UsageError(f"{self.job_class.__name__} has {len(steps)} stage{'s' if len(steps) > 1 else ''}: "
                             f"there is no stage {self.first_stage + 1} to start from")
        self.output = output_spec(self.job_class, self.settings)
        listed(self.job_class, "requirements", "requirement strings")  # before anything is written or removed
        listed(self.job_class, "files", "paths")
        input_format = getattr(self.job_class, "input_format", "lines")
        if input_format not in INPUT_FORMATS:
            raise UsageError(f"invalid value for {self.job_class.__qualname__}.input_format: {input_format!r} is not "
                             f"one of {', '.join(INPUT_FORMATS)}")
        if self.settings.resume and self.settings.overwrite:
            raise UsageError("--resume and --overwrite exclude each other: continue the unfinished run, or start "
                             "again")
        out_fs = get_filesystem(self.out)
        # the listing and the plan are the driver's long-lived objects (20,000 input files: 100,000 of
        # them), which every full collection would walk again: held back while they are made, not while
        # tasks run (on threads, the tasks' own collections must go on; corral.collector)
        with full_collections_held(collect=False):
            files = list_inputs(self.inputs)  # first: a mistyped input must not cost the previous output
            self._refuse_inputs_in_output(files)
        self._refuse_file_as_output()
        spec = executor_spec(self.settings)
        timeout = float(self.settings.lease_timeout)
        self.lease = Lease(out_fs, self.out, self.run_id, timeout)
        created = "://" not in self.out and not os.path.exists(self.out)
        with self.guard:
            self.lease.acquire()  # also shows that OUT is writable, before anything is planned
            try:
                return self._run_leased(job, steps, files, out_fs, spec)
            finally:
                self.lease.release()
                _remove_empty_folder(join(self.out, "_corral"))  # a run refused before it began leaves nothing
                if created:
                    _remove_empty_folder(self.out)

    def _run_leased(
        self, job: Job, steps: list[Step], files: list[FileInfo], out_fs: FileSystem, spec: ExecutorSpec
    ) -> dict[str, Any]:
        # what OUT holds (a journal, a manifest, old output) is read before anything is deployed: a store
        # failing now is one line naming it, as at the lease's first write
        with store_errors(f"cannot read the output folder {display(self.out)}"):
            self._look_at_output(out_fs, files)
        root = work_root(self.out, self.settings)
        if self.settings.work_dir and not root.startswith(self.out.rstrip("/") + "/"):  # another store, maybe
            with store_errors(f"cannot use the working folder {display(root)} (--work-dir)"):
                get_filesystem(root).exists(root)
        source = make_job_source(self.job_class, self.settings, self.inputs, self.out, self.run_id, job)
        self.side_files = [{**f.to_json(), "url": work_url(root, f)} for f in source.files]
        executor = spec.create(self.settings)
        self.journal = Journal(out_fs, self.out)
        if self.resume is not None:
            self.journal.continue_after(self.resume.objects)
            self.journal.add({"t": "resumed", "at": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
                              "reused": self.resume.reused})
        else:
            self.journal.add(self._run_record(files))
        return self._run_job(executor, source, job, steps, files, out_fs)

    def _run_job(
        self, executor: Executor, source: JobSource, job: Job, steps: list[Step], files: list[FileInfo],
        out_fs: FileSystem,
    ) -> dict[str, Any]:
        assert self.lease is not None and self.journal is not None
        keeper = self._keeper = Keeper(self.lease, self.journal, self.lease.timeout / 4)
        manifest: dict[str, Any] = {}
        try:
            # the heartbeat goes on through a deploy that takes minutes (a first Lambda deploy builds its
            # package), and starts once the executor has its workers (forked while single-threaded)
            keeper.start()
            final = self._run_stages(executor, source, job, steps, files)
            self.lease.check()  # nothing goes into OUT unless this run still holds it
            with _full_disk_stops_the_job():
                self._commit(out_fs, final)
                del final  # moved: the list of every part file goes before the manifest is made
                manifest = self._manifest("succeeded", None)
                self._write_manifest(out_fs, "manifest.json", manifest)
                with writing(join(self.out, "_SUCCESS")):
                    out_fs.write_bytes(join(self.out, "_SUCCESS"), b"")
            # it has succeeded: a Ctrl-C while it cleans up (seconds on an object store) is noted, not
            # raised, so that no "interrupted" manifest and journal land next to _SUCCESS (a second one
            # still exits at once)
            self.guard.polling = True
            keeper.stop()
            self._clean_up(success=True)
        except LeaseLostError as exc:  # OUT is another run's now: write nothing more there
            keeper.stop()
            self.journal.enabled = False
            manifest = self._manifest("failed", str(exc))
            raise JobFailed(str(exc)) from None
        except BaseException as exc:  # whatever stopped the job is recorded; no _SUCCESS is written
            keeper.stop()
            self._flush_journal()
            interrupted = isinstance(exc, Interrupted)
            status = "interrupted" if interrupted else "failed"
            error = f"interrupted by {exc}" if interrupted else str(exc)
            manifest = self._manifest(status, error)
            refused = isinstance(exc, UsageError) and not self.committed_here and self.resume is None
            if not refused:  # a usage error before any task ran leaves nothing behind (as if it never began)
                try:
                    self._write_manifest(out_fs, "manifest.unfinished.json" if self.replace_old else "manifest.json",
                                         manifest)
                except OSError as failed:  # a full disk: what stopped the job is the error to show
                    log.warning("could not write the manifest: %s", failed)
            resumable = self._clean_up(success=False)
            if interrupted:
                exc.resumable = resumable  # type: ignore[attr-defined]
            raise
        finally:
            keeper.stop()
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

    def _run_stages(
        self, executor: Executor, source: JobSource, job: Job, steps: list[Step], files: list[FileInfo]
    ) -> list[tuple[str, str]]:
        """Every stage on ``executor``, closed on the way out; the final (attempt output, part name) moves."""
        final: list[tuple[str, str]] = []
        stopping = False
        try:
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
            for index, step in enumerate(steps[self.first_stage:], start=self.first_stage):
                files, final = self._run_stage(executor, job, index, step, files, index == len(steps) - 1)
        except BaseException:
            stopping = True
            _cancel_all(executor)
            self._flush_journal()
            raise
        finally:
            if self.leftovers and not stopping:  # speculative attempts that lost and still run
                _cancel_all(executor)
            _close(executor, bounded=stopping)
            self.leftovers.wait(timeout=1.0)
            self.report = _executor_report(executor)  # what the executor measured (e.g. cost), failed or not
        return final

    def _job_name(self) -> str:
        return f"{self.job_class.__module__}:{self.job_class.__qualname__}"

    # --- before anything is written ----------------------------------------------------------------
    def _look_at_output(self, out_fs: FileSystem, files: list[FileInfo]) -> None:
        """An unfinished run in OUT is continued (--resume), abandoned (--overwrite) or refused; old output
        is noted, to be replaced at the commit."""
        assert self.lease is not None
        earlier = self._earlier_run(out_fs)
        if self.settings.resume:
            if earlier is None:
                raise nothing_to_resume(self.out, out_fs.exists(join(self.out, "_SUCCESS")))
            earlier.check(self._run_record(files))
            self.resume = earlier
            self.run_id, self.work = earlier.run_id, earlier.work
            self.lease.rename(self.run_id)
            self.replace_old = bool(earlier.run.get("replace_old"))
            with store_errors(f"cannot read the working folder {display(self.work)}"):
                earlier.verify(get_filesystem(self.work), out_fs, self.out)
            if not self.settings.quiet:
                print(f"corral: resuming run {self.run_id}: {earlier.reused} of {earlier.planned} tasks already "
                      "committed", file=sys.stderr)
        else:
            if earlier is not None:
                if not self.settings.overwrite:
                    raise UsageError(
                        f"output folder {display(self.out)} holds an unfinished run {earlier.run_id}: continue it "
                        "with --resume, or start again with --overwrite"
                    )
                self._abandon(out_fs, earlier)
            self.replace_old = self._old_output(out_fs)

    def _refuse_inputs_in_output(self, files: list[FileInfo]) -> None:
        """An input that is the output folder, or inside it, seen through any spelling or symlink, is
        refused before anything is written or deleted (``--overwrite`` would delete it)."""
        out = canonical(self.out)
        out_prefix = out.rstrip("/") + "/"
        out_name = os.path.basename(out)
        plain_out = os.path.abspath(self.out) if "://" not in self.out else self.out
        # folder -> its real path, its symbolic links (None: not listable), whether it is OUT or inside it
        real_folders: dict[str, tuple[str, frozenset[str] | None, bool]] = {}
        filesystems: dict[str, FileSystem] = {}

        def inside(real: str) -> bool:
            return real == out or real.startswith(out_prefix)

        def remote(url: str) -> str:
            """An object's one spelling, from its FileSystem (asked once per bucket)."""
            place = url[: url.find("/", url.find("://") + 3)]
            fs = filesystems.get(place)
            if fs is None:
                fs = filesystems[place] = get_filesystem(url)
            return fs.canonical(url)

        def folder(path: str) -> tuple[str, frozenset[str] | None, bool]:
            """The folder's real path, its symbolic links (one listing, no lstat a file), whether inside OUT."""
            known = real_folders.get(path)
            if known is None:
                real_folder = os.path.realpath(path)
                known = real_folders[path] = (real_folder, _symbolic_links(path), inside(real_folder))
            return known

        urls = [*(_absolute(i) for i in self.inputs), *map(file_url, files)]
        # realpath walks every component: once per folder, not per file. A file that is no link is
        # inside OUT only if its folder is, or if it is OUT itself (its name is OUT's). Local files in
        # folders holding no link, outside OUT, none named as OUT (20,000 small logs in 20 folders):
        # settled by looking at each folder, with no loop over the files in Python
        if all("://" not in i for i in self.inputs) and not any(map(methodcaller("endswith", "/" + out_name), urls)):
            folders = {url[: url.rfind("/")] for url in urls}
            if all(path and not path.endswith("/") for path in folders) and all(
                links == frozenset() and not folder_inside for _, links, folder_inside in map(folder, folders)
            ):
                return
        # else a few string operations and a dict lookup a file
        for url in urls:
            if "://" in url:
                real = remote(url)
            else:
                cut = url.rfind("/")
                if cut > 0 and url[cut - 1] != "/":  # os.path.split's answer, without its cost
                    folder_path, name = url[:cut], url[cut + 1:]
                else:
                    folder_path, name = os.path.split(url)
                real_folder, links, folder_inside = folder(folder_path)
                if links is not None and name not in links and not folder_inside and name != out_name:
                    continue
                path = url if real_folder == folder_path else os.path.join(real_folder, name)
                link = name in links if links is not None else os.path.islink(path)
                real = os.path.realpath(path) if link else path
            if not inside(real):
                continue
            where = "the output folder" if real == out else "inside the output folder"
            plain = os.path.abspath(url) if "://" not in url else url
            spelled = plain == plain_out or plain.startswith(plain_out.rstrip("/") + "/")
            via = "" if spelled else f" (both resolve to {display(out)})"
            raise UsageError(f"input {display(url)} is {where} {display(self.out)}{via}")

    def _refuse_file_as_output(self) -> None:
        if "://" not in self.out and os.path.isfile(self.out):
            raise UsageError(f"--out {display(self.out)} is a file: corral writes a folder of part files there "
                             "(choose another --out)")

    def _earlier_run(self, out_fs: FileSystem) -> Resume | None:
        """The unfinished run journaled in OUT, if any (a finished run's leftover journal is ignored)."""
        found = read_journal(out_fs, self.out)
        try:
            earlier = Resume.from_records(*found) if found else None
        except (KeyError, TypeError, ValueError) as exc:
            if not self.settings.overwrite:
                raise UsageError(f"the journal in {display(self.out)}/_corral is damaged ({type(exc).__name__}: "
                                 f"{exc}): start again with --overwrite") from None
            Journal(out_fs, self.out).remove()  # starting again: what it said no longer matters
            earlier = None
        if earlier is not None and out_fs.exists(join(self.out, "_SUCCESS")):
            try:
                manifest = json.loads(out_fs.read_bytes(join(self.out, "_corral", "manifest.json")))
            except (FileNotFoundError, ValueError):  # not readable (denied): one line, from _look_at_output
                manifest = {}
            if manifest.get("run_id") == earlier.run_id:  # it ended just before removing its journal
                return None
        return earlier

    def _abandon(self, out_fs: FileSystem, earlier: Resume) -> None:
        """``--overwrite`` of an unfinished run: its journal and working data go (not its output)."""
        log.info("discarding the unfinished run %s (--overwrite)", earlier.run_id)
        get_filesystem(earlier.work).remove(earlier.work, recursive=True)
        Journal(out_fs, self.out).remove()

    def _old_output(self, out_fs: FileSystem) -> bool:
        """Whether OUT holds an earlier run's output (replaced only at the commit, with --overwrite)."""
        try:
            existing = out_fs.expand(self.out)
        except FileNotFoundError:
            existing = []
        if not existing and not out_fs.exists(join(self.out, "_SUCCESS")):
            return False
        if not self.settings.overwrite:
            raise UsageError(f"output folder {display(self.out)} already holds output (use --overwrite to replace it)")
        return True

    def _run_record(self, files: list[FileInfo]) -> dict[str, Any]:
        ref = job_ref(self.job_class)
        return {
            "t": "run", "v": 1, "run_id": self.run_id, "job": self._job_name(), "job_ref": ref,
            "code": code_hash(ref.get("path")), "inputs": self.inputs, "fingerprint": fingerprint(files),
            "settings": plan_settings(self.settings), "out": self.out, "work": self.work,
            "replace_old": self.replace_old, "started": self.started, "host": socket.gethostname(),
            "pid": os.getpid(), "corral_version": __version__,
        }

    # --- one stage ------------------------------------------------------------------------------
    def _run_stage(
        self, executor: Executor, job: Job, index: int, step: Step, files: list[FileInfo], last: bool
    ) -> tuple[list[FileInfo], list[tuple[str, str]]]:
        with full_collections_held(collect=False):  # see run()
            plan = self._plan(index, step, files)
        files.clear()  # planned: the listing goes now, not at the run's end (the callers' list; 10,000 files: 1.3 MB)
        partitions = plan["reduce_tasks"]
        record: dict[str, Any] = {k: plan[k] for k in ("stage", "map_tasks", "reduce_tasks", "split_size",
                                                       "input_bytes", "plan", "bounds") if k in plan}
        record["tasks"] = {}
        self.stages.append(record)
        stage_dir = join(self.work, f"stage-{index}")
        base: dict[str, Any] = {"job": job_ref(self.job_class), "args": self.args, "stage": index,
                                "memory_budget": self.settings.memory_budget, "files": tuple(self.side_files)}
        final_spec = self.output.to_json() if last else None  # how the last stage writes its part files
        map_kind = "shuffle" if partitions else ("text" if last else "records")
        map_suffix = {"shuffle": ".bin", "records": ".rec", "text": ""}[map_kind]
        split_kind = "text" if index == 0 else "records"
        planned: list[Sequence[Split]] | None = self._planned_bins.pop(index, None)  # when this run planned it

        fixed = dict(  # what every map task of the stage shares (~10 us a task to make each time)
            base, attempt=1, output_kind=map_kind, partitions=partitions, input_format=type(job).input_format,
            input_errors=type(job).input_errors, input_header=bool(type(job).input_header),
            output_spec=None if partitions else final_spec, bounds=tuple(plan.get("bounds") or ()),
        )

        def map_spec(state: TaskState) -> MapSpec:
            """A map task's spec, made as the task is first submitted: a wave of 10,000 tasks holds the
            specs of those running, not of every task (nor, then, their splits)."""
            j = int(state.name[4:])  # "map-0003"
            if planned is not None:  # the planner's splits, handed to the spec
                splits, planned[j] = planned[j], ()
            else:
                splits = [Split(u, s, e, split_kind) for u, s, e in plan["plan"][j]]
            return MapSpec(**fixed, task=state.name, output=self._output(stage_dir, state.name, 1, map_suffix),
                           splits=tuple(splits))

        maps = [self._task(index, f"map-{j:04d}") for j in range(plan["map_tasks"])]
        self._run_wave(executor, index, "map", maps, record, stage_dir, map_suffix, map_spec)
        outputs = maps
        if partitions:
            reduce_kind, reduce_suffix = ("text", "") if last else ("records", ".rec")
            outputs = [
                self._task(index, (name := f"reduce-{r:04d}"), ReduceSpec(
                    **base, task=name, attempt=1,
                    output=self._output(stage_dir, name, 1, reduce_suffix), output_kind=reduce_kind, partition=r,
                    sources=tuple((m.committed.output, *m.committed.index[r]) for m in maps),  # type: ignore[union-attr,index]
                    output_spec=final_spec,
                ))
                for r in range(partitions)
            ]
            self._run_wave(executor, index, "reduce", outputs, record, stage_dir, reduce_suffix)
        record["intermediate_objects"] = len(maps) if partitions else 0
        results: list[Committed] = [t.committed for t in outputs]  # type: ignore[misc]
        del maps, outputs  # the tasks' states go before the part files are named (10,000 tasks: 1 MB)
        if last:
            return [], self._final_names(results)
        return [FileInfo(o.output, o.bytes_out) for o in results], []

    def _plan(self, index: int, step: Step, files: list[FileInfo]) -> dict[str, Any]:
        """Stage ``index``'s splits per map task and its reduce partitions: journaled, or made and journaled."""
        journaled = self.resume.plan(index) if self.resume else None
        if journaled is not None:
            return journaled
        settings = self.settings
        total = sum(map(file_size, files))
        # tasks on this machine's cores, reading its files: bigger map tasks (corral.planner.task_sizes)
        # the files are where what was listed is: the inputs for the first stage, the working folder after
        listed = self.inputs if index == self.first_stage else [self.work]
        local = self.executor_info.get("cores") is not None and all(map(is_local, listed))
        split_size, bin_size = task_sizes(
            total, settings.split_size, settings.map_bin_size, settings.explicit, self.concurrency,
            local_budget=settings.memory_budget if local else None,
        )
        kind = "text" if index == 0 else "records"
        whole_files = kind == "text" and self.job_class.input_format == "csv"  # quoted fields may hold newlines
        # counted only where it can be refused (a look at each file's name: 20,000 files, ~15 ms)
        small = split_size < SMALL_SPLIT
        if small and (splits := count_splits(files, split_size, kind, whole_files)) > MAX_SMALL_SPLITS:
            raise UsageError(
                f"invalid value for --split-size: {split_size} bytes would cut the {total} bytes of input into "
                f"{splits} splits; splits under 64KB are allowed up to {MAX_SMALL_SPLITS} (use --split-size "
                "64KB or more)"
            )
        bins = plan_map_tasks(files, split_size, bin_size, self.concurrency, kind, whole_files,
                              fixed_bin_size="map_bin_size" in settings.explicit)
        partitions = 0 if step.reduce is None else (step.reducers or choose_reducers(
            total, len(bins), settings.reducers, settings.reduce_bin_size,
            "reduce_bin_size" in settings.explicit, self.concurrency,
        ))
        plan = {
            "t": "stage", "stage": index, "map_tasks": len(bins), "reduce_tasks": partitions,
            "split_size": split_size, "input_bytes": total,
            "plan": tuple(tuple(map(url_start_end, b)) for b in bins),  # a tuple is the smaller
        }
        if step.total_order:
            plan["bounds"] = self._sample_bounds(index, step, bins, partitions)
        assert self.journal is not None
        self._planned_bins[index] = list(bins)  # a list of its own: each map task's spec takes its item
        self.journal.add(plan)
        # written by the lease keeper's thread once a worker is free after the map wave's first tasks
        # are sent (20,000 small files: a 2 MB record to encode and sync, which would else hold the GIL
        # back from their payloads, then take a core from them; _tasks_sent); no commit can be
        # journaled before the plan it belongs to
        if self._keeper is not None:
            self._journal_soon = True
        else:
            self._flush_journal()
        return plan

    def _sample_bounds(self, index: int, step: Step, bins: list[list[Split]], partitions: int) -> list[str]:
        """A total order's key ranges: the keys the stage's map yields for a sample of its input, cut
        at even quantiles (``corral.total_order``). The map runs here, in the driver, on a new job."""
        name = self.job_class.__qualname__
        if step.reduce is None:
            raise UsageError(f"{name}: total_order = True needs a reduce (the order is the reducers' key order)")
        if step.partition is not None:
            raise UsageError(f"{name} defines partition() and total_order = True: keep one of them")
        sampler = self.job_class(self.args).steps()[index]
        windows = sample_windows(bins)
        job = self.job_class
        try:
            keys = sample_keys(sampler, windows, job.input_format, job.input_errors, bool(job.input_header))
        except (InputError, UsageError):
            raise
        except Exception as exc:
            where = f"stage {index + 1}: " if index else ""
            raise JobFailed(f"{where}sampling the keys of a total order: {type(exc).__name__}: {exc}\n"
                            f"{user_traceback(exc)}".rstrip()) from None
        bounds = range_bounds(keys, partitions)
        log.info("total order of stage %d: %d keys sampled from %d windows, %d ranges", index, len(keys),
                 len(windows), len(bounds) + 1)
        return bounds

    def _task(self, stage: int, name: str, spec: ReduceSpec | None = None) -> TaskState:
        """A task's state: committed already if an earlier driver of this run committed it (--resume).
        Without ``spec``, the wave makes it when it first submits the task."""
        commit = self.resume.commit(stage, name) if self.resume else None
        state = TaskState(name, spec if commit is None else None)
        if commit is not None:
            state.committed = Committed.from_result(commit["result"])
            state.reused = True
            state.attempts.append({"attempt": commit["attempt"], "output": commit["output"], "status": "committed",
                                   "reused": True, "stats": commit.get("stats") or {}})
            if "ran" in commit:  # when it ran, in this driver's time: before it started (the report draws it)
                state.attempts[-1].update(start=round(commit["ran"][0] - self.started, 3),
                                          end=round(commit["ran"][1] - self.started, 3))
        return state

    def _output(self, stage_dir: str, task: str, attempt: int, suffix: str) -> str:
        """An attempt's own output name: attempts of a task never share one (its number), nor do an
        earlier driver's (this driver's token, drawn once, not one ``os.urandom`` call an attempt)."""
        return f"{stage_dir}/{task}.a{attempt}-{self._attempt_token}{suffix}"  # join(): stage_dir has no trailing /

    def _final_names(self, results: list[Committed]) -> list[tuple[str, str]]:
        """(committed part file, final name in OUT) for the last stage's outputs: ``part-00003.csv.gz``, or
        with --max-records-per-file ``part-00003-00000.csv.gz``…"""
        return [
            (url, name)
            for n, o in enumerate(results)
            for url, name in zip(o.parts or (), part_names(n, len(o.parts or ()), self.output), strict=True)
        ]

    # --- a wave of tasks ------------------------------------------------------------------------
    def _run_wave(
        self, executor: Executor, stage: int, phase: str, tasks: list[TaskState], record: dict[str, Any],
        stage_dir: str, suffix: str, spec_for: Callable[[TaskState], TaskSpec] | None = None,
    ) -> None:
        tasks_starting()  # the garbage collector runs again from here (corral.collector.setting_up)
        started = time.time()
        self.hook.corral_phase_started(event=PhaseStarted(stage, phase, len(tasks), self.settings))
        wave = Wave(
            executor, tasks,
            output_for=lambda state, attempt: self._output(stage_dir, state.name, attempt, suffix),
            on_start=lambda attempt: self._attempt_started(stage, phase, attempt),
            on_end=lambda attempt, outcome, committed, will_retry: self._attempt_ended(
                stage, phase, attempt, outcome, committed, will_retry),
            retry=self.retry, speculation=self.speculation, leftovers=self.leftovers, check=self._check,
            spec_for=spec_for, after_submitting=self._tasks_sent,
        )
        self.guard.polling = True
        try:
            wave.run()
        except TaskFailedError as exc:
            raise JobFailed(self._failure_message(stage, exc)) from None
        finally:  # a failed job's manifest shows its attempts too (failure kinds, measurements)
            self.guard.polling = False
            for state in tasks:
                if state.attempts:
                    record["tasks"][state.name] = {
                        "phase": phase, "committed_attempt": state.committed_attempt,
                        **({"reused": True} if state.reused else {}),
                        "attempts": tuple(state.attempts),  # 48 bytes, not a growable list's 88
                    }
            record.setdefault("phases", {})[phase] = {
                "seconds": round(time.time() - started, 3),
                "speculative_attempts": wave.speculative, "speculative_won": wave.speculative_won,
            }
            self.speculative["attempts"] += wave.speculative
            self.speculative["won"] += wave.speculative_won
        self.guard.check()  # a signal that came as the last attempt ended
        for state in tasks:
            self._add_counters(state.committed)
        # the phase's commits go out on the keeper's thread while the next phase starts (in order: before
        # any of its own); waiting here for a flush the keeper had begun put up to a big plan's ~40 ms
        # between the waves. The final commit's moves are written before any is made (_commit)
        if self._keeper is not None:
            self._keeper.flush_soon()
        else:
            self._flush_journal()
        self.hook.corral_phase_finished(
            event=PhaseFinished(stage, phase, len(tasks), time.time() - started, self.settings)
        )

    def _tasks_sent(self) -> None:
        """After a wave's round of submissions: the journal's pending plan (``_plan``) goes out now if a
        worker is left idle, else once the first task ends (``_attempt_ended``), or on the journal's
        interval if that comes first. Its encoding (20,000 small files: ~4 MB of run and plan records,
        ~70 ms of CPU) would else take a core from the tasks running on every core."""
        if len(self._running) < self.concurrency:
            self._journal_plan()

    def _journal_plan(self) -> None:
        if self._journal_soon and self._keeper is not None:
            self._journal_soon = False
            self._keeper.flush_soon()

    def _check(self) -> None:
        """Called while a wave waits: stop on a signal, or once another run took the lease over."""
        self.guard.check()
        assert self.lease is not None
        if self.lease.lost is not None:
            self.lease.check()

    def _attempt_started(self, stage: int, phase: str, attempt: Attempt) -> None:
        attempt.entry["start"] = round(time.time() - self.started, 3)
        self._running[(attempt.state.name, attempt.entry["attempt"])] = (stage, phase)
        if self.hook.corral_task_started.get_hookimpls():  # no event made for nobody (corral.ui.plugin)
            self.hook.corral_task_started(
                event=TaskStarted(stage, phase, attempt.state.name, attempt.entry["attempt"], self.settings))

    def _attempt_ended(
        self, stage: int, phase: str, attempt: Attempt, outcome: Outcome, committed: bool, will_retry: bool
    ) -> None:
        attempt.entry["end"] = round(time.time() - self.started, 3)
        self._running.pop((attempt.state.name, attempt.entry["attempt"]), None)
        self._journal_plan()  # a worker is free: the plan, if still pending, goes out on the keeper's thread
        if committed:
            self.committed_here += 1
            assert self.journal is not None
            many = self.journal.add({
                "t": "commit", "stage": stage, "phase": phase, "task": attempt.state.name,
                "attempt": attempt.entry["attempt"], "output": attempt.spec.output,
                "result": attempt.state.committed.to_json(),  # type: ignore[union-attr]
                "stats": outcome.stats,
                "ran": [round(self.started + attempt.entry.get("start", 0.0), 3), round(time.time(), 3)],
            })
            if many and self._keeper is not None:  # written now, not held to the journal's interval
                self._keeper.flush_soon()
        self._tell_finished(stage, phase, attempt, outcome, committed, will_retry)

    def _leftover_ended(self, attempt: Attempt, outcome: Outcome) -> None:
        attempt.entry["end"] = round(time.time() - self.started, 3)
        self._running.pop((attempt.state.name, attempt.entry["attempt"]), None)
        self._tell_finished(attempt.spec.stage, attempt.spec.kind, attempt, outcome, False, False)

    def _tell_finished(
        self, stage: int, phase: str, attempt: Attempt, outcome: Outcome, committed: bool, will_retry: bool
    ) -> None:
        if self.hook.corral_task_finished.get_hookimpls():  # no event made for nobody (corral.progress)
            self.hook.corral_task_finished(event=TaskFinished(
                stage, phase, attempt.state.name, attempt.entry["attempt"], outcome, committed, will_retry,
                self.settings, speculative=bool(attempt.entry.get("speculative")),
            ))

    def _failure_message(self, stage: int, exc: TaskFailedError) -> str:
        where = f"stage {stage + 1} " if len(self.stages) > 1 or stage else ""
        message = f"{where}task {exc.state.name} attempt {exc.attempt}: {exc.failure.describe()}"
        if exc.failure.where():
            message += f"\n  {exc.failure.where()}"
        if exc.failure.traceback:
            message += "\n" + exc.failure.traceback.rstrip()
        return message

    def _task_progress(self, report: dict[str, Any]) -> None:
        """``executor.progress``: a running attempt's counter deltas, passed on to the observers."""
        where = self._running.get((report.get("task"), report.get("attempt")))  # type: ignore[arg-type]
        if where is None or not self.hook.corral_task_progress.get_hookimpls():  # ended meanwhile, or nobody listens
            return
        self.hook.corral_task_progress(event=TaskProgress(
            where[0], where[1], report["task"], report["attempt"],
            [(str(g), str(n), int(a)) for g, n, a in report.get("counters", ())],
            float(report.get("cpu_seconds") or 0.0), self.settings,
        ))

    # --- the commit -----------------------------------------------------------------------------
    def _commit(self, out_fs: FileSystem, final: list[tuple[str, str]]) -> None:
        """Move the committed outputs into OUT (replacing an earlier run's output, --overwrite) so that
        a driver stopped half-way through can finish it on --resume."""
        moves = [(src, join(self.out, name)) for src, name in final]
        assert self.journal is not None
        self.journal.add({"t": "final", "moves": moves})
        self._flush_journal()
        out_fs.remove(join(self.out, "_SUCCESS"))
        if self.replace_old:
            keep = {dst for _, dst in moves}
            if "://" not in self.out:
                _remove_old_entries(self.out, keep)
            else:
                try:
                    old = out_fs.expand(self.out)
                except FileNotFoundError:
                    old = []
                for info in old:
                    if info.url not in keep:
                        out_fs.remove(info.url)
        if self.resume is not None and self.resume.final is not None:  # some were moved by the earlier driver
            moves = [(src, dst) for src, dst in moves if out_fs.exists(src) or not out_fs.exists(dst)]
        self._move_outputs(out_fs, moves)

    def _move_outputs(self, out_fs: FileSystem, moves: list[tuple[str, str]]) -> None:
        out_fs.move_many(moves)

    def _clean_up(self, success: bool) -> bool:
        """Remove what this run no longer needs; return whether it can be resumed (work and journal kept)."""
        assert self.journal is not None
        resumable = not success and (self.committed_here > 0 or self.resume is not None)
        if not resumable:
            try:
                self.journal.remove()
            except OSError as exc:
                log.warning("could not remove the journal: %s", exc)
            if not self.settings.keep_intermediate:
                try:
                    get_filesystem(self.work).remove(self.work, recursive=True)
                except OSError as exc:
                    log.warning("could not remove the working folder %s: %s", display(self.work), exc)
                if not self.settings.work_dir:  # the shared working root, if no other run uses it
                    if self.side_files:  # uploaded side files (OUT's lease: no other run uses them)
                        remove_quietly(join(self.out, "_corral", "work", "_files"), recursive=True)
                    _remove_empty_folder(join(self.out, "_corral", "work"))
        return resumable

    def _flush_journal(self) -> None:
        if self.journal is None:
            return
        try:
            self.journal.flush()
        except OSError as exc:  # the job goes on; only --resume would lose what was not written
            log.warning("could not write the journal: %s", exc)

    # --- counters and manifest ------------------------------------------------------------------
    def _add_counters(self, result: Committed | None) -> None:
        for group, name, amount in (result.counters or ()) if result is not None else ():
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
            "settings": redacted_settings(self.settings),
            "counters": self._plain_counters(),
            "speculative": dict(self.speculative),
            **({"resumed": {"reused_tasks": self.resume.reused}} if self.resume else {}),
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

    def _write_manifest(self, out_fs: FileSystem, name: str, manifest: dict[str, Any]) -> None:
        """The manifest, readable by its owner only where the store has file modes (it holds --arg values)."""
        url = join(self.out, "_corral", name)
        data = manifest_pieces(manifest)
        if "://" in url:
            out_fs.write_bytes(url, b"".join(data))  # one object: a failure half-way must not leave half
            return
        os.makedirs(os.path.dirname(url), exist_ok=True)
        temp = f"{url}.{secrets.token_hex(3)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with writing(url):
                with os.fdopen(fd, "wb", closefd=False) as f:  # every byte, or an error (os.write may write part)
                    for piece in data:
                        f.write(piece)
        except BaseException:
            os.remove(temp)
            raise
        finally:
            os.close(fd)
        os.replace(temp, url)


def redacted_settings(settings: Settings) -> dict[str, Any]:
    """The settings as JSON, with the values of secret options (``--environment``) replaced by
    ``<redacted>`` and their names kept."""
    from corral.config import all_options

    data = settings.to_json()
    for option in all_options():
        if not getattr(option, "secret", False) or data.get(option.dest) is None:
            continue
        value = data[option.dest]
        if isinstance(value, dict):
            data[option.dest] = {k: "<redacted>" for k in value}
        elif isinstance(value, list):
            data[option.dest] = [f"{str(v).partition('=')[0]}=<redacted>" for v in value]
        else:
            data[option.dest] = "<redacted>"
    return data


def _cancel_all(executor: Executor) -> None:
    try:
        executor.cancel_all()
    except Exception as exc:
        log.warning("the %s executor could not cancel its attempts: %s", executor.name or "", exc)


def _close(executor: Executor, bounded: bool) -> None:
    """Close ``executor``; after an interrupt or a failure, wait for it a few seconds at most (a task in
    a thread cannot be stopped, only asked to stop)."""
    if not bounded:
        executor.close()
        return
    closing = threading.Thread(target=executor.close, name="corral-close", daemon=True)
    closing.start()
    closing.join(CLOSE_AFTER_INTERRUPT_SECONDS)
    if closing.is_alive():
        log.warning("tasks still running after %.0f s; not waiting for them", CLOSE_AFTER_INTERRUPT_SECONDS)


def _remove_old_entries(out: str, keep: set[str]) -> None:
    """``--overwrite`` on a local disk: remove what OUT holds of an earlier output, but ``keep`` and
    the names starting with ``_`` or ``.`` (``_corral``). A symbolic link in OUT is removed, never
    followed: what it points to is not the output's (listing OUT as an input would follow it)."""
    import shutil

    for entry in os.scandir(out):
        if entry.name.startswith(("_", ".")) or entry.path in keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


@contextmanager
def _full_disk_stops_the_job() -> Iterator[None]:
    """The driver's own writes into OUT (the commit, the manifest, ``_SUCCESS``) on a full disk: one line
    naming the path, no retry (nothing frees the space meanwhile)."""
    try:
        yield
    except OSError as exc:
        if not disk_full(exc):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        raise JobFailed(f"the disk is full: no space left on device{where}") from None


def _remove_empty_folder(path: str) -> None:
    if "://" in path:
        return  # object stores have no folders: an empty prefix does not exist
    try:
        os.rmdir(path)
    except OSError:
        pass  # not empty (another run's working folder), or gone
