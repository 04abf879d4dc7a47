"""``corral report OUT`` and ``--report``: one self-contained HTML file, opened in headless Chromium
with the network disabled."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.ui.conftest import CORRAL, clean_env, corral

FLAKY_JOB = '''
    import os
    import time
    import corral


    class Flaky(corral.Job):
        """Fails the first time it meets line n007 (a marker file says it did), then succeeds."""

        def map(self, key, line):
            if line == "n007" and not os.path.exists(self.args["marker"]):
                open(self.args["marker"], "w").close()
                raise ValueError("a flaky failure, first time only")
            time.sleep(0.002)
            self.increment_counter("lines", "seen")
            yield line[:3], 1

        def reduce(self, key, values):
            yield key, sum(values)
'''


@pytest.fixture
def flaky(tmp_path) -> tuple[Path, Path]:
    job = tmp_path / "flaky.py"
    job.write_text(textwrap.dedent(FLAKY_JOB))
    data = tmp_path / "in.txt"
    data.write_text("".join(f"n{n:03d}\n" for n in range(300)))
    return job, data


def manifest_attempts(out: Path) -> set[tuple[str, int, str]]:
    m = json.loads((out / "_corral" / "manifest.json").read_text())
    return {(task, a["attempt"], a.get("status", "running")) for s in m["stages"] for task, t in s["tasks"].items()
            for a in t["attempts"]}


def open_offline(page, path: Path) -> list[str]:
    """Open ``path`` with the network off; return every URL the page asked for."""
    requested: list[str] = []
    page.context.set_offline(True)
    page.context.route("**/*", lambda route: (requested.append(route.request.url),
                                              route.continue_() if route.request.url.startswith("file:")
                                              else route.abort()))
    page.goto(path.as_uri())
    page.wait_for_selector("#timeline")
    page.wait_for_function("() => window.corralReport !== undefined")
    return requested


def test_report_of_a_run_with_a_retry_shows_every_attempt_offline(tmp_path, flaky, page):
    job, data = flaky
    out = tmp_path / "out"
    done = corral("run", job, data, "--out", out, "--split-size", "400", "--map-bin-size", "400", "--reducers", "2",
                  "--arg", f"marker={tmp_path / 'marker'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    attempts = manifest_attempts(out)
    assert ("map-0000", 1, "failed") in attempts and ("map-0000", 2, "committed") in attempts

    made = corral("report", out, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    report = out / "_corral" / "report.html"
    assert made.stdout == f"{report}\n"
    html = report.read_text(encoding="utf-8")
    # self-contained: no URL to load anything from, and a policy that forbids loading anything anyway
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", html)
    assert "default-src 'none'" in html and "Chart.js" in html and "MIT" in html

    requested = open_offline(page, report)
    assert requested == [report.as_uri()]
    assert page.errors == []
    shown = page.evaluate("""() => Chart.getChart("timeline").data.datasets.flatMap(d => d.data.map(p =>
        [p.task, p.attempt, p.status, d.label]))""")
    assert {(task, attempt, status) for task, attempt, status, _ in shown} == attempts
    m = json.loads((out / "_corral" / "manifest.json").read_text())
    tasks = m["stages"][0]["map_tasks"] + m["stages"][0]["reduce_tasks"]
    assert len(shown) == len(attempts) == tasks + 1  # every task once, map-0000 twice (however the planner cut)
    labels = {(task, attempt): label for task, attempt, _, label in shown}
    assert labels[("map-0000", 1)] == "failed (retried or fatal)" and labels[("map-0000", 2)] == "map"
    assert labels[("reduce-0001", 1)] == "reduce"
    assert page.locator("#failures tbody tr").count() == 1
    assert "ValueError: a flaky failure, first time only" in page.locator("#failures").inner_text()
    assert page.locator('[data-counter="lines/seen"]').inner_text() == "300"
    summary = dict(zip(page.locator("#summary span").all_inner_texts(), page.locator("#summary b").all_inner_texts(),
                       strict=True))
    assert summary["records in"] == "300" and summary["records out"] == "30"  # keys n00…n29: the part files' lines
    assert page.locator("#status").inner_text() == "succeeded"
    assert page.locator("#advice li").all_inner_texts() == [a["message"] for a in m["advice"]]
    assert m["advice"][0]["kind"] == "memory"
    page.screenshot(path=tmp_path / "report.png", full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 20_000


def test_report_flag_writes_it_at_the_end_of_a_failed_run_too(tmp_path, flaky, page):
    job, data = flaky
    out = tmp_path / "out"
    done = corral("run", job, data, "--out", out, "--split-size", "400", "--map-bin-size", "400", "--retries", "0",
                  "--report", "--arg", f"marker={tmp_path / 'marker'}", cwd=tmp_path)
    assert done.returncode == 1
    report = out / "_corral" / "report.html"
    assert f"corral: report at {report}" in done.stderr.splitlines()
    assert not (out / "_SUCCESS").exists()
    open_offline(page, report)
    assert page.errors == []
    assert page.locator("#status").inner_text() == "failed"
    assert "ValueError: a flaky failure, first time only" in page.locator("#error").inner_text()
    shown = page.evaluate("() => Chart.getChart('timeline').data.datasets.flatMap(d => d.data).length")
    assert shown == len(manifest_attempts(out))


def test_report_mistakes_are_one_line_and_exit_2(tmp_path):
    missing = corral("report", tmp_path / "nothing", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr == (f"corral: error: no corral run in {tmp_path / 'nothing'}: "
                              f"{tmp_path / 'nothing' / '_corral' / 'manifest.json'} not found\n")
    bad = tmp_path / "bad"
    (bad / "_corral").mkdir(parents=True)
    (bad / "_corral" / "manifest.json").write_text("{not json")
    broken = corral("report", bad, cwd=tmp_path)
    assert broken.returncode == 2
    assert broken.stderr.startswith(f"corral: error: {bad / '_corral' / 'manifest.json'} is not a corral manifest: ")
    assert len(broken.stderr.splitlines()) == 1


def test_report_that_cannot_be_written_says_where_and_output_writes_it_elsewhere(tmp_path, flaky):
    job, data = flaky
    out = tmp_path / "out"
    assert corral("run", job, data, "--out", out, "--arg", f"marker={tmp_path / 'm'}", cwd=tmp_path).returncode == 0
    (out / "_corral" / "report.html").mkdir()  # unwritable as a file, for root too (CI runs as root)
    refused = corral("report", out, cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr == (f"corral: error: cannot write the report to {out / '_corral' / 'report.html'}: "
                              "Is a directory (--output FILE writes it elsewhere)\n")
    elsewhere = tmp_path / "reports" / "run.html"
    made = corral("report", out, "--output", elsewhere, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout == f"{elsewhere}\n" and elsewhere.read_text().startswith("<!doctype html>")


def test_the_vendored_chart_library_is_the_one_recorded():
    """corral/ui/vendor/chart.js.json says which npm release the file is (scripts/vendor_chartjs.py)."""
    import hashlib

    vendor = Path(__file__).resolve().parents[2] / "corral" / "ui" / "vendor"
    record = json.loads((vendor / "chart.js.json").read_text())
    script = (vendor / "chart.umd.min.js").read_bytes()
    assert hashlib.sha256(script).hexdigest() == record["sha256"]
    assert script.startswith(f"/*!\n * Chart.js v{record['version']}\n".encode())
    assert "MIT License" in (vendor / "LICENSE-chart.js.md").read_text()


def attempt(n, status, start, end, **extra):
    stats = extra.pop("stats", {})
    return {"attempt": n, "status": status, "start": start, "end": end,
            "stats": {"seconds": end - start, "bytes_in": 1000, "records_in": 10, **stats}, **extra}


def test_report_draws_speculative_discarded_failed_reused_attempts_and_cold_starts(tmp_path, page):
    """A manifest as the driver writes it after a resumed run with a retry and a speculative duplicate."""
    cold = {"cold_start": True, "max_memory_used_mb": 60, "memory_size_mb": 512, "billed_ms": 900}
    warm = {"cold_start": False, "max_memory_used_mb": 61, "memory_size_mb": 512, "billed_ms": 300}
    tasks = {
        "map-0000": {"phase": "map", "committed_attempt": 1,
                     "attempts": [attempt(1, "committed", 0.1, 1.0, stats=cold)]},
        "map-0001": {"phase": "map", "committed_attempt": 2, "attempts": [
            attempt(1, "cancelled", 0.1, 7.2, stats=cold),  # the straggler, stopped once its duplicate committed
            attempt(2, "committed", 6.0, 7.1, speculative=True, stats=warm)]},
        "map-0002": {"phase": "map", "committed_attempt": 2, "attempts": [
            attempt(1, "failed", 1.0, 1.4, stats=warm, failure={"kind": "out of memory",
                                                                "message": "ran out of memory at the 512 MB limit"}),
            attempt(2, "committed", 1.6, 2.5, stats=warm)]},
        "map-0003": {"phase": "map", "committed_attempt": 1, "reused": True, "attempts": [
            {"attempt": 1, "status": "committed", "reused": True, "stats": {"seconds": 1.0}}]},
        "reduce-0000": {"phase": "reduce", "committed_attempt": 1,
                        "attempts": [attempt(1, "committed", 7.3, 7.9, stats={**warm, "bytes_out": 2048})]},
    }
    manifest = {"job": "logs:Logs", "run_id": "r1", "status": "succeeded", "error": None, "started": 1.7e9,
                "seconds": 8.0, "inputs": ["s3://b/in/"], "out": "s3://b/out", "backend": "lambda",
                "settings": {"lambda_endpoint": "https://lambda.example"}, "counters": {"lines": {"seen": 40}},
                "stages": [{"stage": 0, "map_tasks": 4, "reduce_tasks": 1, "input_bytes": 4000, "tasks": tasks,
                            "plan": [[["s3://b/in/a.gz", 0, 1000]]]}],
                "executor": {"name": "lambda", "max_concurrency": 4, "cores": None, "sizing": None},
                "report": {"invocations": 6, "gb_seconds": 1.55, "estimated_cost_usd": 0.0000271,
                           "memory_mb": 512, "summary": "6 invocations, 1.550 GB-s billed"}}
    out = tmp_path / "run"
    (out / "_corral").mkdir(parents=True)
    (out / "_corral" / "manifest.json").write_text(json.dumps(manifest))
    made = corral("report", out, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    report = out / "_corral" / "report.html"
    html = report.read_text()
    assert "https://" not in html and "http://" not in html  # the endpoint setting is in the data, escaped
    open_offline(page, report)
    assert page.errors == []
    shown = page.evaluate("""() => Chart.getChart("timeline").data.datasets.flatMap(d => d.data.map(p =>
        [p.task, p.attempt, d.label, p.cold]))""")
    labels = {(task, n): (label, cold) for task, n, label, cold in shown}
    assert labels == {
        ("map-0000", 1): ("map", True),
        ("map-0001", 1): ("discarded or cancelled", True),
        ("map-0001", 2): ("speculative attempt", False),
        ("map-0002", 1): ("failed (retried or fatal)", False),
        ("map-0002", 2): ("map", False),
        ("reduce-0000", 1): ("reduce", False),
    }
    assert "1 attempts have no start and end recorded" in page.locator("#timeline-note").inner_text()
    summary = dict(zip(page.locator("#summary span").all_inner_texts(), page.locator("#summary b").all_inner_texts(),
                       strict=True))
    assert summary == {"took": "8.00 s", "tasks": "5", "attempts": "7", "failed attempts": "1", "speculative": "1",
                       "discarded": "1", "reused (resumed)": "1", "cold starts": "2", "input": "3.91 KB",
                       "records in": "30", "records out": "0", "bytes out": "2.00 KB"}  # of this run's attempts
    assert page.locator("#cost").inner_text().startswith("estimated cost\n$0.0000271")
    assert "ran out of memory at the 512 MB limit" in page.locator("#failures").inner_text()
    # a manifest written before corral had advice gets it computed: the right-size line needs prices,
    # which this one lacks; the skew table names the slowest task all the same
    assert page.locator("#skew tbody tr").first.inner_text().split("\t")[:2] == ["map", "map-0001"]


SLOW_JOB = '''
    import time
    import corral


    class Slow(corral.Job):
        def map(self, key, line):
            time.sleep(0.02)
            yield line[:2], 1

        def reduce(self, key, values):
            yield key, sum(values)
'''


def test_report_of_a_resumed_run_draws_the_reused_attempts_before_its_start(tmp_path, page):
    """The driver is killed (SIGKILL) after some map tasks committed; ``--resume --report`` reuses them,
    and the report's timeline has every attempt, the reused ones where the earlier driver ran them."""
    job = tmp_path / "slow.py"
    job.write_text(textwrap.dedent(SLOW_JOB))
    data = tmp_path / "in.txt"
    data.write_text("".join(f"n{n:03d}\n" for n in range(400)))  # 8 map tasks of 50 lines (1 s each)
    out = tmp_path / "out"
    argv = [CORRAL, "run", job, data, "--out", out, "--split-size", "250", "--map-bin-size", "250", "--reducers", "2",
            "--max-concurrency", "1", "--backend", "processes", "--no-speculative"]
    first = subprocess.Popen(list(map(str, argv)), cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    journal = out / "_corral" / "journal.jsonl"
    try:
        deadline = time.monotonic() + 60
        while not (journal.exists() and journal.read_text().count('"t":"commit"') >= 2):
            assert first.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    resumed = subprocess.run(list(map(str, [*argv, "--resume", "--report"])), cwd=tmp_path, env=clean_env(),
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    m = json.loads((out / "_corral" / "manifest.json").read_text())
    entries = [(task, a) for task, t in m["stages"][0]["tasks"].items() for a in t["attempts"]]
    reused = {task for task, a in entries if a.get("reused")}
    assert len(reused) >= 2
    assert all(a["start"] < a["end"] < 0 for task, a in entries if task in reused)  # before this driver started

    open_offline(page, out / "_corral" / "report.html")
    assert page.errors == []
    shown = page.evaluate("""() => Chart.getChart("timeline").data.datasets.flatMap(d => d.data.map(p =>
        [p.task, p.attempt, d.label, p.x[0]]))""")
    assert len(shown) == len(entries)
    assert {task for task, _, label, _ in shown if label == "reused from an earlier run"} == reused
    assert all(start < 0 for task, _, _, start in shown if task in reused)
    assert "no start and end recorded" not in page.locator("#timeline-note").inner_text()
    cpu = next((a for a in m["advice"] if a["kind"] == "cpu"), None)  # this driver's tasks only, not the pause
    assert cpu is None or cpu["wall_seconds"] <= m["seconds"]
