"""Cooperative cancellation of a running task, for executors that cannot kill it (threads).

The executor runs the task inside ``cancellable(flag)``; the task's loops call ``check()`` between
batches of input and output (once per batch: a thread-local lookup), which raises ``TaskCancelled``
once ``flag.is_set()`` (a ``threading.Event``, or the executor's own record of the attempt).
``run_task`` turns that into a result whose error kind is ``"cancelled"``.
Where no event is set (a worker process, a remote function) ``check()`` does nothing: those tasks
are stopped by ending their process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

_local = threading.local()


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


class TaskCancelled(Exception):
    """The executor cancelled this attempt (a speculative duplicate that lost, an interrupted run)."""


def check() -> None:
    """Raise ``TaskCancelled`` if the attempt running in this thread was cancelled."""
    event = getattr(_local, "event", None)
    if event is not None and event.is_set():
        raise TaskCancelled("the attempt was cancelled")


@contextmanager
def cancellable(flag: CancelFlag) -> Iterator[None]:
    """Run the enclosed task so that setting ``flag`` stops it at its next ``check()``."""
    previous = getattr(_local, "event", None)
    _local.event = flag
    try:
        yield
    finally:
        _local.event = previous
