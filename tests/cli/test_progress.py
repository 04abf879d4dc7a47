"""Progress bars: shown per phase on a terminal, silent when not a TTY or with --quiet."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CORRAL = str(Path(sys.executable).with_name("corral"))  # this environment's console script


def run_on_terminal(args: list[str]) -> str:
    """Run ``corral`` with its stdout and stderr on a pseudo-terminal; return what it showed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec corral on a 100-column terminal
        fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        os.execv(CORRAL, ["corral", *args])
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # the terminal closed: corral exited
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_progress_bars_per_phase_on_a_terminal(tmp_path):
    shown = run_on_terminal(
        ["run", str(EXAMPLES / "wordcount.py"), str(EXAMPLES / "data" / "sample.txt"),
         "--out", str(tmp_path / "out"), "--reducers", "2"]
    )
    assert "stage 1 map: 100%" in shown
    assert "stage 1 reduce: 100%" in shown
    assert "2/2" in shown  # the reduce bar counted both reducers
    assert "job succeeded" in shown


def test_quiet_on_a_terminal_shows_nothing(tmp_path):
    shown = run_on_terminal(
        ["run", str(EXAMPLES / "wordcount.py"), str(EXAMPLES / "data" / "sample.txt"),
         "--out", str(tmp_path / "out"), "--quiet"]
    )
    assert shown == ""


def test_no_progress_bars_when_not_a_terminal(tmp_path):
    result = subprocess.run(
        [CORRAL, "run", str(EXAMPLES / "wordcount.py"), str(EXAMPLES / "data" / "sample.txt"),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, check=True,
    )
    assert "%|" not in result.stderr and "stage 1" not in result.stderr
    assert "job succeeded" in result.stderr
