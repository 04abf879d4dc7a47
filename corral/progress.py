"""The built-in progress display: one bar per phase on a terminal (tqdm), nothing otherwise."""

from __future__ import annotations

import sys
from typing import Any

from corral.events import JobFinished, PhaseFinished, PhaseStarted, TaskFinished
from corral.hookspecs import hookimpl

_bars: dict[tuple[int, str], Any] = {}


@hookimpl
def corral_phase_started(event: PhaseStarted) -> None:
    if not event.settings.progress:
        return
    from tqdm import tqdm

    _bars[(event.stage, event.phase)] = tqdm(
        total=event.tasks, desc=f"stage {event.stage + 1} {event.phase}", unit="task", file=sys.stderr
    )


@hookimpl
def corral_task_finished(event: TaskFinished) -> None:
    bar = _bars.get((event.stage, event.phase))
    if bar is not None and event.committed:
        bar.update(1)


@hookimpl
def corral_phase_finished(event: PhaseFinished) -> None:
    bar = _bars.pop((event.stage, event.phase), None)
    if bar is not None:
        bar.close()


@hookimpl
def corral_job_finished(event: JobFinished) -> None:
    while _bars:
        _bars.popitem()[1].close()
