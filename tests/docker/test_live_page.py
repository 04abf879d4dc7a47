"""``corral run … --backend docker --ui``: the live page of a remote backend in headless Chromium. The
emulator's fault hook throttles some invokes (``CORRAL_EMULATOR_THROTTLE``); the page shows them with
the platform's message, the cost so far, the memory cap, and says that counters come at a task's end."""

from __future__ import annotations

import json
import textwrap
import time
import urllib.request

import pytest

from tests.docker.conftest import clean_env
from tests.ui.conftest import Running

pytestmark = pytest.mark.docker

JOB = '''
    import time
    import corral


    class Slowish(corral.Job):
        def map(self, key, line):
            time.sleep(0.05)
            self.increment_counter("lines", "seen")
            yield line[:2], 1

        def reduce(self, key, values):
            yield key, sum(values)
'''


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def test_live_page_of_a_docker_run_shows_cost_throttles_and_the_memory_cap(workdir, page):
    job = workdir / "slowish.py"
    job.write_text(textwrap.dedent(JOB))
    data = workdir / "in.txt"
    data.write_text("".join(f"n{n:03d}\n" for n in range(160)))  # 4 map tasks of 40 lines (2 s each)
    out = workdir / "out"
    run = Running("run", job, data, "--out", out, "--backend", "docker", "--memory", "512", "--max-concurrency", "2",
                  "--split-size", "200", "--map-bin-size", "200", "--reducers", "2", "--ui", "--ui-linger", "60",
                  # the emulator's draws are seeded: of the first 6 invokes the 4th is throttled, on every run
                  cwd=workdir, env=clean_env(CORRAL_EMULATOR_THROTTLE="0.4"))
    try:
        url = run.wait_for_line("corral: live view at ", timeout=120).removeprefix("corral: live view at ")
        page.goto(url)
        wait_until(lambda: page.locator("#status").inner_text() == "running", 30, "the run's start")
        assert page.locator("#counters-note").inner_text() == (
            "This backend reports a task's counters when the task ends, not while it runs.")
        assert page.locator("#cpu-box").is_hidden() and page.locator("#cost-box").is_visible()
        wait_until(lambda: page.locator("#status").inner_text() == "succeeded", 120, "the job's end")
        run.wait_for_line("corral: job succeeded in ", timeout=30)
        manifest = json.loads((out / "_corral" / "manifest.json").read_text())
        with urllib.request.urlopen(url + "api/state", timeout=10) as answer:
            state = json.load(answer)
        assert page.errors == []

        # the cost: the executor's estimate at the end, shown as corral prints money
        usd = manifest["report"]["estimated_cost_usd"]
        assert state["cost"]["usd"] == usd and state["cost"]["invocations"] == manifest["report"]["invocations"]
        assert page.locator("#cost").inner_text().startswith("$0.0000")
        assert state["cpu"] is None and state["memory_cap_mb"] == 512
        labels = page.evaluate("() => Chart.getChart('tasks-chart').data.datasets.map(d => d.label)")
        assert "memory cap (512 MB)" in labels
        assert page.locator("#cap-note").inner_text() == "the function's memory: 512 MB"

        # every throttled attempt, with the platform's message, as the manifest has them
        throttled = [(task, a["attempt"], a["stats"]["throttles"]) for s in manifest["stages"]
                     for task, t in s["tasks"].items() for a in t["attempts"] if a["stats"].get("throttles")]
        assert throttled, "the emulator throttled no invoke (CORRAL_EMULATOR_THROTTLE)"
        assert sorted((t["task"], t["attempt"], t["throttles"]) for t in state["throttled"]) == sorted(throttled)
        assert state["throttles"] == manifest["report"]["throttled_invokes"] == sum(n for *_, n in throttled)
        rows = page.locator("#failures tbody tr.throttled").all_inner_texts()
        assert len(rows) == len(throttled)
        assert all("throttled invoke" in row and "TooManyRequestsException: Rate Exceeded." in row for row in rows)
        assert page.locator("#throttles").inner_text() == str(state["throttles"])
    finally:
        run.kill()
