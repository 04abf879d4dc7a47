"""``python -m benchmarks``: generate data, run the suite, profile a map task."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import suite
from benchmarks.datagen import MiB


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    from corral import parse_size as corral_parse_size

    return corral_parse_size(text)


# --- generate -------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from benchmarks import datagen

    if args.kind == "suite":
        suite.Data(Path(args.data_dir), args.size, _log).generate_all()
        return 0
    started = time.perf_counter()
    out = Path(args.out)
    if args.kind == "text":
        size = datagen.generate_text(
            out, parse_size(args.bytes), vocabulary=args.vocabulary, s=args.s, seed=args.seed, workers=args.workers
        )
        info: dict[str, Any] = {"path": str(out), "bytes": size}
    elif args.kind == "amplab":
        info = datagen.generate_amplab(out, args.pages, parse_size(args.bytes), seed=args.seed, workers=args.workers)
    else:
        info = {"path": str(out), "bytes": datagen.generate_gensort(out, parse_size(args.bytes), seed=args.seed)}
    info["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(info, indent=1))
    return 0


# --- run ------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return format(value, spec) if spec else str(value)


def format_report(report: dict[str, Any]) -> str:
    machine = report["machine"]
    start, now = machine.get("corral_source_start", {}), machine.get("corral_source_now", {})
    source = f"corral at {start.get('git_head', '?')} (+{len(start.get('corral_changed_files', []))} changed files), " \
        f"sources {start.get('corral_digest', '?')}"
    if start.get("corral_digest") != now.get("corral_digest"):
        source += f" -> {now.get('corral_digest', '?')}: WARNING corral changed during the run"
    lines = [
        source,
        f"corral benchmark suite, size {report['size']}, median of {report['repeat']} "
        f"(alternating runs; ratio: of the medians, paired: median of the per-round ratios, which the "
        f"targets use), {report['machine']['cpus']} CPUs, Python {report['machine']['python']}, "
        f"{report['machine']['sql_engine']}, load average {report['machine']['load_average_start']} at the start,"
        f" {report['machine']['load_average_now']} at the end",
        "",
        f"{'benchmark':<15} {'contender':<22} {'input MB':>9} {'median s':>9} {'MB/s':>8} {'tree RSS':>9} "
        f"{'max proc':>9} {'ratio':>7} {'paired':>7}  {'target':<28} {'met':<4}",
    ]
    special = ("objects", "reducer-memory", "hot-key-memory", "planner", "map-memory", "driver-overhead", "planning")
    for row in report["rows"]:
        if row["benchmark"] in special:
            continue
        ratio = row.get("ratio")
        vs = f" (vs {row['vs']})" if row.get("vs") and row["contender"] != row["vs"] else ""
        target = row.get("target", "")
        met = row.get("meets_target")
        if "ratio_to_duckdb" in row:
            target = f"{row['duckdb_target']}: {row['ratio_to_duckdb']:.2f}"
            met = row["meets_duckdb_target"]
        lines.append(
            f"{row['benchmark']:<15} {row['contender']:<22} {_fmt(row.get('input_mb'), '.1f'):>9} "
            f"{_fmt(row.get('seconds'), '.3f'):>9} {_fmt(row.get('mb_per_s'), '.2f'):>8} "
            f"{_fmt(row.get('tree_peak_rss_mb'), '.0f'):>9} {_fmt(row.get('max_process_rss_mb'), '.0f'):>9} "
            f"{_fmt(ratio, '.2f'):>7} {_fmt(row.get('paired_ratio'), '.2f'):>7}  {target:<28} "
            f"{_fmt(met) if met is not None else '':<4}{vs}"
        )
    for row in report["rows"]:
        if row["benchmark"] == "objects":
            lines += [
                "",
                f"intermediate objects: M={row['map_tasks']} map tasks, R={row['reduce_tasks']} reducers -> "
                f"{row['intermediate_objects']} objects under OUT/_corral/work (M x R would be {row['m_times_r']}); "
                f"target {row['target']}: {_fmt(row['meets_target'])}",
            ]
        if row["benchmark"] == "reducer-memory":
            one, ten = row["one_x"], row["ten_x"]
            lines += [
                "",
                f"reducer peak memory (one reduce task in a fresh process, --memory-budget {row['memory_budget']}):",
                *(
                    f"  {label:<3}: input {p['input_mb']} MB, {p['map_outputs']} map outputs, partition "
                    f"{p['partition_mb']} MB, {p['keys_in']} keys -> peak RSS {p['peak_rss_mb']} MB"
                    for label, p in (("1x", one), ("10x", ten))
                ),
                f"  ratio {row['ratio']:.2f} (above the {row['interpreter_floor_mb']} MB interpreter floor: "
                f"{row['net_ratio']:.2f}); target {row['target']}: {_fmt(row['meets_target'])}",
            ]
        if row["benchmark"] == "hot-key-memory":
            lines += [
                "",
                f"one hot key (tasks in fresh processes, --memory-budget {row['memory_budget']}, interpreter floor "
                f"{row['interpreter_floor_mb']} MB):",
                *(
                    f"  {r['values']:>10} values ({r['input_mb']} MB): one map task -> peak RSS {r['map_peak_rss_mb']} "
                    f"MB; the reducer of {r['map_outputs']} map outputs -> peak RSS {r['reduce_peak_rss_mb']} MB"
                    for r in row["runs"]
                ),
                f"  target {row['target']}: {_fmt(row['meets_target'])}",
            ]
    for row in report["rows"]:
        if "part_spread" in row:
            lines.append(f"{row['contender']}: part files {[round(b / MiB, 1) for b in row['part_bytes']]} MB, "
                         f"largest / smallest {row['part_spread']}")
        if "gb_seconds" in row:
            lines.append(f"{row['contender']}: {row['gb_seconds']} GB-s billed, {row['invocations']} invocations"
                         + (f", GB-s ratio {row['gb_seconds_ratio']}" if row.get("gb_seconds_ratio") else ""))
            if "map_task_seconds" in row:
                lines.append(f"{row['contender']}: map task {row['map_task_seconds']} s of which "
                             f"{row['map_task_cpu_s']} CPU-s (median; {row['map_cold_starts']} cold starts), "
                             f"S3 server (moto) {row['s3_server_cpu_s']} CPU-s a run")
        if row.get("growth") is not None:
            lines.append(f"{row['contender']}: paired ratio {row['paired_ratio']} ({row['growth']:+} over 100 MB's)")
        if row["benchmark"] == "planner":
            lines += ["", f"planner, {row['workers']} workers: target {row['target']}: {_fmt(row['meets_target'])}"]
            lines += [f"  {name}: {p['map_tasks']} map tasks, sizes {p['task_mb'][:8]} MB, largest / smallest "
                      f"{p['spread']}" for name, p in row["plans"].items()]
        if row["benchmark"] == "map-memory":
            peaks = ", ".join(f"{k}: task {v['task_mb']} MB -> {v['peak_rss_mb']} MB" for k, v in row["runs"].items())
            lines += ["", f"map task peak memory (fresh process, --memory-budget {row['memory_budget']}): {peaks}; "
                          f"ratio {row['ratio']}; target {row['target']}: {_fmt(row['meets_target'])}"]
        if row["benchmark"] == "driver-overhead":
            runs = ", ".join(f"{n} tasks: {r['seconds']:.1f} s, driver CPU {r['cpu_s'] - r['tasks_cpu_s']:.2f} s, "
                             f"peak {r['peak_rss_mb']:.0f} MB" for n, r in row["runs"].items())
            each = ", ".join(f"{us} us {size} B ({fixed} us)" for us, size, fixed in row.get("rounds", ()))
            lines += ["", f"driver overhead (no-op map tasks, threads), last round: {runs}; medians of "
                          f"{len(row.get('rounds', ())) or 1} rounds ({each}): {row['driver_us_per_task']} us and "
                          f"{row['driver_bytes_per_task']} bytes a task more ("
                          f"{row.get('driver_us_per_task_with_fixed_cost')} us a task with the run's fixed cost; "
                          f"wall {row['wall_us_per_task']} us a task); target {row['target']}: "
                          f"{_fmt(row['meets_target'])}"]
        if row["benchmark"] == "planning":
            lines += ["", f"planning {row['files'][0]} and {row['files'][1]} files: target {row['target']}: "
                          f"{_fmt(row['meets_target'])}"]
            for place, runs in row["results"].items():
                few, many = (runs.get(n, runs.get(str(n))) for n in row["files"])
                lines.append(f"  {place}: {few['seconds']} s / {few['memory_mb']} MB -> {many['seconds']} s / "
                             f"{many['memory_mb']} MB (x{runs['time_ratio']} time, x{runs['memory_ratio']} memory)")
                if "store_listing_time_ratio" in runs:
                    lines.append(f"    listing {few['listing_seconds']} s -> {many['listing_seconds']} s "
                                 f"(x{runs['listing_time_ratio']}; a plain boto3 listing of the same keys "
                                 f"{few['store_listing_seconds']} s -> {many['store_listing_seconds']} s, "
                                 f"x{runs['store_listing_time_ratio']}); planning after the listing "
                                 f"{few['after_listing_seconds']} s -> {many['after_listing_seconds']} s "
                                 f"(x{runs['after_listing_time_ratio']})")
        if row["benchmark"] == "docker" and "warm_overhead_ms" in row:
            lines += [
                "",
                f"docker backend, {row['tasks_per_run']} tasks a run: warm task {row['warm_task_median_ms']} ms "
                f"(median of {row['warm_tasks']}) vs a thread's {row['threads_task_median_ms']} ms -> overhead "
                f"{row['warm_overhead_ms']} ms; {row['cold_starts']} cold starts, median "
                f"{row['cold_start_median_s']} s, max {row['cold_start_max_s']} s "
                f"(Init Duration median {row['init_duration_median_ms']} ms); "
                f"target {row['target']}: {_fmt(row['meets_target'])}",
            ]
    if "docker" in report.get("extra", {}):
        lines += ["", f"docker: {report['extra']['docker']}"]
    for key in ("peers", "planning_s3", "small_objects"):
        if key in report.get("extra", {}):
            lines += ["", f"{key}: {report['extra'][key]}"]
    bad = [c for c in report["checks"] if not c["ok"]]
    lines += ["", f"result checks: {len(report['checks']) - len(bad)} of {len(report['checks'])} agree"]
    lines += [f"  MISMATCH {c['benchmark']}: {c['check']} {c['detail']}" for c in bad]
    lines.append(f"suite time {report['seconds']:.0f} s")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    only = args.only.split(",") if args.only else None
    unknown = [name for name in only or [] if name not in suite.BENCHMARKS]
    if unknown:
        _log(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(suite.BENCHMARKS)}")
        return 2
    bench = suite.Suite(args.size, args.repeat, Path(args.data_dir), only, keep=args.keep, log=_log)

    def save(report: dict[str, Any]) -> None:
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            text = format_report(report)
            Path(args.json).write_text(json.dumps({**report, "table": text}, indent=1, default=str))

    report = bench.run(progress=save)
    save(report)
    print(format_report(report))
    return 0 if all(c["ok"] for c in report["checks"]) else 1


def cmd_report(args: argparse.Namespace) -> int:
    """Merge the JSON reports of several runs (e.g. a run interrupted and resumed with --only)."""
    reports = [json.loads(Path(name).read_text()) for name in args.reports]
    merged = dict(reports[0])
    merged["rows"] = [row for r in reports for row in r["rows"]]
    merged["checks"] = [check for r in reports for check in r["checks"]]
    merged["extra"] = {k: v for r in reports for k, v in r.get("extra", {}).items()}
    merged["seconds"] = sum(r["seconds"] for r in reports)
    last = reports[-1]["machine"]
    merged["machine"] = {**reports[0]["machine"], "load_average_now": last["load_average_now"],
                         "corral_source_now": last.get("corral_source_now", {})}
    merged["parts"] = [r.get("started") for r in reports]
    text = format_report(merged)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({**merged, "table": text}, indent=1, default=str))
    return 0


# --- profile --------------------------------------------------------------------------------------

_PROFILE = """
import cProfile, json, sys, time
started = time.perf_counter()
from corral.fs import get_filesystem
from corral.worker import load_job_class, run_task
payload = json.load(open(sys.argv[1]))
if sys.argv[3] == "warm":  # what a warm worker has done before its task: imports, plugins, the job class
    get_filesystem(payload["splits"][0]["url"])
    load_job_class(payload["job"])
print(f"worker start-up (imports, plugins, job class): {time.perf_counter() - started:.2f} s")
profiler = cProfile.Profile()
profiler.enable()
result = run_task(payload)
profiler.disable()
if not result.get("ok"):
    sys.exit(f"task failed: {result.get('error')}")
profiler.dump_stats(sys.argv[2])
"""

_JOBS = {
    "wordcount": ("examples/wordcount.py", "wordcount", "WordCount", "text"),
    "wordcount-fast": ("examples/wordcount_fast.py", "wordcount_fast", "WordCountFast", "text"),
    "q2": ("benchmarks/jobs/amplab.py", "amplab", "Q2Aggregate", "uservisits"),
}


def cmd_profile(args: argparse.Namespace) -> int:
    """cProfile one map task (64 MB split by default) of a job, in a fresh process; print the hotspots."""
    import pstats
    import subprocess
    import tempfile

    path, module, cls, data_kind = _JOBS[args.job]
    data = suite.Data(Path(args.data_dir), args.size, _log)
    source = data.text()["files"][0] if data_kind == "text" else data.amplab()["uservisits"]
    end = min(Path(source).stat().st_size, parse_size(args.split))
    with tempfile.TemporaryDirectory(prefix="profile-", dir=args.data_dir) as tmp:
        payload = {
            "job": {"module": module, "class": cls, "path": str(suite.ROOT / path)},
            "args": {},
            "stage": 0,
            "memory_budget": parse_size(args.memory_budget),
            "kind": "map",
            "task": "map-0000",
            "attempt": 1,
            "splits": [{"url": source, "start": 0, "end": end, "kind": "text"}],
            "partitions": args.partitions,
            "output": f"{tmp}/map-0000.bin",
            "output_kind": "shuffle",
            "input_format": "lines",
            "input_errors": "strict",
        }
        Path(tmp, "payload.json").write_text(json.dumps(payload))
        stats_file = f"{tmp}/map.prof"
        started = time.perf_counter()
        warm = "cold" if args.cold else "warm"
        subprocess.run([sys.executable, "-c", _PROFILE, f"{tmp}/payload.json", stats_file, warm], check=True)
        wall = time.perf_counter() - started
        stats = pstats.Stats(stats_file)
        total = stats.total_tt  # type: ignore[attr-defined]
        print(f"{args.job}: one map task over {end / MiB:.1f} MB of {source}: {wall:.2f} s wall "
              f"(profiled: {total:.2f} s of function time)")
        rows = []
        for (filename, line, name), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            where = f"{Path(filename).name}:{line}({name})" if line else name
            rows.append((tottime, cumtime, calls, where))
        print(f"{'own %':>6} {'own s':>7} {'cum %':>6} {'calls':>10}  function")
        for tottime, cumtime, calls, where in sorted(rows, reverse=True)[: args.top]:
            print(f"{100 * tottime / total:6.1f} {tottime:7.2f} {100 * cumtime / total:6.1f} {calls:>10}  {where}")
        if args.py_spy:
            command = [sys.executable, "-c", _PROFILE.replace("profiler.enable()", "pass"), f"{tmp}/payload.json",
                       f"{tmp}/unused.prof", warm]
            py_spy_profile(command, f"{tmp}/spy.txt", args, f"{end / MiB:.1f} MB")
    return 0


def py_spy_profile(stats_cmd: list[str], raw: str, args: argparse.Namespace, label: str) -> None:
    """Run the map-task script under py-spy (sampling, no tracing overhead); print its hotspots."""
    import shutil
    import subprocess
    from collections import Counter

    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    started = time.perf_counter()
    subprocess.run(
        [spy, "record", "--rate", "250", "--format", "raw", "-o", raw, "--", *stats_cmd],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    own: Counter[str] = Counter()
    own_lines: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    with open(raw, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            functions = [_frame_name(frame) for frame in stack.split(";")[1:]]
            if not any(name.endswith(":run_task") for name in functions):
                continue  # start-up, not the task
            count = int(count_text)
            total += count
            own[functions[-1]] += count
            own_lines[_frame_name(stack.rsplit(";", 1)[-1], line=True)] += count
            for name in set(functions):
                inclusive[name] += count
    total = total or 1
    print(f"\npy-spy (sampling at 250 Hz) of the same map task, {label}: {wall:.2f} s wall with start-up, "
          f"{total} samples in the task")
    print(f"{'own %':>6} {'incl %':>7}  function")
    for name, count in own.most_common(args.top):
        print(f"{100 * count / total:6.1f} {100 * inclusive[name] / total:7.1f}  {name}")
    print(f"\n{'own %':>6}  line")
    for name, count in own_lines.most_common(args.top):
        print(f"{100 * count / total:6.1f}  {name}")
    print(f"\n{'incl %':>7}  function (inclusive)")
    for name, count in inclusive.most_common(args.top):
        print(f"{100 * count / total:7.1f}  {name}")


def _frame_name(frame: str, line: bool = False) -> str:
    """``func (path/file.py:123)`` -> ``file.py:func`` (``file.py:123 func`` with ``line``)."""
    name, _, where = frame.partition(" (")
    file, _, number = where.rstrip(")").rpartition(":")
    if not file:
        return name
    return f"{Path(file).name}:{number} {name}" if line else f"{Path(file).name}:{name}"


# --- main -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="corral's benchmark suite")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate benchmark data")
    gen.add_argument("kind", choices=["suite", "text", "amplab", "gensort"],
                     help="suite: every data set of --size into --data-dir; or one data set into --out")
    gen.add_argument("--size", choices=sorted(suite.SIZES), default="small")
    gen.add_argument("--data-dir", default=str(suite.DEFAULT_DATA))
    gen.add_argument("--out", help="file (text, gensort) or folder (amplab) to write")
    gen.add_argument("--bytes", default="10MB", help="size of the text / uservisits / gensort file (e.g. 100MB)")
    gen.add_argument("--pages", type=int, default=100_000, help="amplab: pages (rankings rows, about)")
    gen.add_argument("--vocabulary", type=int, default=200_000, help="text: distinct words")
    gen.add_argument("--s", type=float, default=1.1, help="text: Zipf exponent")
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--workers", type=int, default=2)
    gen.set_defaults(func=cmd_generate)

    run = sub.add_parser("run", help="run the suite and print the results table")
    run.add_argument("--size", choices=sorted(suite.SIZES), default="small")
    run.add_argument("--repeat", type=int, default=3, help="timed runs of each contender (median reported)")
    run.add_argument("--only", help=f"comma-separated subset of: {','.join(suite.BENCHMARKS)}")
    run.add_argument("--json", help="write the results (every run, checks, table) to this file")
    run.add_argument("--data-dir", default=str(suite.DEFAULT_DATA))
    run.add_argument("--keep", action="store_true", help="keep the outputs of the runs (under DATA_DIR/runs)")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="print (and merge) the tables of JSON reports written by run --json")
    rep.add_argument("reports", nargs="+")
    rep.add_argument("--json", help="write the merged report here")
    rep.set_defaults(func=cmd_report)

    prof = sub.add_parser("profile", help="cProfile one map task of a job (fresh process) and print hotspots")
    prof.add_argument("--job", choices=sorted(_JOBS), default="wordcount")
    prof.add_argument("--size", choices=sorted(suite.SIZES), default="full")
    prof.add_argument("--split", default="64MB", help="bytes of input for the map task")
    prof.add_argument("--partitions", type=int, default=2)
    prof.add_argument("--memory-budget", default="256MB")
    prof.add_argument("--top", type=int, default=25)
    prof.add_argument("--cold", action="store_true", help="profile the worker's start-up (imports) too")
    prof.add_argument("--py-spy", action="store_true",
                      help="also sample the same map task with py-spy (no tracing overhead)")
    prof.add_argument("--data-dir", default=str(suite.DEFAULT_DATA))
    prof.set_defaults(func=cmd_profile)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "generate" and args.kind != "suite" and not args.out:
        build_parser().error("generate text/amplab/gensort needs --out")
    return args.func(args)
