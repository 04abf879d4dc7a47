"""The live state of one run, built from the observer hooks' events: what ``GET /api/state`` returns
and the live page shows (the README documents every field).

Events arrive from the driver's thread and, for progress, from executors' threads; a lock keeps the
state consistent. Counters are the committed attempts' totals plus what running attempts reported so
far; a running attempt's share is dropped when it fails, replaced by its totals when it commits.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from typing import Any

from corral.events import JobFinished, JobStarted, PhaseFinished, PhaseStarted, TaskFinished, TaskProgress, TaskStarted

#: Version of the /api/state layout (a script can check it).
SCHEMA = 1
#: Samples of the history (one a second) kept; older ones are thinned to every other one.
HISTORY = 900
#: Seconds over which counter rates and the CPU in use are measured.
RATE_WINDOW = 10.0
CPU_WINDOW = 5.0
RECENT_ATTEMPTS = 500
RECENT_FAILURES = 100

TaskKey = tuple[int, str]  # (stage, task)
AttemptKey = tuple[int, str, int]  # (stage, task, attempt)


class LiveState:
    """Everything the live page shows, kept up to date by ``on_*`` calls; ``snapshot()`` is its JSON."""

    def __init__(self, clock: Any = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.version = 0  # grows with every change: the server pushes a new state when it moved
        self.job: dict[str, Any] = {}
        self.started = clock()
        self.ended: float | None = None
        self.status = "starting"
        self.error: str | None = None
        self.advice: list[dict[str, Any]] = []
        self.manifest_counters: dict[str, dict[str, int]] | None = None
        self.sizing: Any = None
        self.cores: int | None = None
        self.phases: list[dict[str, Any]] = []
        self.current: tuple[int, str] | None = None
        self.tasks: dict[TaskKey, str] = {}  # state of each task: pending, running, retrying, committed, failed
        self.task_phase: dict[TaskKey, str] = {}
        self.running: dict[AttemptKey, dict[str, Any]] = {}  # attempt -> {"counters", "cpu", "started"}
        self.committed: dict[tuple[str, str], int] = defaultdict(int)
        self.io = {"records_in": 0, "keys_in": 0, "records_out": 0, "bytes_in": 0, "bytes_out": 0}
        self.attempts: deque[dict[str, Any]] = deque(maxlen=RECENT_ATTEMPTS)
        self.failures: deque[dict[str, Any]] = deque(maxlen=RECENT_FAILURES)
        self.retries = 0
        self.speculative = 0  # speculative attempts that ended
        self.throttles = 0
        self.throttled: deque[dict[str, Any]] = deque(maxlen=RECENT_FAILURES)  # attempts throttled, with the message
        self.got_progress = False
        self.cost = {"usd": 0.0, "gb_seconds": 0.0, "invocations": 0, "billed_ms": 0.0}
        self.cpu_samples: deque[tuple[float, float]] = deque()  # (time, CPU-seconds reported)
        self.cpu_total = 0.0
        self.counter_samples: deque[tuple[float, dict[tuple[str, str], int]]] = deque()
        self.history: list[dict[str, Any]] = []
        self._last_sample = 0.0

    # --- events ---------------------------------------------------------------------------------
    def on_job_started(self, event: JobStarted) -> None:
        with self._lock:
            self.job = {"job": event.job, "run_id": event.run_id, "backend": event.backend, "out": event.out,
                        "inputs": list(event.inputs), "stages": event.stages, "concurrency": event.concurrency}
            self.cores, self.sizing = event.cores, event.sizing
            self.status = "running"
            self._touch()

    def on_phase_started(self, event: PhaseStarted) -> None:
        with self._lock:
            self.phases.append({"stage": event.stage, "phase": event.phase, "tasks": event.tasks,
                                "started": self._elapsed(), "seconds": None})
            self.current = (event.stage, event.phase)
            self._touch()

    def on_task_started(self, event: TaskStarted) -> None:
        with self._lock:
            key = (event.stage, event.task)
            self.task_phase[key] = event.phase
            if self.tasks.get(key) not in ("committed", "failed"):
                self.tasks[key] = "running"
            self.running[(event.stage, event.task, event.attempt)] = {
                "counters": defaultdict(int), "cpu": 0.0, "started": self._elapsed()}
            self._touch()

    def on_task_progress(self, event: TaskProgress) -> None:
        with self._lock:
            entry = self.running.get((event.stage, event.task, event.attempt))
            if entry is None:  # it ended meanwhile: its result counts, not this report
                return
            self.got_progress = True
            for group, name, amount in event.counters:
                entry["counters"][(group, name)] += amount
            entry["cpu"] += event.cpu_seconds
            self._add_cpu(event.cpu_seconds)
            self._touch()

    def on_task_finished(self, event: TaskFinished) -> None:
        outcome, stats = event.outcome, event.outcome.stats or {}
        with self._lock:
            key = (event.stage, event.task)
            entry = self.running.pop((event.stage, event.task, event.attempt), None)
            reported = entry["cpu"] if entry else 0.0
            cpu = stats.get("cpu_seconds")
            if isinstance(cpu, int | float) and cpu > reported:
                self._add_cpu(cpu - reported)
            self.task_phase.setdefault(key, event.phase)
            if event.committed:
                self.tasks[key] = "committed"
                for group, name, amount in (outcome.result or {}).get("counters", ()):
                    self.committed[(group, name)] += amount
                for field in self.io:
                    value = stats.get(field)
                    if isinstance(value, int | float):
                        self.io[field] += int(value)
            elif not outcome.ok:
                still_running = any(k[:2] == key for k in self.running)
                if self.tasks.get(key) != "committed":
                    self.tasks[key] = "running" if still_running else ("retrying" if event.will_retry else "failed")
            throttles = int(stats.get("throttles") or 0)
            self.throttles += throttles
            if throttles:
                self.throttled.append({"at": self._elapsed(), "stage": event.stage, "task": event.task,
                                       "attempt": event.attempt, "throttles": throttles,
                                       "message": stats.get("throttle_message") or ""})
            status = "committed" if event.committed else ("discarded" if outcome.ok else "failed")
            if outcome.failure is not None and outcome.failure.kind == "cancelled":
                status = "cancelled"
            self.attempts.append({
                "stage": event.stage, "phase": event.phase, "task": event.task, "attempt": event.attempt,
                "status": status, "seconds": stats.get("seconds"),
                "peak_memory_mb": stats.get("max_memory_used_mb", stats.get("peak_memory_mb")),
                "memory_cap_mb": stats.get("memory_size_mb") or (self.sizing.memory_mb if self.sizing else None),
                "cold_start": stats.get("cold_start"), "worker": stats.get("worker"), "end": self._elapsed(),
                "speculative": event.speculative,
            })
            self.speculative += 1 if event.speculative else 0
            if outcome.failure is not None and status != "cancelled":
                self.failures.append({"at": self._elapsed(), "stage": event.stage, "task": event.task,
                                      "attempt": event.attempt, "kind": outcome.failure.kind,
                                      "message": outcome.failure.describe(), "will_retry": event.will_retry})
                self.retries += 1 if event.will_retry else 0
            billed = stats.get("billed_ms")
            if self.sizing is not None and isinstance(billed, int | float):
                memory = stats.get("memory_size_mb") or self.sizing.memory_mb
                self.cost["usd"] += self.sizing.cost([billed], memory)
                self.cost["gb_seconds"] += billed / 1000 * memory / 1024
                self.cost["invocations"] += 1
                self.cost["billed_ms"] += billed
            self._touch()

    def on_phase_finished(self, event: PhaseFinished) -> None:
        with self._lock:
            for phase in self.phases:
                if (phase["stage"], phase["phase"]) == (event.stage, event.phase):
                    phase["seconds"] = round(event.seconds, 3)
            self._touch()

    def on_job_finished(self, event: JobFinished) -> None:
        with self._lock:
            self.status = "succeeded" if event.ok else "failed"
            self.error = event.error
            self.ended = self._clock()
            self.manifest_counters = event.counters
            self.advice = list(event.manifest.get("advice") or ())
            report = event.manifest.get("report") or {}
            if "estimated_cost_usd" in report:  # the executor's own figures, once the run is over
                self.cost.update(usd=report["estimated_cost_usd"], gb_seconds=report.get("gb_seconds", 0.0),
                                 invocations=report.get("invocations", self.cost["invocations"]))
            self.running.clear()
            self._sample(force=True)
            self._touch()

    # --- bookkeeping ----------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return round(self._clock() - self.started, 3)

    def _touch(self) -> None:
        self.version += 1

    def _add_cpu(self, seconds: float) -> None:
        if seconds > 0:
            self.cpu_samples.append((self._clock(), seconds))
            self.cpu_total += seconds

    def _counters(self) -> dict[tuple[str, str], int]:
        totals: dict[tuple[str, str], int] = defaultdict(int, self.committed)
        for entry in self.running.values():
            for key, amount in entry["counters"].items():
                totals[key] += amount
        return totals

    def tick(self) -> None:
        """Take a sample of the history (the server calls this every second)."""
        with self._lock:
            if self._sample():
                self._touch()

    def _sample(self, force: bool = False) -> bool:
        now = self._clock()
        if not force and now - self._last_sample < 0.9:
            return False
        self._last_sample = now
        counters = self._counters()
        self.counter_samples.append((now, counters))
        while self.counter_samples and now - self.counter_samples[0][0] > RATE_WINDOW:
            self.counter_samples.popleft()
        while self.cpu_samples and now - self.cpu_samples[0][0] > CPU_WINDOW:
            self.cpu_samples.popleft()
        self.history.append({"t": self._elapsed(), **self.io, "tasks_committed": self._count("committed"),
                             "busy_cores": self._busy_cores(), "cost_usd": round(self.cost["usd"], 10)})
        if len(self.history) > HISTORY:
            self.history = self.history[::2]
        return True

    def _busy_cores(self) -> float | None:
        if self.cores is None:
            return None
        window = min(CPU_WINDOW, max(1.0, self._clock() - self.started))
        return round(sum(s for _, s in self.cpu_samples) / window, 3)

    def _count(self, state: str, phase: tuple[int, str] | None = None) -> int:
        return sum(1 for key, value in self.tasks.items()
                   if value == state and (phase is None or (key[0], self.task_phase.get(key)) == phase))

    # --- the JSON -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The state as JSON-able data (``GET /api/state``)."""
        with self._lock:
            now = self._clock()
            counters = self._counters()
            rates: dict[str, dict[str, float]] = defaultdict(dict)
            if self.ended is not None:  # the run is over: its average rates
                span = max(0.001, self.ended - self.started)
                for (group, name), value in counters.items():
                    rates[group][name] = round(value / span, 3)
            elif self.counter_samples:
                then, old = self.counter_samples[0]
                span = now - then
                for (group, name), value in counters.items():
                    rates[group][name] = round((value - old.get((group, name), 0)) / span, 3) if span > 0.5 else 0.0
            grouped: dict[str, dict[str, int]] = defaultdict(dict)
            for (group, name), value in sorted(counters.items()):
                grouped[group][name] = value
            if self.manifest_counters is not None:  # the run is over: the manifest's totals, exactly
                grouped = defaultdict(dict, self.manifest_counters)
            phases = []
            for phase in self.phases:
                where = (phase["stage"], phase["phase"])
                states = {s: self._count(s, where) for s in ("running", "retrying", "committed", "failed")}
                states["pending"] = max(0, phase["tasks"] - sum(states.values()))
                phases.append({**phase, **states})
            current = next((p for p in reversed(phases) if (p["stage"], p["phase"]) == self.current), None)
            busy = self._busy_cores()
            return {
                "schema": SCHEMA,
                **self.job,
                "status": self.status,
                "error": self.error,
                "started": self.started,
                "elapsed": round((self.ended or now) - self.started, 3),
                "stage": current["stage"] if current else None,
                "phase": current["phase"] if current else None,
                "tasks": {k: current[k] for k in ("pending", "running", "retrying", "committed", "failed")}
                         | {"total": current["tasks"]} if current else None,
                "phases": phases,
                "counters": grouped,
                "counter_rates": rates,
                "live_counters": self.got_progress or self.cores is not None,
                **self.io,
                "history": self.history,
                "attempts": list(self.attempts),
                "failures": list(self.failures),
                "throttled": list(self.throttled),
                "retries": self.retries,
                "speculative": self.speculative,
                "throttles": self.throttles,
                "memory_cap_mb": self.sizing.memory_mb if self.sizing else None,
                "cpu": None if self.cores is None else {
                    "cores": self.cores, "busy_cores": busy,
                    "utilisation": round(min(1.0, (busy or 0.0) / self.cores), 3),
                    "cpu_seconds": round(self.cpu_total, 3)},
                "cost": None if self.sizing is None else {
                    "usd": round(self.cost["usd"], 10), "gb_seconds": round(self.cost["gb_seconds"], 6),
                    "invocations": self.cost["invocations"], "platform": self.sizing.platform,
                    "prices": self.sizing.prices},
                "advice": self.advice,
                "version": self.version,
            }
