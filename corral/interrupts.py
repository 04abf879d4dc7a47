"""Ctrl-C and SIGTERM during a run: stop cleanly once; a second signal exits at once.

While the driver waits for attempts (``polling``), the handler only takes note, and the driver's loop
stops at its next turn (within a fraction of a second): it stops submitting, cancels what runs,
flushes the journal and raises ``Interrupted``. Anywhere else (planning, deploying, committing) the
handler raises ``Interrupted`` at once, as Python's own KeyboardInterrupt would.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any


class Interrupted(KeyboardInterrupt):
    """The run was stopped by SIGINT (exit code 130) or SIGTERM (143)."""

    def __init__(self, signum: int, resumable: bool = False) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum
        self.resumable = resumable  # a journal exists: `--resume` continues the run


class InterruptGuard:
    """Installs the handlers for the duration of a run (main thread only; elsewhere it does nothing).

    SIGINT is left alone when it was ignored at start (a background job of a non-interactive shell),
    as Python itself does."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.polling = False
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(signum)
            if signum == signal.SIGINT and previous is signal.SIG_IGN:
                continue
            self._previous[signum] = previous
            signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a worker forked from the driver: Ctrl-C is the driver's to handle
            if signum != signal.SIGINT:  # anything else ends it, as it would have without this handler
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if self.signum is not None:  # the second one: no more clean-up
            try:
                sys.stderr.flush()
            except Exception:
                pass
            os.write(2, b"corral: interrupted again: exiting now\n")
            os._exit(128 + signum)
        self.signum = signum
        if not self.polling:
            raise Interrupted(signum)

    def check(self) -> None:
        """Raise ``Interrupted`` if a signal came (called by the driver's loop)."""
        if self.signum is not None:
            raise Interrupted(self.signum)
