"""Did the kernel's OOM killer end a worker process? (A SIGKILL looks the same from outside.)

Two witnesses, read only when a worker has died of SIGKILL:

* the kernel log (``/dev/kmsg``, readable by root or where ``dmesg_restrict`` is 0): the OOM killer
  writes ``Killed process PID (NAME)`` — by the pid of the outermost pid namespace, so inside a
  container it may name a pid we do not know;
* the ``oom_kill`` count of our memory cgroup (cgroup v2 ``memory.events``; v1 ``memory.oom_control``),
  readable in containers and by unprivileged users: the worker was OOM-killed if the count rose while
  its attempt ran (another process of the same cgroup killed at that moment would be taken for it).
"""

from __future__ import annotations

import os
import re

_KILLED = re.compile(rb"Killed process (\d+) ")
_PROC = "/proc/self"


class OomWatch:
    """Reads the kernel's word on OOM kills (cheap: a small file read per attempt, the log on a death)."""

    def __init__(self, proc: str = _PROC) -> None:
        self._counter = _counter_file(proc)
        self._limit = _limit_file(self._counter) if self._counter else None
        self._killed: set[int] = set()
        self._kmsg: int | None = None
        try:  # from its end: older records are not about our workers
            self._kmsg = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self._kmsg, 0, os.SEEK_END)
        except OSError:
            self.close()

    def count(self) -> int | None:
        """How many processes the OOM killer has killed in our memory cgroup (None: unknown)."""
        if self._counter is None:
            return None
        try:
            with open(self._counter, "rb") as f:
                return parse_oom_kills(f.read())
        except OSError:
            return None

    def killed(self, pid: int, count_before: int | None) -> bool:
        """Whether the OOM killer killed ``pid``, whose attempt started when ``count()`` was
        ``count_before``."""
        self._read_log()
        if pid in self._killed:
            return True
        now = self.count()
        return count_before is not None and now is not None and now > count_before

    def limit_mb(self) -> float | None:
        """The memory limit of our cgroup in MB, if it has one."""
        if self._limit is None:
            return None
        try:
            with open(self._limit) as f:
                text = f.read().strip()
        except OSError:
            return None
        if not text.isdigit() or int(text) >= 1 << 60:  # "max", or v1's "no limit" (about 2**63)
            return None
        return round(int(text) / (1 << 20), 1)

    def _read_log(self) -> None:
        if self._kmsg is None:
            return
        while True:
            try:
                record = os.read(self._kmsg, 8192)
            except BlockingIOError:  # read everything written so far
                return
            except BrokenPipeError:  # records overwritten before we read them: go on with the next
                continue
            except OSError:
                return
            if not record:
                return
            self._killed.update(int(pid) for pid in _KILLED.findall(record))

    def close(self) -> None:
        if self._kmsg is not None:
            os.close(self._kmsg)
            self._kmsg = None


def parse_oom_kills(text: bytes) -> int | None:
    """The ``oom_kill N`` line of ``memory.events`` (v2) or ``memory.oom_control`` (v1)."""
    for line in text.splitlines():
        name, _, value = line.partition(b" ")
        if name == b"oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def _counter_file(proc: str) -> str | None:
    """The file holding our memory cgroup's ``oom_kill`` count, if this is Linux with cgroups."""
    try:
        with open(f"{proc}/cgroup") as f:
            memberships = [line.rstrip("\n").split(":", 2) for line in f]
        with open(f"{proc}/mountinfo") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    candidates = []
    for fields in mounts:
        if "-" not in fields:
            continue
        mount_point, kind = fields[4], fields[fields.index("-") + 1]
        options = fields[-1].split(",")
        for hierarchy, controllers, path in (m for m in memberships if len(m) == 3):
            if kind == "cgroup2" and hierarchy == "0":
                candidates.append((mount_point, path, "memory.events"))
            elif kind == "cgroup" and "memory" in controllers.split(",") and "memory" in options:
                candidates.append((mount_point, path, "memory.oom_control"))
    for mount_point, path, name in candidates:
        # our cgroup's folder; in a container the mount often shows our cgroup as its root instead
        for folder in (os.path.join(mount_point, path.lstrip("/")), mount_point):
            file = os.path.join(folder, name)
            if os.path.exists(file):
                return file
    return None


def _limit_file(counter: str) -> str | None:
    folder = os.path.dirname(counter)
    for name in ("memory.max", "memory.limit_in_bytes"):
        if os.path.exists(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None
