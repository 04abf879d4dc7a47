"""The plugin contract: every hook corral calls, in one module.

A plugin is any module or object with functions named like these hooks and decorated with
``corral.hookimpl`` (defined here, next to ``hookspec``, as in datasette). corral's own filesystem,
executors and progress display are plugins registered through these same hooks (see
``corral.plugins``); third-party distributions register theirs with an entry point in the group
``corral``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from typing import Any

    from corral.events import (
        JobFinished,
        JobStarted,
        PhaseFinished,
        PhaseStarted,
        TaskFinished,
        TaskProgress,
        TaskStarted,
    )
    from corral.executor import ExecutorSpec
    from corral.fs import FileSystem, ProtocolInfo
    from corral.options import Command, Option

hookspec = pluggy.HookspecMarker("corral")
#: Marks a plugin's implementation of a hook; a function named like no hook here is an error.
hookimpl = pluggy.HookimplMarker("corral")


@hookspec(firstresult=True)
def corral_filesystem(url: str) -> FileSystem | None:
    """Called whenever corral needs to read or write ``url`` (input, output, working data).

    Return a ``corral.FileSystem`` that serves this URL, or ``None`` to let the next plugin answer.
    The first non-``None`` answer wins. Of the built-in plugins, ``corral.filesystems.local`` answers for
    local paths and ``file://`` URLs, and fsspec's answers last, for any protocol fsspec knows.
    """


@hookspec
def corral_filesystem_protocols() -> list[ProtocolInfo | str]:
    """Called by ``corral backends``. Return the URL protocols this plugin's filesystem serves and can
    use here (its libraries import), each a ``corral.ProtocolInfo`` or a plain protocol name."""


@hookspec
def corral_executors() -> list[ExecutorSpec]:
    """Called when corral looks up a backend by name (``--backend NAME``) and by ``corral backends``.

    Return the executors this plugin provides, each a ``corral.ExecutorSpec`` whose ``create`` builds
    the executor from the run's settings.
    """


@hookspec
def corral_options() -> list[Option]:
    """Called when the CLI and the configuration loader are built.

    Return the extra settings this plugin understands (e.g. ``--memory``), each a ``corral.Option``.
    They become flags of ``corral run``, keys of ``[tool.corral]`` / ``corral.toml`` and
    ``CORRAL_*`` environment variables, validated like corral's own.
    """


@hookspec
def corral_commands() -> list[Command]:
    """Called when the ``corral`` command line is built.

    Return extra sub-commands (e.g. ``corral emulator``), each a ``corral.Command``.
    """


@hookspec
def corral_job_started(event: JobStarted) -> None:
    """Called by the driver once, after the inputs are listed and before the first phase starts."""


@hookspec
def corral_phase_started(event: PhaseStarted) -> None:
    """Called by the driver when a phase (a stage's map or reduce wave) is planned and about to start."""


@hookspec
def corral_task_started(event: TaskStarted) -> None:
    """Called by the driver when it hands a task attempt to the executor (a first try, a retry or a
    speculative duplicate), just before the attempt can start running.

    Called one at a time, in order with ``corral_task_finished``, but not always on the driver's
    thread: on the threads backend (``Executor.resolves_futures_unlocked``) the thread whose task
    just ended submits the next one. An implementation must be quick and thread-safe."""


@hookspec
def corral_task_progress(event: TaskProgress) -> None:
    """Called while a task attempt runs, with what it counted since the previous call: counter deltas
    and CPU seconds. Local executors forward them at least every 2 s; remote backends report nothing
    before the attempt ends (its totals then come with ``corral_task_finished``).

    Called from an executor's thread, not the driver's: an implementation must be quick and
    thread-safe. Deltas of an attempt that later fails or is discarded are not part of the job's
    totals; only ``corral_task_finished`` with ``committed`` says what counts.
    """


@hookspec
def corral_task_finished(event: TaskFinished) -> None:
    """Called by the driver after every task attempt ends, whether it succeeded or failed: one call
    at a time, on the driver's thread or (threads backend) on the thread that ran the attempt, as
    ``corral_task_started``."""


@hookspec
def corral_phase_finished(event: PhaseFinished) -> None:
    """Called by the driver when every task of a phase (a stage's map or reduce wave) is committed."""


@hookspec
def corral_job_advice(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Called by the driver once when the job ends (succeeded or failed), before the manifest is
    written, with the manifest as it will be written (its attempts, their measurements, ``executor``).

    Return advice about the run, each a JSON-able dict with at least ``kind`` (e.g. ``"memory"``),
    ``level`` (``"info"`` or ``"warning"``) and ``message`` (one line). The driver stores every
    plugin's advice in the manifest under ``advice``; the built-in ``corral.advice`` plugin gives
    corral's own (memory right-sizing, leaks, CPU utilisation, skew) and prints them all at the end.
    """


@hookspec
def corral_job_finished(event: JobFinished) -> None:
    """Called by the driver once, when the job has succeeded or failed, after the manifest is written."""
