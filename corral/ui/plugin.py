"""The built-in plugin behind ``--ui`` (the live page), ``--report`` and ``corral report OUT``.

Registered like any plugin; it imports the web server and the state only when a run has ``--ui``, and
the report only when one is written, so a plain run pays for neither.
"""

from __future__ import annotations

import argparse
import atexit
import sys
import threading
from typing import TYPE_CHECKING, Any

from corral.errors import UsageError
from corral.hookspecs import hookimpl
from corral.options import Command

if TYPE_CHECKING:
    from corral.events import (
        JobFinished,
        JobStarted,
        PhaseFinished,
        PhaseStarted,
        TaskFinished,
        TaskProgress,
        TaskStarted,
    )
    from corral.ui.server import LiveServer
    from corral.ui.state import LiveState

#: The live views of the runs in progress, by their settings object (every event of a run carries it).
_live: dict[int, tuple[LiveState, LiveServer]] = {}


def _state(event: Any) -> LiveState | None:
    found = _live.get(id(event.settings))
    return found[0] if found else None


class _LiveTasks:
    """The per-attempt hooks, registered only while a live view is on: a run without ``--ui`` pays
    nothing a task for them (a TaskStarted and a TaskFinished made for nobody, two hook calls)."""

    @hookimpl
    def corral_task_started(self, event: TaskStarted) -> None:
        if (state := _state(event)) is not None:
            state.on_task_started(event)

    @hookimpl
    def corral_task_progress(self, event: TaskProgress) -> None:
        if (state := _state(event)) is not None:
            state.on_task_progress(event)

    @hookimpl
    def corral_task_finished(self, event: TaskFinished) -> None:
        if (state := _state(event)) is not None:
            state.on_task_finished(event)


def _watch_tasks(wanted: bool) -> None:
    from corral.plugins import registered_while

    registered_while("corral.ui.live-tasks", _LiveTasks, wanted)


@hookimpl
def corral_job_started(event: JobStarted) -> None:
    settings = event.settings
    if not settings.ui:
        given = [f"--{name}" for name in ("ui-port", "ui-host", "ui-linger") if settings.source(name) == f"--{name}"]
        if given:  # a live view asked for on the command line, but not started: say so, do not ignore it
            raise UsageError(f"{' and '.join(given)} {'has' if len(given) == 1 else 'have'} no effect without --ui")
        return
    try:
        from corral.ui.server import LiveServer, _is_loopback
    except ImportError as exc:
        raise UsageError(f"--ui needs the live view's web server ({exc.name} is not installed): "
                         "pip install 'corral-mapreduce[ui]'") from None
    from corral.ui.state import LiveState

    state = LiveState()
    server = LiveServer(state, settings.ui_host, settings.ui_port)
    url = server.start()
    state.on_job_started(event)
    _live[id(settings)] = (state, server)
    _watch_tasks(True)
    print(f"corral: live view at {url}", file=sys.stderr, flush=True)
    if not _is_loopback(settings.ui_host):
        print(f"corral: warning: the live view listens on {settings.ui_host} (--ui-host): other machines can "
              "read it, without a password", file=sys.stderr, flush=True)


@hookimpl
def corral_phase_started(event: PhaseStarted) -> None:
    if (state := _state(event)) is not None:
        state.on_phase_started(event)


@hookimpl
def corral_phase_finished(event: PhaseFinished) -> None:
    if (state := _state(event)) is not None:
        state.on_phase_finished(event)


@hookimpl
def corral_job_finished(event: JobFinished) -> None:
    settings = event.settings
    if settings.report and event.manifest:
        from corral.ui.report import write_report

        try:
            path = write_report(event.out, manifest=event.manifest)
        except Exception as exc:  # the run's outcome stands; the report can be written again later
            print(f"corral: warning: no report written: {exc}", file=sys.stderr)
        else:
            print(f"corral: report at {path}", file=sys.stderr)
    found = _live.pop(id(settings), None)
    if found is None:
        return
    _watch_tasks(bool(_live))
    state, server = found
    state.on_job_finished(event)
    if not settings.ui_linger:
        server.stop()
        return
    # The page stays up after the run, not inside it: the driver releases OUT's lease and returns
    # meanwhile; the process waits for the lingering pages when it exits (Ctrl-C ends the wait).
    print(f"corral: the live view stays at {server.url} for {settings.ui_linger} s (Ctrl-C to stop it)",
          file=sys.stderr, flush=True)
    timer = threading.Timer(settings.ui_linger, server.stop)
    timer.daemon = True
    timer.start()
    if not _lingering:
        atexit.register(_wait_for_lingering)
    _lingering.append((timer, server))


#: Live views kept up after their run (``--ui-linger``), each with the timer that stops it.
_lingering: list[tuple[threading.Timer, LiveServer]] = []


def _wait_for_lingering() -> None:
    """At exit: wait until every lingering live view has had its time, or Ctrl-C; then stop them."""
    try:
        for timer, _ in _lingering:
            timer.join()
    except KeyboardInterrupt:
        pass
    finally:
        for timer, server in _lingering:
            timer.cancel()
            server.stop()
        _lingering.clear()


def _configure_report(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write the HTML report of the run in OUT (finished or failed; a local folder, s3:// "
                          "or gs://) to OUT/_corral/report.html, and print its path. The file opens offline.")
    parser.add_argument("out", metavar="OUT", help="the output folder or URL of a corral run")
    parser.add_argument("--output", "-o", metavar="FILE",
                        help="write the report here instead (a path or URL), e.g. where OUT is read-only")


def _report(args: argparse.Namespace) -> int:
    from corral.ui.report import write_report

    print(write_report(args.out, output=args.output))
    return 0


@hookimpl
def corral_commands() -> list[Command]:
    return [Command("report", "write a run's HTML report (OUT/_corral/report.html)", _configure_report, _report)]
