"""Which emulator process a container belongs to: labels set when the container is created, read back to
find the containers of emulators that have gone (killed with ``kill -9``, their ``stop()`` never ran).

A container is its emulator's orphan only when that is certain: the labels name this host and a pid
whose process has ended (a zombie, killed but not yet reaped by its parent, has ended too) or is another
process now (its start time differs: pids are reused). A container without these labels, or of another
host sharing the Docker engine, is never judged.
"""

from __future__ import annotations

import os
import socket

LABEL = "corral-emulator"
PID = f"{LABEL}.pid"
STARTED = f"{LABEL}.started"
HOST = f"{LABEL}.host"


def owner_labels() -> dict[str, str]:
    """The labels of a container this process starts: its pid, host, and start time where /proc tells it."""
    labels = {PID: str(os.getpid()), HOST: socket.gethostname()}
    stat = _process_stat(os.getpid())
    if stat is not None:
        labels[STARTED] = stat[1]
    return labels


def owner_gone(labels: dict[str, str]) -> bool:
    """Whether the emulator that started a container with ``labels`` has certainly ended."""
    pid = labels.get(PID, "")
    if not pid.isdigit() or labels.get(HOST, socket.gethostname()) != socket.gethostname():
        return False
    stat = _process_stat(int(pid))
    if stat is not None:
        state, started = stat
        return state in ("Z", "X") or labels.get(STARTED, started) != started
    try:  # no /proc (macOS), or it hides others' processes: only whether some process has the pid
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _process_stat(pid: int) -> tuple[str, str] | None:
    """Process ``pid``'s state and start time (clock ticks after boot) from ``/proc/PID/stat``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0].decode(), fields[19].decode()
