"""The progress of tasks running in worker processes, relayed to the driver's process.

Each worker reports through one pipe shared by all (``ProgressRelay.initializer`` installs the sink in
a worker; a pool's ``initializer``). A report is sent as messages of at most ``PIPE_BUF`` bytes, which
a pipe writes whole, so workers need no lock between them: a worker killed in the middle of a report
cannot leave the pipe locked or a message half-written for the others. A thread of the driver reads
them and hands each to the executor's ``progress`` callback.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import select
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from corral.worker import report_progress_to

log = logging.getLogger("corral")

#: A message and its 4-byte length header fit in one atomic pipe write.
MESSAGE_LIMIT = getattr(select, "PIPE_BUF", 512) - 4
_STOP = b"{}"


class ProgressRelay:
    """One pipe from the workers to ``deliver``, called on the relay's thread.

    ``start`` the thread once the pool exists: a driver with no other thread forks its workers
    directly, which is much faster than through a fork server.
    """

    def __init__(self, deliver: Callable[[dict[str, Any]], None]) -> None:
        self._reader, self._writer = multiprocessing.Pipe(duplex=False)
        self._deliver = deliver
        self._thread = threading.Thread(target=self._run, name="corral-progress-relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def initializer(self) -> tuple[Callable[[Connection], None], tuple[Connection]]:
        """``(initializer, initargs)`` for a process pool whose workers report progress."""
        return install_sink, (self._writer,)

    def _run(self) -> None:
        while True:
            try:
                data = self._reader.recv_bytes()
            except (EOFError, OSError):
                return
            if data == _STOP:
                return
            try:
                self._deliver(json.loads(data))
            except Exception as exc:  # a bad report is dropped; the task's result still has the totals
                log.debug("progress report dropped: %s", exc)

    def close(self) -> None:
        try:
            self._writer.send_bytes(_STOP)
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._reader.close()
        self._writer.close()


def install_sink(writer: Connection) -> None:
    """In a worker process: send every running task's progress through ``writer``."""

    def send(report: dict[str, Any]) -> None:
        for message in _messages(report):
            writer.send_bytes(message)

    report_progress_to(send)


def _messages(report: dict[str, Any]) -> list[bytes]:
    """``report`` as JSON messages of at most ``MESSAGE_LIMIT`` bytes each (counters split among them;
    a counter too long for one message on its own is left out: its total comes with the result)."""
    data = json.dumps(report, separators=(",", ":")).encode()
    if len(data) <= MESSAGE_LIMIT:
        return [data]
    counters = report.get("counters") or []
    if len(counters) <= 1:
        return [] if not report.get("cpu_seconds") else _messages({**report, "counters": []})
    half = len(counters) // 2
    return (_messages({**report, "counters": counters[:half]})
            + _messages({**report, "counters": counters[half:], "cpu_seconds": 0.0}))
