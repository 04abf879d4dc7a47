"""Real headless Chromium (Debian's ``chromium``), driven by Playwright: never a downloaded browser.

Skipped without them on a user's machine; a failure in CI (``tests/requirements.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.requirements import need, unavailable

CHROMIUM = os.environ.get("CORRAL_TEST_CHROMIUM", "/usr/bin/chromium")
#: DESIGN.md's flags for headless Chromium here.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CORRAL = str(Path(sys.executable).with_name("corral"))


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    need("playwright.sync_api", "aiohttp", "aiohttp_sse")
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A page whose console errors and uncaught exceptions are collected in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda message: page.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()


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

    def __init__(self, *args, cwd: Path) -> None:
        self.process = subprocess.Popen([CORRAL, *map(str, args)], cwd=cwd, env=clean_env(), text=True,
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
