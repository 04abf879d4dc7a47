"""Peak memory of a container per invocation, read from its memory cgroup (v1 or v2).

cgroup v1: ``memory.max_usage_in_bytes`` is reset by writing 0 to it. cgroup v2: ``memory.peak`` is reset
(kernel >= 6.12) by writing to it, for reads through the same open file. Where neither reset works
(an older kernel, no permission), the probe samples ``memory.usage_in_bytes`` / ``memory.current`` at a
short interval while the invocation runs and keeps the largest value.
"""

from __future__ import annotations

import os
from pathlib import Path


def _mountinfo() -> list[tuple[str, str, str, str]]:
    """(root, mount point, fstype, super options) of every mount."""
    rows = []
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3:
            rows.append((fields[3], fields[4], tail[0], tail[2]))
    return rows


def _join(mount_root: str, mount_point: str, cgroup_path: str) -> Path | None:
    if mount_root != "/" and cgroup_path.startswith(mount_root):
        cgroup_path = cgroup_path[len(mount_root):]
    elif mount_root != "/":
        return None
    return Path(mount_point) / cgroup_path.lstrip("/")


def cgroup_memory_dir(pid: int) -> tuple[Path, int] | None:
    """The memory cgroup folder of process ``pid`` and its cgroup version, or None."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    mounts = _mountinfo()
    v1_path = v2_path = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            v1_path = path
        elif controllers == "":
            v2_path = path
    if v1_path is not None:
        for root, point, fstype, options in mounts:
            if fstype == "cgroup" and "memory" in options.split(","):
                folder = _join(root, point, v1_path)
                if folder and (folder / "memory.usage_in_bytes").exists():
                    return folder, 1
    if v2_path is not None:
        for root, point, fstype, _ in mounts:
            if fstype == "cgroup2":
                folder = _join(root, point, v2_path)
                if folder and (folder / "memory.current").exists():
                    return folder, 2
    return None


class MemoryProbe:
    """Measures one container's peak memory between ``reset()`` and ``peak()``."""

    def __init__(self, folder: Path, version: int) -> None:
        self.folder = folder
        self.version = version
        self.sampling = False
        self._sampled = 0
        self._peak_fd: int | None = None
        current = "memory.usage_in_bytes" if version == 1 else "memory.current"
        self._current_path = folder / current

    @classmethod
    def for_pid(cls, pid: int) -> MemoryProbe | None:
        found = cgroup_memory_dir(pid)
        return cls(*found) if found else None

    def _read_int(self, path: Path) -> int | None:
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def current(self) -> int | None:
        return self._read_int(self._current_path)

    def reset(self) -> None:
        """Start a measurement (at the start of an invocation)."""
        self._sampled = self.current() or 0
        if self.version == 1:
            try:
                (self.folder / "memory.max_usage_in_bytes").write_text("0")
                self.sampling = False
                return
            except OSError:
                self.sampling = True
                return
        try:
            if self._peak_fd is None:
                self._peak_fd = os.open(self.folder / "memory.peak", os.O_RDWR)
            os.write(self._peak_fd, b"reset\n")
            self.sampling = False
        except OSError:
            self.sampling = True

    def sample(self) -> None:
        value = self.current()
        if value is not None and value > self._sampled:
            self._sampled = value

    def peak(self) -> int | None:
        """Peak bytes since ``reset()``."""
        self.sample()
        if self.sampling:
            return self._sampled or None
        if self.version == 1:
            value = self._read_int(self.folder / "memory.max_usage_in_bytes")
        else:
            try:
                assert self._peak_fd is not None
                os.lseek(self._peak_fd, 0, os.SEEK_SET)
                value = int(os.read(self._peak_fd, 64).split()[0])
            except (OSError, ValueError, IndexError, AssertionError):
                value = None
        if value is None:
            return self._sampled or None
        return max(value, self._sampled)

    def oom_kills(self) -> int | None:
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in (self.folder / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            return None
        return None

    def close(self) -> None:
        if self._peak_fd is not None:
            try:
                os.close(self._peak_fd)
            except OSError:
                pass
            self._peak_fd = None
