"""Job events, passed to the observer hooks (progress bars, reports, cost estimates hang on these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corral.executor import Outcome

if TYPE_CHECKING:
    from corral.settings import Settings


@dataclass(frozen=True)
class JobStarted:
    job: str
    stages: int
    inputs: list[str]
    out: str
    settings: Settings


@dataclass(frozen=True)
class PhaseStarted:
    stage: int
    phase: str  # "map" or "reduce"
    tasks: int
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
