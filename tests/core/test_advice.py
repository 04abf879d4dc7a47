"""End-of-run advice: memory right-sizing with cost, leak warnings, CPU utilisation, skew.

The pure parts are checked on manifests built here (a Lambda price table, attempts with known
measurements); the real runs use the processes and threads backends and the `corral` command.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import corral
from corral.advice import advise, cpu_advice, leak_warnings, memory_advice, skew_advice
from corral.advice import attempts as manifest_attempts
from corral.sizing import MemorySizing
from tests.core.util import manifest, run

CORRAL = str(Path(sys.executable).with_name("corral"))
#: Lambda x86_64's list prices (backends/lambda's table), written out: the core may not import backends.
LAMBDA = dict(platform="AWS Lambda", min_mb=128, max_mb=10240, step_mb=1, mb_per_vcpu=1769, max_vcpus=6.0,
              usd_per_gb_second=0.0000166667, usd_per_request=0.2e-6)


def fake_manifest(attempts: list[dict], memory_mb: int | None = 512, cores: int | None = None) -> dict:
    """A manifest of one stage whose tasks had these attempts (``task`` and ``phase`` keys say whose)."""
    tasks: dict[str, dict] = {}
    for n, a in enumerate(attempts):
        record = tasks.setdefault(a.pop("task", f"map-{n:04d}"), {"phase": a.pop("phase", "map"), "attempts": []})
        a.setdefault("attempt", len(record["attempts"]) + 1)
        a.setdefault("status", "committed")
        record["attempts"].append(a)
    sizing = MemorySizing(memory_mb=memory_mb, **LAMBDA).to_json() if memory_mb else None
    return {"stages": [{"stage": 0, "tasks": tasks}],
            "executor": {"name": "x", "max_concurrency": 2, "cores": cores, "sizing": sizing}}


def test_sizing_rounds_up_to_an_allowed_setting_and_prices_it():
    lam = MemorySizing(memory_mb=512, **LAMBDA)
    assert lam.smallest_fitting(27 * 1.2) == 128
    assert lam.smallest_fitting(300.2) == 301
    assert lam.smallest_fitting(20000) is None
    assert lam.vcpu(1769) == 1.0 and lam.vcpu(512) == pytest.approx(0.289, abs=0.001)
    # 1000 ms at 1024 MB = 1 GB-s, plus one request
    assert lam.cost([1000], 1024) == pytest.approx(0.0000166667 + 0.2e-6)
    tiers = MemorySizing(platform="GCF", memory_mb=256, sizes_mb=(128, 256, 512, 1024),
                         vcpus=(0.083, 0.167, 0.333, 0.583), usd_per_gb_second=0.0000025,
                         usd_per_vcpu_second=0.000024, billing_increment_ms=100)
    assert tiers.smallest_fitting(130) == 256 and tiers.smallest_fitting(2000) is None
    assert tiers.vcpu(512) == 0.333
    # 150 ms is billed as 200 ms, memory and CPU priced apart
    assert tiers.cost([150], 512) == pytest.approx(0.2 * (0.5 * 0.0000025 + 0.333 * 0.000024))
    assert MemorySizing.from_json(tiers.to_json()) == tiers


def test_memory_advice_names_the_smaller_setting_and_both_costs():
    runs = [{"stats": {"max_memory_used_mb": peak, "billed_ms": 20_000, "memory_size_mb": 512}}
            for peak in (22, 27, 25)]
    m = fake_manifest(runs)
    lam = MemorySizing(memory_mb=512, **LAMBDA)
    now, then = lam.cost([20_000] * 3, 512), lam.cost([20_000] * 3, 128)
    item = memory_advice(m, list(manifest_attempts(m)))
    assert item["suggested_mb"] == 128 and item["peak_mb"] == 27
    percent = round((then - now) / now * 100)
    assert item["message"] == (f"memory: peak 27 MB of 512 MB; --memory 128 would have cost ${then:.6f} instead of "
                               f"${now:.6f} ({percent:+d}%)")
    assert percent == -75  # the duration cost falls by 75%; the requests (a 1000th of it) cost the same


def test_memory_advice_warns_without_headroom_and_after_out_of_memory():
    tight = fake_manifest([{"stats": {"max_memory_used_mb": 480, "billed_ms": 100}}])
    item = memory_advice(tight, list(manifest_attempts(tight)))
    assert item["level"] == "warning"
    assert item["message"] == "memory: peak 480 MB of 512 MB leaves less than 20% headroom; --memory 576 would be safer"
    oom = fake_manifest([{"status": "failed", "stats": {"max_memory_used_mb": 512},
                          "failure": {"kind": "out of memory", "message": "ran out of memory at the 512 MB limit"}},
                         {"stats": {"max_memory_used_mb": 300, "billed_ms": 100}, "task": "map-0000"}])
    item = memory_advice(oom, list(manifest_attempts(oom)))
    assert item["message"] == "memory: 1 attempt(s) ran out of memory at 512 MB; try --memory 1024"


def test_memory_advice_says_when_a_smaller_size_would_be_slower():
    """Lambda's CPU share grows with memory: a task using all of 512 MB's 0.29 vCPU is CPU-bound."""
    runs = [{"stats": {"max_memory_used_mb": 40, "billed_ms": 10_000, "seconds": 10.0, "cpu_seconds": 2.8}}]
    m = fake_manifest(runs)
    item = memory_advice(m, list(manifest_attempts(m)))
    assert item["cpu_bound"] is True and item["slowdown"] == pytest.approx(2.8 / 10 / (128 / 1769), rel=0.01)
    lam = MemorySizing(memory_mb=512, **LAMBDA)
    slow = lam.cost([10_000 * item["slowdown"]], 128)
    assert item["message"].endswith(
        "; but the tasks were CPU-bound (0.28 of the 0.29 vCPU AWS Lambda gives 512 MB; 128 MB gets 0.07): "
        f"they would run about 3.9x slower there, for about ${slow:.7f}")  # no size keeps the CPU for much less
    # at a rounding edge (4.949x) the line and the manifest give the same figure: the line said 4.9, the
    # manifest 4.95, and a reader of both (CI's Docker test) saw 5.0 against 4.9
    edge = fake_manifest([{"stats": {"max_memory_used_mb": 40, "billed_ms": 10_000, "seconds": 10.0,
                                     "cpu_seconds": 3.581}}])
    item = memory_advice(edge, list(manifest_attempts(edge)))
    assert item["slowdown"] == 4.9 and "they would run about 4.9x slower there" in item["message"]
    # tasks that used a third of a vCPU at 1769 MB (one vCPU): 128 MB would be slower, 604 MB keeps their CPU
    half = fake_manifest([{"stats": {"max_memory_used_mb": 40, "billed_ms": 10_000, "seconds": 10.0,
                                     "cpu_seconds": 3.4}}], memory_mb=1769)
    item = memory_advice(half, list(manifest_attempts(half)))
    assert item["cpu_bound"] is False and item["cpu_keeping_mb"] == 602
    assert "; but the tasks kept 0.34 vCPU busy (AWS Lambda gives 1.00 at 1769 MB, 0.07 at 128 MB): " \
           "they would run about 4.7x slower there" in item["message"]
    assert item["message"].endswith(f"; --memory 602 keeps that CPU, for ${lam.cost([10_000], 602):.7f}")
    idle = fake_manifest([{"stats": {"max_memory_used_mb": 40, "billed_ms": 10_000, "seconds": 10.0,
                                     "cpu_seconds": 0.3}}])
    assert "CPU-bound" not in memory_advice(idle, list(manifest_attempts(idle)))["message"]


def rss_runs(series: list[float], worker: str = "1-3f2a9c", sizes: list[int] | None = None) -> list[dict]:
    sizes = sizes or [4096] * len(series)
    return [{"end": float(n), "stats": {"worker": worker, "rss_mb": rss, "bytes_in": size}}
            for n, (rss, size) in enumerate(zip(series, sizes, strict=True))]


def test_leak_warning_for_memory_growing_task_after_task():
    leaking = fake_manifest(rss_runs([40 + 21 * n + (n % 2) for n in range(12)]))
    (item,) = leak_warnings(leaking, list(manifest_attempts(leaking)))
    assert item["message"] == ("warning: worker memory grew 21 MB per task over 12 tasks in container 3f2a "
                               "(a module-level object kept between tasks?)")
    local = fake_manifest(rss_runs([40, 61, 81, 102, 122, 143], worker="4242-abcdef"), memory_mb=None, cores=2)
    (item,) = leak_warnings(local, list(manifest_attempts(local)))
    assert "over 6 tasks in worker process 4242 " in item["message"]


def test_leak_warning_for_a_small_steady_leak_over_many_tasks():
    """1 MB a task is 20 GB over a day of 20,000 log files: worth a warning once it shows."""
    m = fake_manifest(rss_runs([25.2 + n + (0.1 if n % 3 else 0) for n in range(43)]))
    (item,) = leak_warnings(m, list(manifest_attempts(m)))
    assert item["message"].startswith("warning: worker memory grew 1.0 MB per task over 43 tasks in container 3f2a ")


def test_leak_warning_for_a_leak_in_one_phase_only():
    """A reduce function that keeps what it saw: flat over 10 map tasks, then 20 MB more after each
    reduce task of the same worker."""
    runs = rss_runs([24.6] * 10 + [44.6 + 20 * n for n in range(8)])
    for n, attempt in enumerate(runs[10:]):
        attempt.update(task=f"reduce-{n:04d}", phase="reduce")
    m = fake_manifest(runs)
    (item,) = leak_warnings(m, list(manifest_attempts(m)))
    assert item["message"] == ("warning: worker memory grew 20 MB per task over 8 tasks in container 3f2a "
                               "(a module-level object kept between tasks?)")


@pytest.mark.parametrize("series", [
    [40, 90, 90, 90, 91, 90, 90, 90, 90],  # the first task's imports and buffers, then flat
    [50, 70, 50, 71, 50, 70, 51, 70, 50],  # up and down: garbage collected every other task
    [40, 42, 44, 46],  # too few tasks to say
    [40, 41, 41.5, 42, 42.5, 43, 43.4, 44],  # creeping by well under 8 MB in all
    [30, 31, 30, 31, 30, 31, 80, 81, 80, 81, 80, 81],  # one jump (a cache filled once), flat before and after
    [40, 40.2, 40.1, 40.3, 40.2, 40.4, 40.3, 40.5] * 8,  # noise around a flat line over many tasks
])
def test_no_leak_warning_for_memory_that_does_not_keep_growing(series):
    m = fake_manifest(rss_runs(series))
    assert leak_warnings(m, list(manifest_attempts(m))) == []


def test_no_leak_warning_when_the_tasks_get_bigger():
    """Measured: a job that holds each task's lines while it runs, on 16 .gz files each bigger than the
    one before (the allocator keeps what the biggest task so far needed), processes backend."""
    rss = [42.0, 47.7, 52.5, 56.7, 61.0, 65.4, 110.1, 114.7, 102.1, 138.8, 143.3, 147.7, 152.1, 156.9, 104.5, 187.2]
    sizes = [110790 + 29400 * n for n in range(16)]
    m = fake_manifest(rss_runs(rss, sizes=sizes))
    assert leak_warnings(m, list(manifest_attempts(m))) == []
    shuffled = fake_manifest(rss_runs(rss, sizes=sizes[::-1]))  # the same memory with tasks getting smaller: a leak
    assert len(leak_warnings(shuffled, list(manifest_attempts(shuffled)))) == 1


def test_skew_names_the_slowest_task_beyond_three_medians():
    runs = [{"task": f"reduce-{n:04d}", "phase": "reduce", "stats": {"seconds": s, "bytes_in": b}}
            for n, (s, b) in enumerate([(1.0, 1000), (1.1, 1100), (0.9, 900), (5.0, 8000), (1.0, 1000)])]
    m = fake_manifest(runs)
    (item,) = skew_advice(list(manifest_attempts(m)))
    assert item["message"] == ("skew: reduce-0003 took 5.0 s, 5x the median reduce task (1.00 s); "
                               "it read 7.8 KB (8.0x the median)")
    hot = fake_manifest([{"stats": {"seconds": s}} for s in (0.004, 0.004, 1.5, 0.004, 0.005)])
    assert skew_advice(list(manifest_attempts(hot)))[0]["message"] == (
        "skew: map-0002 took 1.5 s, 375x the median map task (4 ms)")
    even = fake_manifest([{"stats": {"seconds": s}} for s in (1.0, 1.2, 2.5, 0.9)])
    assert skew_advice(list(manifest_attempts(even))) == []


def test_cpu_utilisation_of_local_workers():
    runs = [{"start": 0.0, "end": 4.0, "stats": {"cpu_seconds": 3.0}},
            {"start": 0.0, "end": 4.0, "stats": {"cpu_seconds": 3.0}, "task": "map-0001"},
            {"start": 4.0, "end": 6.0, "stats": {"cpu_seconds": 0.5}, "task": "reduce-0000", "phase": "reduce"}]
    m = fake_manifest(runs, memory_mb=None, cores=4)
    item = cpu_advice(m, list(manifest_attempts(m)))
    # 6.5 CPU-seconds over 4 s of map and 2 s of reduce: 1.08 of 4 cores
    assert item["message"] == ("cpu: workers kept 1.08 of 4 cores busy (27%) over 6.0 s of tasks; "
                               "only 2 worker(s) ran at once (--max-concurrency)")
    assert cpu_advice(fake_manifest(runs[:1]), []) is None  # remote: no cores to speak of


def write(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


LEAKY = '''
    import corral

    KEPT = []  # module-level: it outlives each task in a warm worker


    class Leaky(corral.Job):
        def map_init(self):
            block = bytearray(20 << 20)  # 20 MB per task, touched
            for i in range(0, len(block), 4096):
                block[i] = 1
            KEPT.append(block)  # LEAK

        def map(self, key, line):
            yield line.split()[0], 1

        def reduce(self, key, values):
            yield key, sum(values)
'''


@pytest.fixture
def many_splits(tmp_path) -> Path:
    data = tmp_path / "in.txt"
    data.write_text("".join(f"w{n % 37} some words\n" for n in range(3000)))  # ~50 KB: 12 tasks of 4 KB
    return data


@pytest.mark.parametrize("leaks", [True, False])
def test_leak_warning_on_the_processes_backend(tmp_path, many_splits, leaks):
    body = LEAKY if leaks else LEAKY.replace("KEPT.append(block)  # LEAK", "KEPT[:] = [block]")
    job = write(tmp_path, "leaky.py", body)
    run = subprocess.run([CORRAL, "run", job, many_splits, "--out", tmp_path / "out", "--backend", "processes",
                          "--max-concurrency", "1", "--split-size", "4KB", "--map-bin-size", "4KB", "--reducers", "1"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    m = manifest(tmp_path / "out")
    maps = [a for a in manifest_attempts(m) if a.phase == "map"]
    assert len(maps) >= 10 and len({a.stats["worker"] for a in maps}) == 1
    warnings = [line for line in run.stderr.splitlines() if "warning: worker memory grew" in line]
    if leaks:
        (line,) = warnings
        pid = maps[0].stats["worker"].split("-")[0]
        per_task = int(line.split("grew ")[1].split(" MB")[0])
        assert 18 <= per_task <= 22, line
        assert line.endswith(f"in worker process {pid} (a module-level object kept between tasks?)")
        assert [a["kind"] for a in m["advice"]].count("leak") == 1
    else:
        assert warnings == [], run.stderr
        assert all(a["kind"] != "leak" for a in m["advice"])
    # the right-size advice of a local run (in the manifest and report; not printed after every local
    # run): its peak, and what a remote backend would need
    assert not [line for line in run.stderr.splitlines() if line.startswith("corral: memory:")]
    (memory,) = [a for a in m["advice"] if a["kind"] == "memory"]
    peak = max(a.stats["peak_memory_mb"] for a in manifest_attempts(m))
    assert memory["message"] == (f"memory: tasks peaked at {peak:.0f} MB (worker RSS); with 20% headroom they "
                                 f"need {peak * 1.2:.0f} MB (--memory on a remote backend)")
    assert (peak > 200) == leaks


REDUCE_LEAK = '''
    import corral

    KEPT = []


    class ReduceLeak(corral.Job):
        def map(self, key, line):
            yield line.split()[0], 1

        def reduce_init(self):
            block = bytearray(20 << 20)  # 20 MB per reduce task, touched
            for i in range(0, len(block), 4096):
                block[i] = 1
            KEPT.append(block)

        def reduce(self, key, values):
            yield key, sum(values)
'''

CYCLES = '''
    import corral


    class Node:
        __slots__ = ("other", "data")


    class Cycles(corral.Job):
        """No leak: every task keeps 20,000 reference cycles (about 4 MB) while it runs, which only the GC
        frees once the task is over."""

        def map_init(self):
            self.pairs = []
            for n in range(20_000):
                a, b = Node(), Node()
                a.other, b.other, a.data, b.data = b, a, str(n) * 10, None
                self.pairs.append(a)

        def map(self, key, line):
            yield line.split()[0], 1
'''


@pytest.mark.parametrize("body, leaks", [(REDUCE_LEAK, True), (CYCLES, False)], ids=["reduce-leak", "cycles"])
def test_leak_warning_of_a_reduce_function_and_none_for_reference_cycles(tmp_path, many_splits, body, leaks):
    """A leak in the reduce function only (the map tasks before it are flat) is found; a job whose tasks
    leave reference cycles behind does not leak: the worker frees them between tasks."""
    job = write(tmp_path, "job.py", body)
    run = subprocess.run([CORRAL, "run", job, many_splits, "--out", tmp_path / "out", "--backend", "processes",
                          "--max-concurrency", "1", "--split-size", "4KB", "--map-bin-size", "4KB", "--reducers", "8"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if "warning: worker memory grew" in line]
    m = manifest(tmp_path / "out")
    rss = [a.stats["rss_mb"] for a in sorted(manifest_attempts(m), key=lambda a: a.end) if a.phase == "map"]
    if leaks:
        pid = next(manifest_attempts(m)).stats["worker"].split("-")[0]
        assert warnings == [f"corral: warning: worker memory grew 20 MB per task over 8 tasks in worker process {pid} "
                            "(a module-level object kept between tasks?)"], run.stderr
    else:
        assert warnings == [], run.stderr
        assert max(rss) - rss[1] < 8, rss  # without a collection between tasks: about 4 MB more after each


def test_cpu_advice_of_a_busy_local_run(tmp_path):
    job = write(tmp_path, "busy.py", '''
        import time
        import corral


        class Busy(corral.Job):
            def map(self, key, line):
                end = time.process_time() + 0.6
                while time.process_time() < end:  # CPU, not sleep
                    pass
                yield line, 1
    ''')
    data = write(tmp_path, "in.txt", "a\nb\n")
    run = subprocess.run([CORRAL, "run", job, data, "--out", tmp_path / "out", "--backend", "processes",
                          "--max-concurrency", "1", "--split-size", "2", "--map-bin-size", "2"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    (line,) = [line for line in run.stderr.splitlines() if line.startswith("corral: cpu:")]
    m = manifest(tmp_path / "out")
    item = next(a for a in m["advice"] if a["kind"] == "cpu")
    runs = list(manifest_attempts(m))
    # the workers' CPU time (2 x 0.6 s burnt) over the time tasks ran (the machine may be busy with more)
    assert 1.2 <= item["cpu_seconds"] <= 1.5, line
    wall = max(a.end for a in runs) - min(a.start for a in runs)
    assert item["wall_seconds"] == pytest.approx(wall, abs=0.01)
    assert item["busy_cores"] == pytest.approx(item["cpu_seconds"] / wall, abs=0.01)
    assert line == f"corral: {item['message']}"
    assert line.startswith(f"corral: cpu: workers kept {item['busy_cores']:.2f} of {item['cores']} cores busy (")


class FirstWords(corral.Job):
    def map(self, key, line):
        yield line.split()[0], 1


def test_advice_is_in_the_manifest(tmp_path, many_splits):
    m = run(FirstWords, many_splits, tmp_path / "out", split_size="4KB", map_bin_size="4KB")
    assert m["advice"] == advise(m)
    assert {a["kind"] for a in m["advice"]} == {"memory"}
    assert m["executor"]["cores"] >= 1 and m["executor"]["sizing"] is None
