"""``corral run … --ui``: the live page in real headless Chromium while a slow job runs, its JSON
(``GET /api/state``), and what happens without ``--ui`` (nothing of the server is imported)."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.ui.conftest import Running, corral

SLOW_JOB = '''
    import time
    import corral


    class SlowCount(corral.Job):
        """Every line takes 12 ms and is counted as it goes; every 25th is a bad one."""

        def map(self, key, line):
            time.sleep(0.012)
            self.increment_counter("lines", "seen")
            if line.endswith("0"):
                self.increment_counter("errors", "bad lines")
            yield line[:2], 1

        def reduce(self, key, values):
            yield key, sum(values)
'''


@pytest.fixture
def slow_job(tmp_path) -> tuple[Path, Path]:
    job = tmp_path / "slow.py"
    job.write_text(textwrap.dedent(SLOW_JOB))
    data = tmp_path / "in.txt"
    data.write_text("".join(f"n{n:03d}\n" for n in range(640)))  # 3.2 KB: 4 map tasks of 160 lines (~2 s each)
    return job, data


def read(page, selector: str) -> int:
    return int(page.locator(selector).inner_text().replace(",", ""))


def wait_until(condition, timeout: float, what: str) -> None:
    """Poll ``condition`` (reads of the page) until it holds: the page's CSP forbids evaluated strings."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def get_state(url: str) -> dict:
    with urllib.request.urlopen(url + "api/state", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("application/json")
        return json.load(answer)


def pushed_while_running(url: str, arrived: list[float]) -> None:
    """Note when each state pushed on ``/api/events`` arrives while the run is running (in a thread)."""
    with urllib.request.urlopen(url + "api/events", timeout=30) as stream:
        for line in stream:
            if line.startswith(b"data: "):
                if json.loads(line.removeprefix(b"data: "))["status"] != "running":
                    return
                arrived.append(time.monotonic())


def test_live_page_moves_while_the_job_runs_and_agrees_with_the_manifest(tmp_path, slow_job, page):
    job, data = slow_job
    out = tmp_path / "out"
    run = Running("run", job, data, "--out", out, "--split-size", "800", "--map-bin-size", "800", "--reducers", "2",
                  "--max-concurrency", "2", "--ui", "--ui-linger", "60", cwd=tmp_path)
    try:
        line = run.wait_for_line("corral: live view at ")
        url = line.removeprefix("corral: live view at ")
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        arrived: list[float] = []
        pushes = threading.Thread(target=pushed_while_running, args=(url, arrived), daemon=True)
        pushes.start()
        page.goto(url)
        counter = '[data-counter="lines/seen"]'
        page.wait_for_selector(counter, timeout=20_000)
        wait_until(lambda: read(page, counter) > 0, 20, "a first count")
        first = read(page, counter), read(page, "#tasks-committed")
        page.screenshot(path=tmp_path / "live-1.png", full_page=True)
        # counters move while tasks run (not only when they end), and tasks get committed
        wait_until(lambda: read(page, counter) > first[0] and read(page, "#tasks-committed") > first[1], 30,
                   f"more lines counted and more tasks committed than {first}")
        second = read(page, counter), read(page, "#tasks-committed")
        assert second[0] > first[0] and second[1] > first[1], (first, second)
        assert first[0] < 640  # the first read saw a count of lines in progress
        page.screenshot(path=tmp_path / "live-2.png", full_page=True)
        assert page.locator('[data-counter="errors/bad lines"]').evaluate("e => e.closest('tr').className") == "error"

        # the end: the page shows the final state, the JSON agrees with the manifest
        wait_until(lambda: page.locator("#status").inner_text() == "succeeded", 60, "the job's end")
        pushes.join(timeout=10)
        gaps = [b - a for a, b in itertools.pairwise(arrived)]  # the tick is 1 s; 3 s allows for a loaded host
        assert len(gaps) >= 3 and max(gaps) < 3.0, gaps
        run.wait_for_line("corral: the live view stays at ")
        run.wait_for_line("corral: job succeeded in ")  # the run is over while its page stays up …
        assert not (out / "_corral" / "lock").exists()  # … and OUT is free for the next run
        # a page opened now, while the process lingers at its exit, loads and shows the final state
        late = page.context.new_page()
        late_errors: list[str] = []
        late.on("console", lambda message: late_errors.append(message.text) if message.type == "error" else None)
        late.on("pageerror", lambda error: late_errors.append(str(error)))
        assert late.goto(url).status == 200
        wait_until(lambda: late.locator("#status").inner_text() == "succeeded", 20, "the late page's final state")
        assert read(late, '[data-counter="lines/seen"]') == 640 and late_errors == []
        late.close()
        page.screenshot(path=tmp_path / "live-3.png", full_page=True)
        manifest = json.loads((out / "_corral" / "manifest.json").read_text())
        state = get_state(url)
        assert state["status"] == manifest["status"] == "succeeded"
        assert state["counters"] == manifest["counters"] == {"errors": {"bad lines": 64}, "lines": {"seen": 640}}
        assert state["run_id"] == manifest["run_id"] and state["job"] == manifest["job"]
        tasks = {(s["stage"], name): t for s in manifest["stages"] for name, t in s["tasks"].items()}
        by_phase = {(p["stage"], p["phase"]): p for p in state["phases"]}
        assert by_phase[(0, "map")]["committed"] == manifest["stages"][0]["map_tasks"] == 4
        assert by_phase[(0, "reduce")]["committed"] == manifest["stages"][0]["reduce_tasks"] == 2
        assert state["tasks"] == {"pending": 0, "running": 0, "retrying": 0, "committed": 2, "failed": 0, "total": 2}
        assert len(state["attempts"]) == sum(len(t["attempts"]) for t in tasks.values()) == 6
        assert state["records_in"] == 640
        assert state["records_out"] == 640 + 7  # every map pair (no combiner), then one line per key n0…n6
        assert read(page, "#records-out") == 647
        assert state["advice"] == manifest["advice"]
        assert state["cpu"]["cores"] == manifest["executor"]["cores"] and state["cost"] is None
        assert read(page, counter) == 640 and read(page, "#tasks-committed") == 2
        assert "This is its final state." in page.locator("#footer").inner_text()
        assert page.errors == []
        # the pushed updates: server-sent events, each the same JSON; a page that goes away is no error
        with urllib.request.urlopen(url + "api/events", timeout=10) as events:
            assert events.headers["Content-Type"].startswith("text/event-stream")
            assert events.readline() == b"event: state\r\n"
            assert json.loads(events.readline().decode().removeprefix("data: "))["status"] == "succeeded"
        page.close()
        # Ctrl-C ends the lingering server at once, and the run keeps its success
        run.process.send_signal(signal.SIGINT)
        code, stderr = run.finish(timeout=20)
        assert code == 0, stderr
        assert "Traceback" not in stderr and "Error" not in stderr, stderr
        assert (out / "_SUCCESS").exists()
        with pytest.raises(OSError):
            get_state(url)
    finally:
        run.kill()
    for shot in ("live-1.png", "live-2.png", "live-3.png"):
        assert (tmp_path / shot).stat().st_size > 10_000


def test_the_live_view_refuses_a_port_in_use_with_one_line(tmp_path, slow_job):
    job, data = slow_job
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = corral("run", job, data, "--out", tmp_path / "out", "--ui", "--ui-port", port, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"corral: error: cannot serve the live view on 127.0.0.1:{port} (--ui-host, --ui-port): "
        "address already in use")
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_bad_ui_settings_are_usage_errors(tmp_path, slow_job):
    job, data = slow_job
    done = corral("run", job, data, "--out", tmp_path / "out", "--ui", "--ui-port", "70000", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == ("corral: error: invalid value for --ui-port: 70000 is out of range "
                                   "(must be from 0 to 65535)")
    unknown = corral("run", job, data, "--out", tmp_path / "out", "--ui", "--ui-host", "nowhere.invalid", cwd=tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines()[-1] == (
        "corral: error: cannot serve the live view on nowhere.invalid:0 (--ui-host, --ui-port): "
        "name or service not known")
    # a live view's settings on the command line without --ui are not ignored in silence
    alone = corral("run", job, data, "--out", tmp_path / "out", "--ui-port", "8080", "--ui-linger", "5", cwd=tmp_path)
    assert alone.returncode == 2
    assert alone.stderr.strip().splitlines()[-1] == (
        "corral: error: --ui-port and --ui-linger have no effect without --ui")
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_without_ui_nothing_of_the_web_server_is_imported(tmp_path, slow_job):
    job, data = slow_job
    data.write_text("a\nb\n")
    probe = textwrap.dedent(f"""
        import sys
        from corral.cli import main
        code = main(["run", {str(job)!r}, {str(data)!r}, "--out", {str(tmp_path / "out")!r}, "--quiet"])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("aiohttp", "aiohttp_sse", "playwright")
                        or m in ("corral.ui.server", "corral.ui.state", "corral.ui.report"))
        print(code, loaded)
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.stdout.strip() == "0 []", done.stderr
