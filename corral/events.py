"""Job events, passed to the observer hooks (progress bars, reports, cost estimates hang on these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corral.executor import Outcome

if TYPE_CHECKING:
    from corral.settings import Settings
    from corral.sizing import MemorySizing


@dataclass(frozen=True)
class JobStarted:
    job: str
    stages: int
    inputs: list[str]
    out: str
    settings: Settings
    run_id: str = ""
    backend: str = ""
    concurrency: int = 0  # tasks at once
    cores: int | None = None  # local executors: the cores their workers share (Executor.cores())
    sizing: MemorySizing | None = None  # remote executors: memory settings and prices (Executor.sizing())


@dataclass(frozen=True)
class PhaseStarted:
    stage: int
    phase: str  # "map" or "reduce"
    tasks: int
    settings: Settings


@dataclass(frozen=True)
class TaskStarted:
    stage: int
    phase: str
    task: str
    attempt: int
    settings: Settings


@dataclass(frozen=True)
class TaskProgress:
    """What a running attempt counted since its previous report (deltas, not totals)."""

    stage: int
    phase: str
    task: str
    attempt: int
    counters: list[tuple[str, str, int]]  # (group, name, amount added)
    cpu_seconds: float
    settings: Settings


@dataclass(frozen=True)
class TaskFinished:
    stage: int
    phase: str
    task: str
    attempt: int
    outcome: Outcome
    committed: bool  # this attempt's output is the task's committed output
    will_retry: bool
    settings: Settings
    speculative: bool = False  # a duplicate attempt the driver started for a straggler


@dataclass(frozen=True)
class PhaseFinished:
    stage: int
    phase: str
    tasks: int
    seconds: float
    settings: Settings


@dataclass(frozen=True)
class JobFinished:
    ok: bool
    out: str
    seconds: float
    counters: dict[str, dict[str, int]]
    manifest: dict[str, Any] = field(repr=False)
    error: str | None
    settings: Settings
