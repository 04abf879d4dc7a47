"""Which containers are a gone emulator's (``corral_emulator.owner``), judged on real processes: a live
one, a zombie (killed, not reaped yet), a pid now another process's, another host's, no labels."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from corral_emulator.owner import HOST, PID, STARTED, owner_gone, owner_labels


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_only_a_certainly_gone_emulator_leaves_orphans():
    mine = owner_labels()
    assert mine[PID] == str(os.getpid()) and mine[HOST] == socket.gethostname()
    assert owner_gone(mine) is False
    assert owner_gone({}) is False  # no labels: not judged
    child = subprocess.Popen(["sleep", "60"])
    try:
        labels = {PID: str(child.pid), HOST: socket.gethostname(),
                  STARTED: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]}
        assert owner_gone(labels) is False
        assert owner_gone({**labels, STARTED: "1"}) is True  # the pid is another process's now
        assert owner_gone({**labels, HOST: "elsewhere"}) is False  # another host's: its pids mean nothing here
        os.kill(child.pid, signal.SIGKILL)
        while _state(child.pid) != "Z":
            time.sleep(0.01)
        assert owner_gone(labels) is True  # a zombie: killed, not reaped
        assert owner_gone({**labels, HOST: "elsewhere"}) is False
    finally:
        child.kill()
        child.wait()
    assert owner_gone(labels) is True  # reaped
