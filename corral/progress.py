"""The built-in progress display: one bar per phase on a terminal (tqdm), nothing otherwise."""

from __future__ import annotations

import sys
from typing import Any

from corral.events import JobFinished, PhaseFinished, PhaseStarted, TaskFinished
from corral.hookspecs import hookimpl

_bars: dict[tuple[int, str], Any] = {}
_speculative: dict[tuple[int, str], list[int]] = {}  # [speculative attempts ended, of which won]


class _BarUpdates:
    """The per-attempt hook, registered only while a bar is shown: ``-q``, or a run without a
    terminal, pays nothing a task for it."""

    @hookimpl
    def corral_task_finished(self, event: TaskFinished) -> None:
        bar = _bars.get((event.stage, event.phase))
        if bar is None:
            return
        if event.speculative:
            counts = _speculative.setdefault((event.stage, event.phase), [0, 0])
            counts[0] += 1
            counts[1] += event.committed
            bar.set_postfix_str(f"{counts[0]} speculative, {counts[1]} won", refresh=False)
        if event.committed:
            bar.update(1)


def _watch_tasks() -> None:
    from corral.plugins import registered_while

    registered_while("corral.progress.bar-updates", _BarUpdates, bool(_bars))


@hookimpl
def corral_phase_started(event: PhaseStarted) -> None:
    if not event.settings.progress:
        return
    from tqdm import tqdm

    _bars[(event.stage, event.phase)] = tqdm(
        total=event.tasks, desc=f"stage {event.stage + 1} {event.phase}", unit="task", file=sys.stderr
    )
    _watch_tasks()


@hookimpl
def corral_phase_finished(event: PhaseFinished) -> None:
    bar = _bars.pop((event.stage, event.phase), None)
    _speculative.pop((event.stage, event.phase), None)
    if bar is not None:
        bar.close()
    _watch_tasks()


@hookimpl
def corral_job_finished(event: JobFinished) -> None:
    while _bars:
        _bars.popitem()[1].close()
    _watch_tasks()
