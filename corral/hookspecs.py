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
    from corral.events import JobFinished, JobStarted, PhaseFinished, PhaseStarted, TaskFinished
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
    The first non-``None`` answer wins; the built-in plugin (fsspec) answers last, for any protocol
    fsspec knows.
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
def corral_task_finished(event: TaskFinished) -> None:
    """Called by the driver after every task attempt ends, whether it succeeded or failed."""


@hookspec
def corral_phase_finished(event: PhaseFinished) -> None:
    """Called by the driver when every task of a phase (a stage's map or reduce wave) is committed."""


@hookspec
def corral_job_finished(event: JobFinished) -> None:
    """Called by the driver once, when the job has succeeded or failed, after the manifest is written."""
