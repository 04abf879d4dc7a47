"""One run per output: a lease on ``OUT/_corral/lock`` with a heartbeat.

The lock holds the run id, the host, the pid (and its start time, where ``/proc`` tells it: pids are
reused) and a heartbeat (seconds since the epoch) that the holder refreshes every ``timeout / 4``
seconds. Another run on the same OUT is refused, naming the holder. A lease whose heartbeat is older
than ``timeout`` (or whose process is gone, on this host: a killed process its parent has not reaped
yet is gone too) is stale: the next run takes it over and says so. A holder that finds its lease taken
(it was paused longer than the timeout: a laptop asleep) stops before writing anything more.

The lock is created with a conditional write where the store has one (``O_EXCL`` on a local disk,
``If-None-Match`` on S3, ``ifGenerationMatch=0`` on GCS) and taken over with a compare-and-swap
(a folder lock on a local disk, ``If-Match`` on S3); on other stores these are a read then a write,
and two runs starting within the same instant could both go ahead.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from corral.errors import CorralError, UsageError
from corral.fs import FileSystem, display, join, store_errors

log = logging.getLogger("corral")

TIMEOUT = 60.0


@dataclass(frozen=True)
class Holder:
    run_id: str
    host: str
    pid: int
    heartbeat: float
    started: str | None = None  #: when the holder's process started (``/proc``), None where unknown

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        try:
            d = json.loads(data)
            started = d.get("started")
            return cls(str(d["run_id"]), str(d["host"]), int(d["pid"]), float(d["heartbeat"]),
                       None if started is None else str(started))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def gone(self) -> bool:
        """Whether the holder's process has ended (known only on this host). A killed process its parent has
        not reaped yet (a zombie) has ended; a process that took over the pid since is not the holder."""
        if self.host != socket.gethostname():
            return False
        stat = _process_stat(self.pid)
        if stat is not None:
            state, started = stat
            return state in ("Z", "X") or (self.started is not None and started != self.started)
        try:  # no /proc (macOS), or it hides others' processes: only whether some process has the pid
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, someone else's
            return False
        return False

    def describe(self) -> str:
        age = max(0.0, time.time() - self.heartbeat)
        return f"run {self.run_id} on host {self.host} (pid {self.pid}, last heartbeat {_age(age)} ago)"


def _process_stat(pid: int) -> tuple[str, str] | None:
    """Process ``pid``'s state (``R``, ``S``, ``Z``…) and start time (clock ticks after boot), from
    ``/proc/PID/stat``; None without /proc or without that process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # after "pid (command)", which may hold spaces
    return fields[0].decode(), fields[19].decode()


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class LeaseLostError(CorralError):
    """Another run took this run's lease over (it found the heartbeat stale)."""


class Lease:
    def __init__(self, fs: FileSystem, out: str, run_id: str, timeout: float = TIMEOUT) -> None:
        self.fs = fs
        self.out = out
        self.url = join(out, "_corral", "lock")
        self.run_id = run_id
        self.timeout = timeout
        self.host = socket.gethostname()
        self.pid = os.getpid()
        stat = _process_stat(self.pid)
        self.started = stat[1] if stat else None  # with the pid: tells this process from a later one
        self.held = False
        self.lost: Holder | None = None  # who took it, once lost
        self._lock = threading.Lock()

    def _content(self) -> bytes:
        return json.dumps(
            {"run_id": self.run_id, "host": self.host, "pid": self.pid, "heartbeat": time.time(),
             **({"started": self.started} if self.started else {})}
        ).encode("utf-8")

    def _ours(self, holder: Holder | None) -> bool:
        return holder is not None and (holder.run_id, holder.pid, holder.host) == (self.run_id, self.pid, self.host)

    def acquire(self) -> None:
        """Take the lease, or raise UsageError naming the run that holds it (or why OUT is not writable)."""
        # the first write to OUT: a store without credentials, unreachable or read-only is one line here
        with store_errors(f"cannot write to the output folder {display(self.out)}"):
            self._acquire()

    def _acquire(self) -> None:
        for _ in range(5):
            try:
                if self.fs.create_new(self.url, self._content()):
                    self.held = True
                    return
                current = self.fs.read_versioned(self.url)
            except FileExistsError:  # lost a race with another run creating it: look again
                continue
            if current is None:  # released meanwhile: try again
                continue
            data, version = current
            holder = Holder.parse(data)
            gone = holder is not None and holder.gone()
            if holder is not None and not gone and time.time() - holder.heartbeat <= self.timeout:
                raise UsageError(
                    f"the output folder {display(self.out)} is in use by {holder.describe()}: "
                    "wait for it to end, or stop it and continue it with --resume"
                )
            if self.fs.replace_if(self.url, self._content(), version):
                if holder is None:
                    log.warning("taking over the output folder's lease: its lock is unreadable")
                else:
                    why = "its process is gone" if gone else f"no heartbeat for {_age(time.time() - holder.heartbeat)}"
                    log.warning("taking over the output folder's lease from run %s on host %s (pid %d): %s",
                                holder.run_id, holder.host, holder.pid, why)
                self.held = True
                return
        raise UsageError(f"could not take the lease on the output folder {display(self.out)}: it keeps changing")

    def rename(self, run_id: str) -> None:
        """Hold the lease as ``run_id`` (``--resume`` continues an earlier run under its id)."""
        with self._lock:
            current = self.fs.read_versioned(self.url)
            if current is None or not self._ours(Holder.parse(current[0])):
                raise LeaseLostError(f"lost the lease on the output folder {display(self.out)}")
            self.run_id = run_id
            if not self.fs.replace_if(self.url, self._content(), current[1]):
                raise LeaseLostError(f"lost the lease on the output folder {display(self.out)}")

    def refresh(self) -> bool:
        """Renew the heartbeat; False (and ``lost`` set) if another run holds the lease now."""
        with self._lock:
            if not self.held:
                return False
            current = self.fs.read_versioned(self.url)
            holder = Holder.parse(current[0]) if current else None
            if current is None or not self._ours(holder):
                return self._lose(holder)
            if self.fs.replace_if(self.url, self._content(), current[1]):
                return True
            return self._still_ours()  # it changed between the read and the write: whose is it now?

    def _still_ours(self) -> bool:
        current = self.fs.read_versioned(self.url)
        holder = Holder.parse(current[0]) if current else None
        return True if self._ours(holder) else self._lose(holder)

    def _lose(self, holder: Holder | None) -> bool:
        self.held = False
        self.lost = holder or Holder("?", "?", 0, 0.0)
        return False

    def check(self) -> None:
        """Raise LeaseLostError if another run holds the lease now (read from the store)."""
        if self.lost is not None or (self.held and not self._still_ours()):
            who = self.lost.describe() if self.lost and self.lost.run_id != "?" else "another run"
            raise LeaseLostError(
                f"this run lost its lease on the output folder {display(self.out)} to {who} (it was "
                "paused longer than the lease timeout, or its lock was removed); stopping without writing more"
            )

    def release(self) -> None:
        with self._lock:
            if not self.held:
                return
            self.held = False
            try:
                current = self.fs.read_versioned(self.url)
                if current is not None and self._ours(Holder.parse(current[0])):
                    self.fs.remove(self.url)
            except OSError as exc:
                log.warning("could not release the lease %s: %s", display(self.url), exc)


class Keeper:
    """A background thread that renews the lease and flushes the journal on time."""

    def __init__(self, lease: Lease, journal: Any, interval: float) -> None:
        self.lease = lease
        self.journal = journal
        self.interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()  # set: look now (stopping, or a flush asked for)
        self._flush_now = False
        self._thread = threading.Thread(target=self._run, name="corral-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def flush_soon(self) -> None:
        """Flush the journal now, on this thread: the caller goes on at once (a big plan's record is
        encoded and synced while the map tasks start). Before ``start``, at its first look."""
        self._flush_now = True
        self._wake.set()

    def _run(self) -> None:
        next_beat = time.monotonic() + self.interval
        tick = min(0.5, self.journal.interval if self.journal else 0.5)
        while True:
            self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if self._flush_now and self.journal is not None:
                    self._flush_now = False
                    self.journal.flush()
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.interval
                    if not self.lease.refresh():
                        if self.journal is not None:
                            self.journal.enabled = False
                        return
                if self.journal is not None and self.journal.due():
                    self.journal.flush()
            except Exception as exc:  # a flaky store: try again at the next tick
                log.warning("could not renew the lease or write the journal: %s", exc)
