"""Advice at the end of a run, from its manifest alone: memory right-sizing (with what another setting
would have cost), memory leaks across the tasks of one warm worker, CPU utilisation of local
workers, and skew (a task far slower than its phase's median).

A built-in plugin: ``corral_job_advice`` computes it (the driver stores it in the manifest's
``advice``), ``corral_job_finished`` prints it (an item with ``"print": False`` is for the manifest and
the report only: a local run's memory peak). ``corral report`` shows the manifest's advice, or computes
it again for a manifest that has none.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from corral.hookspecs import hookimpl

if TYPE_CHECKING:
    from corral.events import JobFinished
    from corral.sizing import MemorySizing

#: Right-sizing keeps this share above the peak (a peak of 100 MB needs a 120 MB setting).
HEADROOM = 0.2
#: A task is CPU-bound when it used at least this share of the CPU its function gets.
CPU_BOUND = 0.8
#: A smaller size whose CPU share would make the tasks at least this much slower is said to be slower.
SLOWER = 1.2
#: Leaks: memory after a task growing at least this much per task and this much in all, steadily (from
#: group to group of successive tasks, in most steps), over this many tasks of one worker at least.
LEAK_MB_PER_TASK = 0.5
LEAK_MIN_GROWTH_MB = 8.0
LEAK_MIN_TASKS = 5
LEAK_GROUPS = 8
#: Skew: the slowest task of a phase at least this many times its median, and this many seconds.
SKEW_RATIO = 3.0
SKEW_MIN_SECONDS = 1.0
#: CPU utilisation is only worth saying about tasks that ran this long (phases added up).
CPU_MIN_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a task as the manifest records it (one object each: 10,000 tasks' advice)."""

    stage: int
    phase: str
    task: str
    attempt: int
    status: str
    start: float | None
    end: float | None
    stats: dict[str, Any]
    failure: dict[str, Any] | None
    reused: bool = False  # committed by an earlier driver of the run (--resume)


def attempts(manifest: dict[str, Any]) -> Iterator[Attempt]:
    """Every recorded attempt of the run, stage by stage, task by task."""
    for stage in manifest.get("stages", ()):
        for task, record in stage.get("tasks", {}).items():
            for entry in record.get("attempts", ()):
                yield Attempt(stage.get("stage", 0), record.get("phase", ""), task, entry.get("attempt", 0),
                              entry.get("status", "running"), entry.get("start"), entry.get("end"),
                              entry.get("stats") or {}, entry.get("failure"), bool(entry.get("reused")))


def sizing_of(manifest: dict[str, Any]) -> MemorySizing | None:
    data = (manifest.get("executor") or {}).get("sizing")
    if not data:
        return None
    from corral.sizing import MemorySizing

    return MemorySizing.from_json(data)


def advise(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """corral's advice about the run of ``manifest``: memory, leaks, CPU, skew (each when it applies)."""
    runs = list(attempts(manifest))
    found = [memory_advice(manifest, runs), *leak_warnings(manifest, runs), cpu_advice(manifest, runs),
             *skew_advice(runs)]
    return [item for item in found if item]


def _money(usd: float) -> str:
    """Dollars with at least three significant digits (a small job costs millionths of a dollar)."""
    if usd >= 1:
        return f"${usd:,.2f}"
    decimals = 6 if usd <= 0 else max(6, 2 - math.floor(math.log10(usd)))
    return f"${usd:.{decimals}f}"


def _peak(stats: dict[str, Any]) -> float | None:
    """The platform's measurement of an attempt's memory (Max Memory Used), else the worker's own."""
    value = stats.get("max_memory_used_mb", stats.get("peak_memory_mb"))
    return float(value) if isinstance(value, int | float) else None


def memory_advice(manifest: dict[str, Any], runs: list[Attempt]) -> dict[str, Any] | None:
    """The peak over all attempts against the memory setting, and the smallest setting with 20%
    headroom with what the run would have cost at it (Lambda, GCF: ``executor.sizing``)."""
    peaks = [p for p in (_peak(a.stats) for a in runs) if p is not None]
    if not peaks:
        return None
    peak = max(peaks)
    needed = peak * (1 + HEADROOM)
    sizing = sizing_of(manifest)
    if sizing is None:  # a local run: what a remote backend would need (in the manifest and report, not printed)
        return {"kind": "memory", "level": "info", "print": False, "peak_mb": peak, "needed_mb": round(needed, 1),
                "message": f"memory: tasks peaked at {peak:.0f} MB (worker RSS); with 20% headroom they need "
                           f"{needed:.0f} MB (--memory on a remote backend)"}
    setting = sizing.memory_mb
    out_of_memory = [a for a in runs if (a.failure or {}).get("kind") == "out of memory"]
    data: dict[str, Any] = {"kind": "memory", "level": "info", "peak_mb": peak, "memory_mb": setting,
                            "platform": sizing.platform}
    if out_of_memory:
        bigger = sizing.smallest_fitting(setting * 2)
        data.update(level="warning", out_of_memory=len(out_of_memory), suggested_mb=bigger)
        data["message"] = (f"memory: {len(out_of_memory)} attempt(s) ran out of memory at {setting} MB"
                           + (f"; try {sizing.option} {bigger}" if bigger else ""))
        return data
    suggested = sizing.smallest_fitting(needed)
    billed = [a.stats["billed_ms"] for a in runs if isinstance(a.stats.get("billed_ms"), int | float)]
    data["suggested_mb"] = suggested
    if suggested is None:
        data["message"] = f"memory: peak {peak:.0f} MB of {setting} MB, less than 20% headroom even at the largest size"
        return data
    cost_now, cost_then = sizing.cost(billed, setting), sizing.cost(billed, suggested)
    data.update(cost_usd=round(cost_now, 8), suggested_cost_usd=round(cost_then, 8))
    if suggested > setting:
        data["level"] = "warning"
        data["message"] = (f"memory: peak {peak:.0f} MB of {setting} MB leaves less than 20% headroom; "
                           f"{sizing.option} {suggested} would be safer")
        return data
    if suggested == setting:
        data["message"] = f"memory: peak {peak:.0f} MB of {setting} MB: the setting fits (20% headroom)"
        return data
    saving = f" ({(cost_then - cost_now) / cost_now:+.0%})" if cost_now > 0 else ""
    message = f"memory: peak {peak:.0f} MB of {setting} MB; {sizing.option} {suggested}"
    message += (f" would have cost {_money(cost_then)} instead of {_money(cost_now)}{saving}" if billed
                else " would do (20% headroom)")
    message += _cpu_caveat(sizing, runs, setting, suggested, billed, data)
    data["message"] = message
    return data


def _cpu_caveat(sizing: MemorySizing, runs: list[Attempt], setting: int, suggested: int, billed: list[float],
                data: dict[str, Any]) -> str:
    """Where CPU grows with memory (Lambda), tasks that used more CPU than the smaller size gets would
    run slower there: say so, how much, and which size keeps the CPU they used."""
    measured = [(a.stats["cpu_seconds"], a.stats["seconds"]) for a in runs
                if a.status == "committed" and a.stats.get("cpu_seconds") is not None and a.stats.get("seconds")]
    busy, wall = sum(c for c, _ in measured), sum(s for _, s in measured)
    now, then = sizing.vcpu(setting), sizing.vcpu(suggested)
    if not wall or not now or not then:
        return ""
    used = busy / wall  # vCPUs the tasks kept busy on average
    bound = used >= CPU_BOUND * min(now, 1.0)
    data.update(vcpu_used=round(used, 3), vcpu=round(now, 3), suggested_vcpu=round(then, 3), cpu_bound=bound)
    slower = round(used / then, 1)  # one figure for the line and the manifest, so they never disagree
    if slower < SLOWER:
        return ""
    cost = sizing.cost([ms * slower for ms in billed], suggested)
    data.update(slowdown=slower, suggested_cost_cpu_bound_usd=round(cost, 8))
    if bound:
        text = (f"; but the tasks were CPU-bound ({used:.2f} of the {now:.2f} vCPU {sizing.platform} gives "
                f"{setting} MB; {suggested} MB gets {then:.2f})")
    else:
        text = (f"; but the tasks kept {used:.2f} vCPU busy ({sizing.platform} gives {now:.2f} at {setting} MB, "
                f"{then:.2f} at {suggested} MB)")
    text += f": they would run about {slower:.1f}x slower there, for about {_money(cost)}"
    keeps = _smallest_with_cpu(sizing, used, suggested)
    if keeps is not None and keeps < setting and sizing.cost(billed, keeps) <= 0.9 * sizing.cost(billed, setting):
        data.update(cpu_keeping_mb=keeps, cpu_keeping_cost_usd=round(sizing.cost(billed, keeps), 8))
        text += f"; {sizing.option} {keeps} keeps that CPU, for {_money(sizing.cost(billed, keeps))}"
    return text


def _smallest_with_cpu(sizing: MemorySizing, vcpus: float, at_least_mb: int) -> int | None:
    """The smallest allowed setting from ``at_least_mb`` up that gets ``vcpus`` of CPU."""
    if sizing.mb_per_vcpu and not sizing.sizes_mb:
        return sizing.smallest_fitting(max(at_least_mb, vcpus * sizing.mb_per_vcpu))
    return next((size for size in sizing.choices() if size >= at_least_mb and (sizing.vcpu(size) or 0) >= vcpus),
                None)


def leak_warnings(manifest: dict[str, Any], runs: list[Attempt]) -> list[dict[str, Any]]:
    """Warn for each worker (a warm container, a local worker process) whose memory after a task kept
    growing from task to task: a module-level cache or list that holds on to each task's data.

    A worker's tasks are looked at all together and phase by phase (a leak in the reduce function
    shows only in the reduce tasks); its first task of each is left out (imports, first buffers)."""
    by_worker: dict[str, list[Attempt]] = defaultdict(list)
    for a in runs:
        if a.stats.get("worker") and isinstance(a.stats.get("rss_mb"), int | float):
            by_worker[a.stats["worker"]].append(a)
    local = (manifest.get("executor") or {}).get("cores") is not None
    warnings = []
    for worker, seen in by_worker.items():
        seen.sort(key=lambda a: (a.end if a.end is not None else float("inf")))
        phases = [list(group) for _, group in itertools.groupby(seen, key=lambda a: (a.stage, a.phase))]
        candidates = [*phases, seen] if len(phases) > 1 else phases
        found = [(leak, tasks) for tasks in candidates if (leak := _leak(tasks)) is not None]
        if not found:
            continue
        per_task, tasks = max(found, key=lambda item: item[0] * len(item[1]))
        where = f"worker process {worker.split('-')[0]}" if local else f"container {worker.split('-')[-1][:4]}"
        warnings.append({
            "kind": "leak", "level": "warning", "worker": worker, "mb_per_task": round(per_task, 1),
            "tasks": len(tasks), "rss_mb": [float(a.stats["rss_mb"]) for a in tasks],
            "message": f"warning: worker memory grew {_mb(per_task)} per task over {len(tasks)} tasks in {where} "
                       "(a module-level object kept between tasks?)",
        })
    return warnings


def _leak(tasks: list[Attempt]) -> float | None:
    """The MB per task that the memory after these successive tasks of one worker grew by, if it leaks."""
    if len(tasks) < LEAK_MIN_TASKS:
        return None
    rss = [float(a.stats["rss_mb"]) for a in tasks][1:]
    per_task = _slope(rss)
    if per_task < LEAK_MB_PER_TASK or per_task * (len(rss) - 1) < LEAK_MIN_GROWTH_MB:
        return None
    # steadily: the means of successive groups of tasks grow in most steps (a jump once is no leak;
    # groups smooth the allocator's steps of a MB or so under a small leak)
    groups = min(LEAK_GROUPS, len(rss))
    bounds = [len(rss) * k // groups for k in range(groups + 1)]
    means = [sum(rss[i:j]) / (j - i) for i, j in itertools.pairwise(bounds)]
    step = per_task * len(rss) / groups
    if sum(1 for a, b in itertools.pairwise(means) if b - a > step / 4) < 0.75 * (groups - 1):
        return None
    # not the tasks getting bigger (the allocator keeps memory for the next big task): growth mostly at
    # tasks that read more than every task of the worker before them
    sizes = [float(a.stats.get("bytes_in") or 0) for a in tasks]
    grew = [i for i in range(1, len(rss)) if rss[i] - rss[i - 1] > per_task / 4]
    bigger = [i for i in grew if sizes[i + 1] > max(sizes[: i + 1])]
    if grew and len(bigger) >= len(grew) / 2:
        return None
    return per_task


def _mb(mb: float) -> str:
    return f"{mb:.0f} MB" if mb >= 10 else f"{mb:.1f} MB"


def _slope(values: list[float]) -> float:
    """Least-squares growth per step of ``values``."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    denominator = sum((x - mean_x) ** 2 for x in range(n))
    return sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / denominator if denominator else 0.0


def cpu_advice(manifest: dict[str, Any], runs: list[Attempt]) -> dict[str, Any] | None:
    """Local runs: the share of the machine's cores the workers kept busy while tasks ran."""
    cores = (manifest.get("executor") or {}).get("cores")
    busy = 0.0
    spans: dict[tuple[int, str], tuple[float, float]] = {}  # each phase's first start and last end
    for a in runs:
        if a.stats.get("cpu_seconds") is None or a.start is None or a.end is None or a.reused:
            continue  # (a reused attempt ran before this driver, with the pause between)
        busy += float(a.stats["cpu_seconds"])
        first, last = spans.get((a.stage, a.phase), (a.start, a.end))
        spans[(a.stage, a.phase)] = (min(first, a.start), max(last, a.end))
    if not cores or not spans:
        return None
    wall = sum(last - first for first, last in spans.values())
    if wall < CPU_MIN_SECONDS:
        return None
    share = min(1.0, busy / (wall * cores))
    message = (f"cpu: workers kept {busy / wall:.2f} of {cores} cores busy ({share:.0%}) "
               f"over {wall:.1f} s of tasks")
    workers = (manifest.get("executor") or {}).get("max_concurrency")
    if share < 0.5 and workers and workers < cores:
        message += f"; only {workers} worker(s) ran at once (--max-concurrency)"
    return {"kind": "cpu", "level": "info", "cores": cores, "busy_cores": round(busy / wall, 2),
            "utilisation": round(share, 3), "cpu_seconds": round(busy, 3), "wall_seconds": round(wall, 3),
            "message": message}


def skew_advice(runs: list[Attempt]) -> list[dict[str, Any]]:
    """Name the slowest task of a phase when it took more than 3x the phase's median."""
    phases: dict[tuple[int, str], list[Attempt]] = defaultdict(list)
    for a in runs:
        if a.status == "committed" and isinstance(a.stats.get("seconds"), int | float):
            phases[(a.stage, a.phase)].append(a)
    stages = len({stage for stage, _ in phases})
    found = []
    for (stage, phase), done in sorted(phases.items()):
        if len(done) < 3:
            continue
        import statistics  # here: 8 ms (fractions, decimal) that a tiny job's phases need not pay

        median = statistics.median(float(a.stats["seconds"]) for a in done)
        slowest = max(done, key=lambda a: a.stats["seconds"])
        seconds = float(slowest.stats["seconds"])
        if seconds < SKEW_MIN_SECONDS or seconds < SKEW_RATIO * median:
            continue
        where = f"stage {stage + 1} " if stages > 1 else ""
        ratio = seconds / median if median else float("inf")
        message = (f"skew: {where}{slowest.task} took {seconds:.1f} s, {ratio:.0f}x the median {phase} task "
                   f"({f'{median:.2f} s' if median >= 1 else f'{median * 1000:.0f} ms'})")
        read = slowest.stats.get("bytes_in")
        if isinstance(read, int | float):
            median_read = statistics.median(float(a.stats.get("bytes_in") or 0) for a in done)
            message += f"; it read {_size(read)}" + (f" ({read / median_read:.1f}x the median)" if median_read else "")
        found.append({"kind": "skew", "level": "info", "stage": stage, "phase": phase, "task": slowest.task,
                      "seconds": seconds, "median_seconds": median, "message": message})
    return found


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def format_line(item: dict[str, Any]) -> str:
    return f"corral: {item['message']}"


@hookimpl
def corral_job_advice(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return advise(manifest)


@hookimpl
def corral_job_finished(event: JobFinished) -> None:
    """Print the advice (after a failure only the warnings, which may say why: a leak, out of memory)."""
    if event.settings.quiet:
        return
    for item in event.manifest.get("advice") or ():
        if item.get("level") == "warning" or (event.ok and item.get("print", True)):
            print(format_line(item), file=sys.stderr)
