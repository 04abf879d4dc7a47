"""Helpers of the live page and report tests: the ``corral`` command, in the foreground or running in the
background. The browser fixtures (``browser``, ``page``: Debian's headless Chromium through Playwright)
are in tests/conftest.py, shared with the docker backend's report test."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

CORRAL = str(Path(sys.executable).with_name("corral"))


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(extra)
    return env


def corral(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``corral ARGS`` as the user types it."""
    return subprocess.run([CORRAL, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=clean_env(),
                          timeout=timeout)


class Running:
    """A ``corral`` command running in the background (its own session, so it can get a Ctrl-C)."""

    def __init__(self, *args, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen([CORRAL, *map(str, args)], cwd=cwd, env=env or clean_env(), text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.stderr_lines: list[str] = []

    def wait_for_line(self, prefix: str, timeout: float = 60) -> str:
        """The first stderr line starting with ``prefix`` (read as the command writes it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                raise AssertionError(f"the command ended before printing {prefix!r}: {self.stderr_lines}")
            self.stderr_lines.append(line.rstrip("\n"))
            if line.startswith(prefix):
                return line.rstrip("\n")
        raise AssertionError(f"no line {prefix!r} within {timeout} s: {self.stderr_lines}")

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        _, rest = self.process.communicate(timeout=timeout)
        self.stderr_lines += rest.splitlines()
        return self.process.returncode, "\n".join(self.stderr_lines)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()
