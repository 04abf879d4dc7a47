"""End-of-run advice on ``--backend docker`` (Lambda's memory sizes and prices, warm containers): the
right-size line with what the smaller setting would have cost, and the leak warning for a job whose
module-level list keeps every task's 20 MB, none for one that does not."""

from __future__ import annotations

import itertools
import json
import math
import textwrap
from pathlib import Path

import pytest

from tests.docker.conftest import corral
from tests.requirements import need

pytestmark = pytest.mark.docker

JOB = '''
    import corral

    KEPT = []  # module-level: it outlives each task in a warm container


    class Job(corral.Job):
        def map_init(self):
            block = bytearray(20 << 20)  # 20 MB per task, touched
            for i in range(0, len(block), 4096):
                block[i] = 1
            KEEP(block)

        def map(self, key, line):
            yield line.split()[0], 1

        def reduce(self, key, values):
            yield key, sum(values)
'''


def run_job(workdir: Path, name: str, keep: str, *flags: str) -> tuple[str, dict]:
    job = workdir / f"{name}.py"
    job.write_text(textwrap.dedent(JOB).replace("KEEP(block)", keep))
    data = workdir / "in.txt"
    data.write_text("".join(f"w{n % 37} some words\n" for n in range(2400)))  # ~40 KB: 9 map tasks of 4 KB
    out = workdir / f"out-{name}"
    done = corral("run", job, data, "--out", out, "--backend", "docker", "--memory", "512", "--max-concurrency", "1",
                  "--split-size", "4KB", "--map-bin-size", "4KB", "--reducers", "1", *flags, cwd=workdir)
    assert done.returncode == 0, done.stderr
    return done.stderr, json.loads((out / "_corral" / "manifest.json").read_text())


def money(usd: float) -> str:
    """Dollars as corral prints them: at least three significant digits."""
    return f"${usd:.{max(6, 2 - math.floor(math.log10(usd)))}f}"


def attempts(m: dict) -> list[dict]:
    return [a for s in m["stages"] for t in s["tasks"].values() for a in t["attempts"]]


def expected_memory_line(m: dict) -> str:
    """The right-size line, from the manifest's measurements and corral-lambda's price table."""
    from corral_lambda.pricing import PRICES

    price = PRICES["x86_64"]
    found = attempts(m)
    peak = max(a["stats"]["max_memory_used_mb"] for a in found)
    smaller = max(128, math.ceil(peak * 1.2))
    billed = [a["stats"]["billed_ms"] for a in found]

    def cost(memory: int) -> float:
        return sum(ms / 1000 * memory / 1024 * price.gb_second + price.request for ms in billed)

    now, then = cost(512), cost(smaller)
    return (f"corral: memory: peak {peak:.0f} MB of 512 MB; --memory {smaller} would have cost {money(then)} "
            f"instead of {money(now)} ({(then - now) / now:+.0%})")


def test_a_job_that_keeps_each_tasks_memory_is_warned_about(workdir):
    stderr, m = run_job(workdir, "leaky", "KEPT.append(block)")
    maps = [a for a in attempts(m) if Path(a["output"]).name.startswith("map-")]
    workers = {a["stats"]["worker"] for a in maps}
    assert len(maps) >= 8 and len(workers) == 1  # one warm container ran every map task
    rss = [a["stats"]["rss_mb"] for a in sorted(maps, key=lambda a: a["end"])]
    assert all(18 <= b - a <= 22 for a, b in itertools.pairwise(rss[1:])), rss  # after the first task
    (warning,) = [line for line in stderr.splitlines() if "warning: worker memory grew" in line]
    container = workers.pop().split("-")[-1][:4]
    tasks = len([a for a in attempts(m) if a["stats"].get("worker") == maps[0]["stats"]["worker"]])
    (leak,) = [a for a in m["advice"] if a["kind"] == "leak"]
    assert 17 <= leak["mb_per_task"] <= 21  # 20 MB per map task; the reduce task after them adds none
    assert warning == (f"corral: warning: worker memory grew {leak['mb_per_task']:.0f} MB per task over {tasks} "
                       f"tasks in container {container} (a module-level object kept between tasks?)")
    (memory,) = [line for line in stderr.splitlines() if line.startswith("corral: memory:")]
    assert memory.startswith(expected_memory_line(m))


def test_a_job_that_does_not_leak_gets_no_warning_and_a_smaller_size(workdir):
    stderr, m = run_job(workdir, "steady", "KEPT[:] = [block]")
    assert "warning" not in stderr, stderr
    (memory,) = [line for line in stderr.splitlines() if line.startswith("corral: memory:")]
    assert memory.startswith(expected_memory_line(m)), memory
    item = next(a for a in m["advice"] if a["kind"] == "memory")
    assert item["memory_mb"] == 512 and item["suggested_mb"] < 512 and item["platform"] == "AWS Lambda"
    assert item["suggested_cost_usd"] < item["cost_usd"]
    # the emulator gives a 512 MB function 512/1769 of a CPU, as Lambda does: a busy task says so
    if item.get("slowdown"):
        assert f"{item['suggested_mb']} MB gets {item['suggested_vcpu']:.2f}" in memory or \
               f"{item['suggested_vcpu']:.2f} at {item['suggested_mb']} MB)" in memory
        assert f": they would run about {item['slowdown']:.1f}x slower there" in memory
    assert m["executor"]["sizing"]["memory_mb"] == 512 and m["executor"]["cores"] is None


def test_the_report_of_a_docker_run_shows_cold_starts_memory_cap_and_billing(workdir, page):
    _, m = run_job(workdir, "steady", "KEPT[:] = [block]")
    out = Path(m["out"])
    made = corral("report", out, cwd=workdir)
    assert made.returncode == 0, made.stderr
    page.context.set_offline(True)
    page.goto((out / "_corral" / "report.html").as_uri())
    page.wait_for_function("() => window.corralReport !== undefined")
    assert page.errors == []
    found = attempts(m)
    colds = page.evaluate("() => Chart.getChart('timeline').data.datasets.flatMap(d => d.data)"
                          ".filter(p => p.cold).length")
    assert colds == sum(1 for a in found if a["stats"]["cold_start"]) >= 1
    cap = page.evaluate("() => Chart.getChart('memory').data.datasets.map(d => d.label)")
    assert cap == ["peak memory (MB)", "memory cap (512 MB)"]
    usd = m["report"]["estimated_cost_usd"]
    cost = page.locator("#cost").inner_text().split("\n")
    assert cost[:2] == ["estimated cost", money(usd)]
    assert page.locator("#advice li").first.inner_text().startswith("memory: peak ")


def test_right_sizing_on_the_cloud_functions_path_uses_its_memory_tiers_and_prices(workdir):
    """``--platform gcf``: Cloud Functions' tiers (128, 256, 512 MB…), CPU and memory priced apart."""
    need("corral_gcf")
    from corral_gcf.pricing import sizing

    stderr, m = run_job(workdir, "steady", "KEPT[:] = [block]", "--platform", "gcf")
    assert "warning" not in stderr, stderr
    found = attempts(m)
    peak = max(a["stats"]["max_memory_used_mb"] for a in found)
    tiers = sizing(512)
    smaller = tiers.smallest_fitting(peak * 1.2)
    assert smaller in tiers.sizes_mb and smaller < 512
    billed = [a["stats"]["billed_ms"] for a in found]
    now, then = tiers.cost(billed, 512), tiers.cost(billed, smaller)

    (memory,) = [line for line in stderr.splitlines() if line.startswith("corral: memory:")]
    assert memory.startswith(f"corral: memory: peak {peak:.0f} MB of 512 MB; --memory {smaller} would have cost "
                             f"{money(then)} instead of {money(now)} ({(then - now) / now:+.0%})"), memory
    assert m["executor"]["sizing"]["platform"] == "Google Cloud Functions"
