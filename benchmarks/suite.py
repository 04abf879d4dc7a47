"""The benchmark suite: data sets, contenders, alternating timed runs, result checks and the report."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import datagen

ROOT = Path(__file__).resolve().parent.parent  # the repository
BENCH = ROOT / "benchmarks"
JOBS = BENCH / "jobs"
EXAMPLES = ROOT / "examples"
DEFAULT_DATA = BENCH / "data"
MiB = 1 << 20

#: Data set sizes (bytes) and settings of each suite size.
SIZES: dict[str, dict[str, Any]] = {
    "small": {
        "text": 4 * MiB,
        "vocabulary": 100_000,
        "pages": 50_000,
        "uservisits": 12 * MiB,
        "sort": 4 * MiB,
        "sort_reducers": 2,
        "tiny": 2048,
        "objects_maps": 8,
        "objects_reducers": 4,
        "reducer_memory": (1 * MiB, 10 * MiB),
        "reducer_memory_split": 1 * MiB,
        "hot_key_values": (1_000_000, 5_000_000),
        "docker_tasks": 20,
        "memory_budget": "64MB",
        "text_copies": 4,
        "cdn_files": 2000,
        "noop_tasks": (100, 1000),
        "planning_files": (1000, 10_000),
    },
    "full": {
        "text": 100 * MiB,
        "vocabulary": 1_000_000,
        "pages": 1_500_000,
        "uservisits": 1024 * MiB,
        "sort": 100 * MiB,
        "sort_reducers": 4,
        "tiny": 2048,
        "objects_maps": 16,
        "objects_reducers": 4,
        "reducer_memory": (10 * MiB, 100 * MiB),
        "reducer_memory_split": 8 * MiB,
        "hot_key_values": (5_000_000, 10_000_000),
        "docker_tasks": 50,
        "memory_budget": "64MB",
        "text_copies": 10,
        "cdn_files": 20_000,
        "noop_tasks": (1000, 10_000),
        "planning_files": (10_000, 100_000),
    },
}

BENCHMARKS = ["wordcount", "wordcount-1g", "cdnlogs", "q1", "q2", "q3", "sort", "planner", "map-memory", "tiny",
              "objects", "reducer-memory", "hot-key-memory", "driver-overhead", "planning", "docker", "small-objects"]

#: Targets (processes backend, 2 cores, same-run ratios).
TARGETS = {
    "wordcount": ("corral/pool <= 1.5", 1.5),
    "wordcount-fast": ("corral/pool <= 1.1", 1.1),
    "tiny": ("<= 0.3 s", 0.3),
    "q2-duckdb": ("corral/duckdb <= 5", 5.0),
    "objects": ("= M", None),
    "reducer-memory": ("10x input: peak <= 1.5x", 1.5),
    # above the interpreter floor; a map task also holds one 4 MB chunk of input lines (~20 MB of str)
    "hot-key-memory": ("peak - floor <= 2x budget (map: + 20 MB)", 2.0),
    "docker-warm": ("warm overhead <= 30 ms", 0.030),
    "wordcount-1g": ("corral/pool <= 1.5, <= 100MB's + 0.1", 1.5),
    "cdnlogs": ("corral/pool <= 1.25", 1.25),
    "sort": ("corral/pool <= 2.0", 2.0),
    "sort-balance": ("largest part <= 1.5 x smallest (skewed keys)", 1.5),
    "planner": ("map tasks a multiple of workers; sizes within 10%", 1.1),
    "map-memory": ("1GB's map task peak <= 1.2 x 100MB's", 1.2),
    "driver-overhead": ("<= 200 us and <= 2 KB a task", (200e-6, 2048)),
    "planning": ("10x the files: <= 11x time and memory (object stores: after the listing)", 11.0),
    "small-objects": ("<= 1/3 of one-at-a-time's time and GB-s", 1 / 3),
    "docker-cold": ("cold start <= 1.5 s", 1.5),
}


def corral_command() -> list[str]:
    """The ``corral`` console script itself (not a pyenv/venv shim in front of it)."""
    script = Path(sysconfig.get_path("scripts")) / "corral"
    if script.is_file():
        return [str(script)]
    found = shutil.which("corral")
    return [found] if found else [sys.executable, "-c", "from corral.cli import console_main; console_main()"]


def compile_sources() -> None:
    """Write the bytecode of corral and of the benchmarks' jobs before anything is timed: with
    PYTHONDONTWRITEBYTECODE set (as on some machines), every timed start would else compile each module
    changed since its last bytecode again (10-20 ms a module, 0.1 s or more for a fresh checkout)."""
    import compileall

    import corral

    for folder in (Path(corral.__file__).parent, ROOT / "backends", ROOT / "benchmarks", ROOT / "examples"):
        compileall.compile_dir(str(folder), quiet=2)


def python_module(module: str) -> list[str]:
    return [sys.executable, "-m", module]


# --- data ---------------------------------------------------------------------------------------


class Data:
    """The suite's input files, generated on first use and reused while their parameters match."""

    def __init__(self, folder: Path, size: str, log: Callable[[str], None]) -> None:
        self.folder = folder
        self.cfg = SIZES[size]
        self.size = size
        self.log = log

    def _cached(self, name: str, params: dict[str, Any], make: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        target = self.folder / name
        stamp = self.folder / f"{name}.json"
        if stamp.is_file():
            saved = json.loads(stamp.read_text())
            if saved.get("params") == params and all(Path(p).exists() for p in saved.get("files", [])):
                return saved
        self.log(f"generating {name} ...")
        started = time.perf_counter()
        info = make(target)
        info = {"params": params, **info}
        self.log(f"  done in {time.perf_counter() - started:.1f} s")
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(info, indent=1))
        return info

    def text(self, size: int | None = None) -> dict[str, Any]:
        size = size or self.cfg["text"]
        params = {"size": size, "vocabulary": self.cfg["vocabulary"], "s": 1.1, "seed": 42}

        def make(target: Path) -> dict[str, Any]:
            path = target.with_suffix(".txt")
            written = datagen.generate_text(path, size, vocabulary=self.cfg["vocabulary"], s=1.1, seed=42)
            return {"files": [str(path)], "bytes": written}

        return self._cached(f"text-{_label(size)}-v{self.cfg['vocabulary'] // 1000}k", params, make)

    def text_copies(self, copies: int) -> dict[str, Any]:
        """The Zipf corpus ``copies`` times over in one file (the same words, ``copies`` times the counts)."""
        text = self.text()
        params = {"of": text["params"], "copies": copies}

        def make(target: Path) -> dict[str, Any]:
            path = target.with_suffix(".txt")
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as out:
                for _ in range(copies):
                    with open(text["files"][0], "rb") as f:
                        shutil.copyfileobj(f, out, 16 << 20)
            os.replace(tmp, path)
            return {"files": [str(path)], "bytes": path.stat().st_size}

        return self._cached(f"text-{_label(self.cfg['text'])}-x{copies}", params, make)

    def tiny(self) -> dict[str, Any]:
        size = self.cfg["tiny"]
        params = {"size": size, "vocabulary": 1000, "seed": 7}

        def make(target: Path) -> dict[str, Any]:
            path = target.with_suffix(".txt")
            written = datagen.generate_text(path, size, vocabulary=1000, seed=7, workers=1)
            return {"files": [str(path)], "bytes": written}

        return self._cached(f"tiny-{size}", params, make)

    def amplab(self) -> dict[str, Any]:
        params = {"pages": self.cfg["pages"], "uservisits": self.cfg["uservisits"], "seed": 42}

        def make(target: Path) -> dict[str, Any]:
            info = datagen.generate_amplab(target, self.cfg["pages"], self.cfg["uservisits"], seed=42)
            return {"files": [info["rankings"], info["uservisits"]], **info}

        return self._cached(f"amplab-{self.size}", params, make)

    def gensort(self, skew: float = 0.0) -> dict[str, Any]:
        size = self.cfg["sort"]
        params = {"size": size, "seed": 42, **({"skew": skew} if skew else {})}

        def make(target: Path) -> dict[str, Any]:
            path = target.with_suffix(".dat")
            written = datagen.generate_gensort(path, size, seed=42, skew=skew)
            return {"files": [str(path)], "bytes": written}

        return self._cached(f"gensort-{_label(size)}" + (f"-skew{skew:g}" if skew else ""), params, make)

    def cdn_logs(self) -> dict[str, Any]:
        files = self.cfg["cdn_files"]
        params = {"files": files, "lines": 32, "seed": 2024}

        def make(target: Path) -> dict[str, Any]:
            info = datagen.generate_cdn_logs(target, files, lines=32, seed=2024)
            return {"files": [str(target / f"{n:03d}") for n in range(-(-files // 1000))], "folder": str(target),
                    "count": info["files"], "bytes": info["bytes"]}

        return self._cached(f"cdn-logs-{files}", params, make)

    def noop_inputs(self, count: int) -> dict[str, Any]:
        params = {"count": count}

        def make(target: Path) -> dict[str, Any]:
            target.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                (target / f"in-{n:05d}.txt").write_bytes(b"x\n")
            return {"files": [str(target)], "folder": str(target)}

        return self._cached(f"noop-{count}", params, make)

    def hot_key(self, values: int) -> dict[str, Any]:
        params = {"values": values}

        def make(target: Path) -> dict[str, Any]:
            path = target.with_suffix(".txt")
            with open(path, "w") as f:
                for start in range(0, values, 100_000):
                    f.write("".join(f"value-{i:09d}\n" for i in range(start, min(values, start + 100_000))))
            return {"files": [str(path)], "bytes": path.stat().st_size, "values": values}

        return self._cached(f"hot-key-{values // 1000}k", params, make)

    def generate_all(self) -> None:
        self.text()
        self.text_copies(self.cfg["text_copies"])
        self.tiny()
        self.amplab()
        self.gensort()
        self.gensort(skew=4)
        self.cdn_logs()
        for size in self.cfg["reducer_memory"]:
            self.text(size)
        for values in self.cfg["hot_key_values"]:
            self.hot_key(values)


def _label(size: int) -> str:
    return f"{size // MiB}MB" if size % MiB == 0 else f"{size}B"


# --- running and measuring ------------------------------------------------------------------------


@dataclass
class Contender:
    """One way to compute a benchmark's result: a command writing into ``out``, and how to read it."""

    name: str
    command: Callable[[Path], list[str]]
    read: Callable[[Path], Any] | None = None  # the result to compare (None: not compared)
    runs: list[dict[str, Any]] = field(default_factory=list)
    result: Any = None


def _process_cpu() -> float:
    """CPU seconds of this process so far, every thread's (an in-process server's included)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(command: list[str], log_file: Path) -> dict[str, Any]:
    """Run ``command`` under a fresh ``benchmarks.measure`` process; return its measurements."""
    wrapper = [*python_module("benchmarks.measure"), "--log", str(log_file), "--", *command]
    # bytecode cached as an installed package has it: a machine with PYTHONDONTWRITEBYTECODE set
    # would otherwise compile corral's modules from source at every start
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(wrapper, capture_output=True, text=True, cwd=ROOT, check=False, env=env)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"measure failed: {done.stderr.strip()}")
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    if stats["returncode"] != 0:
        tail = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else ""
        raise RuntimeError(f"command failed ({stats['returncode']}): {' '.join(command)}\n{tail}")
    return stats


def warm_page_cache(inputs: list[str], log: Callable[[str], None]) -> None:
    """Read every file under ``inputs`` once, untimed, so that the first timed run (always the first
    contender's) does not pay for reading the disk that the runs after it get from the page cache.
    Data made or read by an earlier benchmark may have been evicted since (20,000 small files after the
    1 GB word count: corral's first run 5.0 s, the Pool's right after it 1.3 s)."""
    started, files, size = time.perf_counter(), 0, 0
    for top in inputs:
        paths = [Path(top)] if Path(top).is_file() else sorted(p for p in Path(top).rglob("*") if p.is_file())
        for path in paths:
            with open(path, "rb") as f:
                while block := f.read(8 << 20):
                    size += len(block)
            files += 1
    log(f"    page cache warmed: {files} files, {size / MiB:.0f} MB read in {time.perf_counter() - started:.2f} s")


def run_alternating(
    contenders: list[Contender],
    repeat: int,
    work: Path,
    log: Callable[[str], None],
    after_run: Callable[[Contender, Path], None] | None = None,
    inputs: list[str] | None = None,
) -> None:
    """Run every contender ``repeat`` times, alternating (A B C A B C ...), the page cache warmed first
    with ``inputs`` (local files or folders); read each one's result once; ``after_run(contender, out)``
    after every run (e.g. to read its manifest)."""
    if inputs:
        warm_page_cache(inputs, log)
    for round_ in range(repeat):
        for c in contenders:
            out = work / c.name
            stats = measure(c.command(out), work / f"{c.name}.log")
            c.runs.append(stats)
            log(f"    {c.name:<22} run {round_ + 1}: {stats['seconds']:.2f} s, "
                f"tree peak {stats['tree_peak_rss_mb']:.0f} MB")
            if round_ == 0 and c.read is not None:
                c.result = c.read(out)
            if after_run is not None:
                after_run(c, out)


def summary(c: Contender, input_bytes: int) -> dict[str, Any]:
    seconds = statistics.median(r["seconds"] for r in c.runs)
    return {
        "contender": c.name,
        "seconds": round(seconds, 3),
        "all_seconds": [r["seconds"] for r in c.runs],
        "input_mb": round(input_bytes / MiB, 1),
        "mb_per_s": round(input_bytes / MiB / seconds, 2) if seconds else None,
        "tree_peak_rss_mb": max(r["tree_peak_rss_mb"] for r in c.runs),
        "max_process_rss_mb": max(r["max_process_rss_mb"] for r in c.runs),
    }


def paired_ratio(seconds: list[float], reference: list[float]) -> float | None:
    """The median of the per-round ratios ``seconds[i] / reference[i]``. Runs of one round follow each
    other within seconds, so each ratio compares the two under the same load; on a shared machine
    whose speed drifts from minute to minute this is steadier than the ratio of the medians."""
    ratios = [a / b for a, b in zip(seconds, reference, strict=True) if b]
    return round(statistics.median(ratios), 3) if ratios else None


# --- reading results ------------------------------------------------------------------------------


def read_parts(out: Path) -> list[tuple[str | None, Any]]:
    """``(key, value)`` rows of the ``part-*`` files of ``out`` in order (JSON values decoded)."""
    rows: list[tuple[str | None, Any]] = []
    for part in sorted(out.glob("part-*")):
        with open(part, encoding="utf-8") as f:
            for line in f:
                key, tab, text = line.rstrip("\n").partition("\t")
                if not tab:
                    rows.append((None, key))
                    continue
                try:
                    value = json.loads(text)
                except ValueError:
                    value = text
                rows.append((key, value))
    return rows


def read_dict(out: Path) -> dict[str, Any]:
    rows = read_parts(out)
    result = dict(rows)
    if len(result) != len(rows):
        raise AssertionError(f"{out}: duplicate keys in the output")
    return result


def read_sorted_rows(out: Path) -> list[tuple[Any, Any]]:
    return sorted(read_parts(out))


def read_rows(out: Path) -> list[tuple[Any, Any]]:
    return read_parts(out)


def read_sql(kind: Callable[[list], Any]) -> Callable[[Path], Any]:
    def read(out: Path) -> Any:
        return kind([tuple(row) for row in json.loads(Path(f"{out}.json").read_text())])

    return read


def read_sort_output(out: Path) -> dict[str, Any]:
    """Check the concatenated part files are globally sorted by key; return a digest to compare."""
    import hashlib

    previous = b""
    records = 0
    digest = hashlib.sha256()
    for part in sorted(out.glob("part-*")):
        data = part.read_bytes()
        if len(data) % 100:
            raise AssertionError(f"{part}: {len(data)} bytes is not a whole number of 100-byte records")
        for i in range(0, len(data), 100):
            key = data[i : i + 10]
            if key < previous:
                raise AssertionError(f"{part}: record {i // 100} is out of order ({key!r} after {previous!r})")
            previous = key
        records += len(data) // 100
        digest.update(data)
    return {"records": records, "sha256": digest.hexdigest()}


def sorted_input_digest(path: str) -> dict[str, Any]:
    """The digest of the input's records sorted by key (stable), for checking the sorts."""
    import hashlib

    data = Path(path).read_bytes()
    records = [data[i : i + 100] for i in range(0, len(data), 100)]
    records.sort(key=lambda r: r[:10])
    return {"records": len(records), "sha256": hashlib.sha256(b"".join(records)).hexdigest()}


# --- the suite ------------------------------------------------------------------------------------


class Suite:
    def __init__(
        self,
        size: str,
        repeat: int,
        data_dir: Path,
        only: list[str] | None = None,
        keep: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.size = size
        self.cfg = SIZES[size]
        self.repeat = repeat
        self.data = Data(data_dir, size, log)
        self.only = only or BENCHMARKS
        self.keep = keep
        self.log = log
        self.rows: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}
        runs = data_dir / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        self.work_root = Path(tempfile.mkdtemp(prefix=f"{size}-", dir=runs))

    def corral(self, job: str, inputs: list[str], *flags: str) -> Callable[[Path], list[str]]:
        return lambda out: [*corral_command(), "run", job, *inputs, "--out", str(out), "--overwrite", "-q", *flags]

    def baseline(self, name: str, inputs: list[str], *flags: str) -> Callable[[Path], list[str]]:
        return lambda out: [*python_module("benchmarks.baselines"), name, *inputs, "--out", str(out), *flags]

    def sql(self, query: str, *flags: str) -> Callable[[Path], list[str]]:
        return lambda out: [*python_module("benchmarks.sql"), query, "--out", f"{out}.json", *flags]

    def work(self, name: str) -> Path:
        path = self.work_root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def check(self, bench: str, what: str, ok: bool, detail: str = "") -> None:
        self.checks.append({"benchmark": bench, "check": what, "ok": bool(ok), "detail": detail})
        self.log(f"    check {what}: {'ok' if ok else 'MISMATCH'} {detail}")

    def compare(self, bench: str, reference: Contender, others: list[Contender]) -> None:
        for other in others:
            same = other.result == reference.result
            detail = "" if same else _difference(reference.result, other.result)
            self.check(bench, f"{other.name} == {reference.name}", same, detail)

    def add_rows(
        self,
        bench: str,
        contenders: list[Contender],
        input_bytes: int,
        reference: str,
        target_key: dict[str, str] | None = None,
    ) -> dict[str, dict[str, Any]]:
        rows = {c.name: {"benchmark": bench, **summary(c, input_bytes)} for c in contenders}
        base = rows[reference]["seconds"]
        for name, row in rows.items():
            row["vs"] = reference
            row["ratio"] = round(row["seconds"] / base, 3) if base else None
            row["paired_ratio"] = paired_ratio(row["all_seconds"], rows[reference]["all_seconds"])
            key = (target_key or {}).get(name)
            if key in TARGETS:
                text, limit = TARGETS[key]
                row["target"] = text
                row["meets_target"] = row["paired_ratio"] <= limit if limit is not None else None
            self.rows.append(row)
        return rows

    # --- benchmarks -----------------------------------------------------------------------------
    def run(self, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run the benchmarks; ``progress`` gets the report so far after each one."""
        self.started = time.time()
        compile_sources()
        self.load_before = _load()
        self.source_before = source_state()
        try:
            for name in self.only:
                self.log(f"== {name}")
                try:
                    getattr(self, "bench_" + name.replace("-", "_"))()
                except Exception as exc:  # one broken benchmark must not lose the others' results
                    self.check(name, "completed", False, f"{type(exc).__name__}: {exc}"[:2000])
                if progress:
                    progress(self.report())
        finally:
            if not self.keep:
                shutil.rmtree(self.work_root, ignore_errors=True)
        return self.report()

    def report(self) -> dict[str, Any]:
        started = self.started
        return {
            "size": self.size,
            "repeat": self.repeat,
            "started": started,
            "seconds": round(time.time() - started, 1),
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "sql_engine": _sql_engine(),
                "corral_command": " ".join(corral_command()),
                "load_average_start": self.load_before,
                "load_average_now": _load(),
                "corral_source_start": self.source_before,
                "corral_source_now": source_state(),
            },
            "rows": self.rows,
            "checks": self.checks,
            "extra": self.extra,
        }

    def bench_wordcount(self) -> None:
        text = self.data.text()
        inputs, size = text["files"], text["bytes"]
        work = self.work("wordcount")
        contenders = [
            Contender("corral-wordcount", self.corral(str(EXAMPLES / "wordcount.py"), inputs), read_dict),
            Contender("pool-counter", self.baseline("wordcount", inputs), read_dict),
            Contender("corral-wordcount-fast", self.corral(str(EXAMPLES / "wordcount_fast.py"), inputs), read_dict),
            Contender("single-counter", self.baseline("wordcount-single", inputs), read_dict),
            *self.peers(inputs),
        ]
        run_alternating(contenders, self.repeat, work, self.log, inputs=inputs)
        self.compare("wordcount", contenders[1], [contenders[0], *contenders[2:]])
        self.add_rows(
            "wordcount",
            contenders,
            size,
            "pool-counter",
            {"corral-wordcount": "wordcount", "corral-wordcount-fast": "wordcount-fast"},
        )

    def peers(self, inputs: list[str]) -> list[Contender]:
        """Lithops' localhost backend and mrjob's local runner on the word count, where installed
        (``pip install -r benchmarks/requirements-peers.txt``); skipped, and said so, where not."""
        import importlib.util

        found = []
        for name, module in (("lithops-localhost", "lithops"), ("mrjob-local", "mrjob")):
            if importlib.util.find_spec(module) is None:
                self.extra.setdefault("peers", {})[name] = f"skipped: {module} is not installed"
                continue
            script = f"benchmarks.peers.{module}_wordcount"
            found.append(Contender(name, lambda out, s=script: [*python_module(s), inputs[0], "--out", str(out)],
                                   read_dict))
            self.extra.setdefault("peers", {})[name] = _version(module)
        return found

    def bench_wordcount_1g(self) -> None:
        """The idiomatic word count on the corpus and on the corpus 10 times over, in one invocation:
        corral's ratio to the Pool baseline at each size, and how much it grows."""
        small, large = self.data.text(), self.data.text_copies(self.cfg["text_copies"])
        job = str(EXAMPLES / "wordcount.py")
        contenders = [
            Contender("corral-100MB", self.corral(job, small["files"]), read_dict),
            Contender("pool-100MB", self.baseline("wordcount", small["files"]), read_dict),
            Contender("corral-1GB", self.corral(job, large["files"]), read_dict),
            Contender("pool-1GB", self.baseline("wordcount", large["files"]), read_dict),
        ]
        run_alternating(contenders, self.repeat, self.work("wordcount-1g"), self.log,
                        inputs=[*small["files"], *large["files"]])
        self.compare("wordcount-1g", contenders[1], [contenders[0]])
        self.compare("wordcount-1g", contenders[3], [contenders[2]])
        rows = self.add_rows("wordcount-1g", contenders[:2], small["bytes"], "pool-100MB")
        rows.update(self.add_rows("wordcount-1g", contenders[2:], large["bytes"], "pool-1GB"))
        big, little = rows["corral-1GB"], rows["corral-100MB"]
        text, limit = TARGETS["wordcount-1g"]
        big["target"] = text
        big["growth"] = round(big["paired_ratio"] - little["paired_ratio"], 3)
        big["meets_target"] = big["paired_ratio"] <= limit and big["growth"] <= 0.1

    def bench_cdnlogs(self) -> None:
        """A filter-and-count job over 20,000 small gzip CloudFront logs (~13 KB each uncompressed)."""
        logs = self.data.cdn_logs()
        folder = [logs["folder"]]
        contenders = [
            Contender("corral-cdnlogs", self.corral(str(JOBS / "cdnlogs.py"), folder), read_dict),
            Contender("pool-cdnlogs", self.baseline("cdnlogs", folder), read_dict),
        ]
        run_alternating(contenders, self.repeat, self.work("cdnlogs"), self.log, inputs=folder)
        self.compare("cdnlogs", contenders[1], [contenders[0]])
        self.add_rows("cdnlogs", contenders, logs["bytes"], "pool-cdnlogs", {"corral-cdnlogs": "cdnlogs"})
        self.extra["cdnlogs_files"] = logs["count"]

    def _amplab_args(self) -> dict[str, str]:
        return {"threshold": "100", "prefix": "8", "start": "1980-01-01", "end": "1983-01-01"}

    def bench_q1(self) -> None:
        amplab = self.data.amplab()
        rankings = [amplab["rankings"]]
        a = self._amplab_args()
        arg = ["--arg", f"threshold={a['threshold']}"]
        contenders = [
            Contender("corral-q1", self.corral(f"{JOBS / 'amplab.py'}:Q1Scan", rankings, *arg), read_sorted_rows),
            Contender("pool-q1", self.baseline("q1", rankings, *arg), read_sorted_rows),
            Contender(
                "duckdb-q1",
                self.sql("q1", "--rankings", rankings[0], "--threshold", a["threshold"]),
                read_sql(sorted),
            ),
        ]
        run_alternating(contenders, self.repeat, self.work("q1"), self.log)
        self.compare("q1", contenders[2], contenders[:2])
        self.add_rows("q1", contenders, amplab["rankings_bytes"], "pool-q1")

    def bench_q2(self) -> None:
        amplab = self.data.amplab()
        visits = [amplab["uservisits"]]
        a = self._amplab_args()
        arg = ["--arg", f"prefix={a['prefix']}"]
        job = JOBS / "amplab.py"
        contenders = [
            Contender("corral-q2", self.corral(f"{job}:Q2Aggregate", visits, *arg), read_dict),
            Contender("pool-q2", self.baseline("q2", visits, *arg), read_dict),
            Contender("duckdb-q2", self.sql("q2", "--uservisits", visits[0], "--prefix", a["prefix"]), read_sql(dict)),
            Contender("corral-q2-inmapper", self.corral(f"{job}:Q2AggregateInMapper", visits, *arg), read_dict),
        ]
        run_alternating(contenders, self.repeat, self.work("q2"), self.log)
        self.compare("q2", contenders[2], [contenders[0], contenders[1], contenders[3]])
        rows = self.add_rows("q2", contenders, amplab["uservisits_bytes"], "pool-q2")
        duck = rows["duckdb-q2"]["seconds"]
        text, limit = TARGETS["q2-duckdb"]
        for name in ("corral-q2", "corral-q2-inmapper"):
            rows[name]["ratio_of_medians_to_duckdb"] = round(rows[name]["seconds"] / duck, 2)
            ratio = round(paired_ratio(rows[name]["all_seconds"], rows["duckdb-q2"]["all_seconds"]) or 0, 2)
            rows[name]["ratio_to_duckdb"] = ratio
            rows[name]["duckdb_target"] = text
            rows[name]["meets_duckdb_target"] = ratio <= limit

    def bench_q3(self) -> None:
        amplab = self.data.amplab()
        files = [amplab["rankings"], amplab["uservisits"]]
        a = self._amplab_args()
        args = ["--arg", f"start={a['start']}", "--arg", f"end={a['end']}"]
        contenders = [
            Contender("corral-q3", self.corral(f"{JOBS / 'amplab.py'}:Q3Join", files, *args), read_rows),
            Contender("pool-q3", self.baseline("q3", files, *args), read_rows),
            Contender(
                "duckdb-q3",
                self.sql(
                    "q3", "--rankings", files[0], "--uservisits", files[1], "--start", a["start"], "--end", a["end"]
                ),
                read_sql(list),
            ),
        ]
        run_alternating(contenders, self.repeat, self.work("q3"), self.log)
        self.compare("q3", contenders[2], contenders[:2])
        self.add_rows("q3", contenders, amplab["rankings_bytes"] + amplab["uservisits_bytes"], "pool-q3")
        self.extra["q3_result"] = contenders[0].result

    def bench_sort(self) -> None:
        """gensort records sorted by a job with ``total_order`` (sampled key ranges) against a Pool
        that range-partitions on the first two key bytes, on uniform keys; then on skewed keys, where
        the sampled ranges keep the reducers' shares within 1.5x of each other."""
        r = str(self.cfg["sort_reducers"])
        for label, data in (("", self.data.gensort()), ("-skewed", self.data.gensort(skew=4))):
            inputs, size = data["files"], data["bytes"]
            contenders = [
                Contender(f"corral-sort{label}", self.corral(str(JOBS / "gensort.py"), inputs, "--reducers", r),
                          read_sort_output),
                Contender(f"pool-sort{label}", self.baseline("sort", inputs, "--arg", f"partitions={r}"),
                          read_sort_output),
            ]
            work = self.work(f"sort{label}")
            parts: dict[str, list[int]] = {}

            def sizes(c: Contender, out: Path, parts: dict[str, list[int]] = parts) -> None:
                parts[c.name] = [p.stat().st_size for p in sorted(out.glob("part-*"))]

            run_alternating(contenders, self.repeat, work, self.log, after_run=sizes, inputs=inputs)
            expected = sorted_input_digest(inputs[0])
            for c in contenders:
                self.check("sort", f"{c.name} globally sorted and == sorted input", c.result == expected)
            rows = self.add_rows("sort", contenders, size, f"pool-sort{label}",
                                 {"corral-sort": "sort"} if not label else None)
            for name, row in rows.items():
                row["part_bytes"] = parts[name]
                row["part_spread"] = round(max(parts[name]) / max(1, min(parts[name])), 3)
            if label:
                text, limit = TARGETS["sort-balance"]
                row = rows[f"corral-sort{label}"]
                row["target"], row["meets_target"] = text, row["part_spread"] <= limit

    def bench_planner(self) -> None:
        """The planner's map tasks as the driver plans them: the issue's 100 MB with --split-size 8MB
        (first fit made 3 tasks for 2 workers), 1 GB with the defaults, the 20,000 log files."""
        from corral.fs import FileInfo
        from corral.planner import count_splits, list_inputs, plan_map_tasks, task_sizes

        workers = 2
        cases = {
            "100MB --split-size 8MB": (self.data.text()["files"], {"split_size"}, 8 * MiB),
            "1GB defaults": (self.data.text_copies(self.cfg["text_copies"])["files"], set(), 64 * MiB),
            f"{self.cfg['cdn_files']} .gz files": ([self.data.cdn_logs()["folder"]], set(), 64 * MiB),
        }
        met = True
        plans = {}
        for name, (inputs, explicit, split) in cases.items():
            files: list[FileInfo] = list_inputs(inputs)
            total = sum(f.size for f in files)
            # as the driver plans on local cores and files at the default 256 MB --memory-budget
            split_size, bin_size = task_sizes(total, split, 64 * MiB, explicit, workers, local_budget=256 * MiB)
            tasks = plan_map_tasks(files, split_size, bin_size, workers)
            sizes = [sum(s.end - s.start for s in task) for task in tasks]
            spread = max(sizes) / min(sizes)
            few_splits = count_splits(files, split_size) < workers  # then one task per split
            ok = (len(tasks) % workers == 0 or few_splits) and spread <= TARGETS["planner"][1]
            met &= ok
            plans[name] = {"map_tasks": len(tasks), "task_mb": [round(b / MiB, 2) for b in sizes][:20],
                           "spread": round(spread, 4), "ok": ok}
            self.log(f"    {name}: {plans[name]}")
        self.rows.append({"benchmark": "planner", "contender": "corral-planner", "workers": workers, "plans": plans,
                          "target": TARGETS["planner"][0], "meets_target": met})

    def bench_map_memory(self) -> None:
        """One map task as the planner cuts the word count's 100 MB and its 1 GB for 2 workers, each in a
        fresh process, at the suite's --memory-budget: its peak RSS should not grow with the input."""
        from corral.fs import FileInfo
        from corral.planner import plan_map_tasks, task_sizes

        budget = self.cfg["memory_budget"]
        work = self.work("map-memory")
        peaks = {}
        for label, text in (("100MB", self.data.text()), ("1GB", self.data.text_copies(self.cfg["text_copies"]))):
            files = [FileInfo(path, Path(path).stat().st_size) for path in text["files"]]
            total = sum(f.size for f in files)
            budget_bytes = int(budget.removesuffix("MB")) << 20
            # as the driver plans on local cores and files: tasks of up to the budget
            split_size, bin_size = task_sizes(total, 64 * MiB, 64 * MiB, set(), 2, local_budget=budget_bytes)
            task = plan_map_tasks(files, split_size, bin_size, 2)[0]
            payload = {
                "job": {"module": "wordcount", "class": "WordCount", "path": str(EXAMPLES / "wordcount.py")},
                "args": {}, "stage": 0, "memory_budget": budget_bytes, "kind": "map",
                "task": "map-0000", "attempt": 1, "splits": [s.to_json() for s in task], "partitions": 2,
                "output": str(work / f"map-{label}.bin"), "output_kind": "shuffle", "input_format": "lines",
                "input_errors": "strict",
            }
            result = _run_task_fresh(payload, work, f"map-{label}")
            peaks[label] = {"task_mb": round(sum(s.end - s.start for s in task) / MiB, 1),
                            "peak_rss_mb": result["peak_memory_mb"], "seconds": result["seconds"]}
            self.log(f"    {label}: {peaks[label]}")
        ratio = peaks["1GB"]["peak_rss_mb"] / peaks["100MB"]["peak_rss_mb"]
        text, limit = TARGETS["map-memory"]
        self.rows.append({"benchmark": "map-memory", "contender": "corral-map-task", "memory_budget": budget,
                          "runs": peaks, "ratio": round(ratio, 3), "target": text, "meets_target": ratio <= limit})

    def bench_driver_overhead(self) -> None:
        """Many no-op map tasks (a one-line file each, --map-bin-size 1) on the threads backend: the
        driver's CPU per task (the process's CPU less what the tasks' threads used, from the manifest)
        and its memory per task, each as what N tasks cost more than N/10, over the difference (a
        run's fixed cost, its start and its listing, is the tiny job's target). The CPU of N tasks
        over N, fixed cost included, is reported beside it. Measured in up to 5 rounds
        (``--repeat``), the figures are the rounds' medians: one run's figure moves by a third between
        a machine's quiet and busy minutes."""
        few, many = self.cfg["noop_tasks"]
        work = self.work("driver-overhead")
        job = str(JOBS / "noop.py")
        rounds: list[tuple[float, float, float]] = []  # (seconds, bytes, seconds with the fixed cost) a task
        for round_ in range(max(1, min(self.repeat, 5))):
            runs = {}
            for count in (few, many):
                inputs = self.data.noop_inputs(count)["files"]
                out = work / f"out-{count}"
                command = self.corral(job, inputs, "--backend", "threads", "--map-bin-size", "1")(out)
                stats = measure([sys.executable, "-c", _CPU_OF, *command], work / f"run-{count}.log")
                cpu = json.loads((work / "cpu.json").read_text())
                manifest = json.loads((out / "_corral" / "manifest.json").read_text())
                attempts = [a for t in manifest["stages"][0]["tasks"].values() for a in t["attempts"]]
                task_cpu = sum(a["stats"].get("cpu_seconds") or 0 for a in attempts)
                runs[count] = {"tasks": len(attempts), "seconds": stats["seconds"], "cpu_s": round(cpu["cpu"], 3),
                               "tasks_cpu_s": round(task_cpu, 3), "peak_rss_mb": cpu["peak_rss_mb"]}
                self.log(f"    round {round_ + 1}, {count} tasks: {runs[count]}")
            driver = {n: runs[n]["cpu_s"] - runs[n]["tasks_cpu_s"] for n in (few, many)}
            rounds.append(((driver[many] - driver[few]) / (runs[many]["tasks"] - runs[few]["tasks"]),
                           (runs[many]["peak_rss_mb"] - runs[few]["peak_rss_mb"]) * MiB / (many - few),
                           driver[many] / runs[many]["tasks"]))
        per_task, per_task_memory, with_fixed = (statistics.median(r[i] for r in rounds) for i in range(3))
        text, (time_limit, memory_limit) = TARGETS["driver-overhead"]
        self.rows.append({
            "benchmark": "driver-overhead", "contender": "corral-threads", "runs": runs,
            "rounds": [[round(us * 1e6, 1), round(size), round(fixed * 1e6, 1)] for us, size, fixed in rounds],
            "driver_us_per_task": round(per_task * 1e6, 1), "driver_bytes_per_task": round(per_task_memory),
            "driver_us_per_task_with_fixed_cost": round(with_fixed * 1e6, 1),
            "wall_us_per_task": round(runs[many]["seconds"] / many * 1e6, 1),
            "target": text, "meets_target": per_task <= time_limit and per_task_memory <= memory_limit,
        })

    def bench_planning(self) -> None:
        """Planning N and 10 N input files (listing, splits, balanced tasks, every map task's spec as
        JSON) in a fresh process, on the local disk and on moto's S3: time and memory of each."""
        few, many = self.cfg["planning_files"]
        work = self.work("planning")
        results: dict[str, dict[int, dict[str, Any]]] = {"local": {}}
        for count in (few, many):
            folder = self.data.noop_inputs(count)["folder"]
            results["local"][count] = self._plan_fresh(folder, work, f"local-{count}")
        try:
            s3_results = self._planning_s3(few, many, work)
        except Exception as exc:  # moto or s3fs missing: say so, keep the local numbers
            self.extra["planning_s3"] = f"skipped: {type(exc).__name__}: {exc}"
        else:
            results["s3"] = s3_results
        text, limit = TARGETS["planning"]
        met = True
        for place, runs in results.items():
            time_ratio = runs[many]["seconds"] / runs[few]["seconds"]
            memory_ratio = runs[many]["memory_mb"] / max(0.1, runs[few]["memory_mb"])
            runs["time_ratio"], runs["memory_ratio"] = round(time_ratio, 2), round(memory_ratio, 2)  # type: ignore[index]
            if "store_listing_seconds" in runs[many]:  # an object store: judge what follows its listing
                ratio = {name: runs[many][name] / max(1e-3, runs[few][name])
                         for name in ("listing_seconds", "store_listing_seconds", "after_listing_seconds")}
                runs["listing_time_ratio"] = round(ratio["listing_seconds"], 2)  # type: ignore[index]
                runs["store_listing_time_ratio"] = round(ratio["store_listing_seconds"], 2)  # type: ignore[index]
                time_ratio = ratio["after_listing_seconds"]
                runs["after_listing_time_ratio"] = round(time_ratio, 2)  # type: ignore[index]
            met &= time_ratio <= limit and memory_ratio <= limit
            self.log(f"    {place}: {runs}")
        self.rows.append({"benchmark": "planning", "contender": "corral-planner", "files": [few, many],
                          "results": results, "target": text, "meets_target": met})

    def _plan_fresh(self, url: str, work: Path, name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        """Plan ``url`` in a fresh process timed, then in another with tracemalloc (the peak of what
        planning allocates, which the interpreter's own start-up would hide in its peak RSS)."""
        result: dict[str, Any] = {}
        for mode in ("time", "memory"):
            result_file = work / f"{name}-{mode}.json"
            done = subprocess.run([sys.executable, "-c", _PLAN, url, str(result_file), mode], capture_output=True,
                                  text=True, cwd=ROOT, env={**os.environ, **(env or {})}, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"planning {url} failed: {done.stderr[-2000:]}")
            result.update(json.loads(result_file.read_text()))
        return result

    def _planning_s3(self, few: int, many: int, work: Path) -> dict[int, dict[str, Any]]:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            from moto.s3.models import s3_backends

            backend = s3_backends["123456789012"]["aws"]
            backend.create_bucket("planning", "us-east-1")
            for n in range(many):
                backend.put_object("planning", f"many/{n // 1000:03d}/obj-{n:06d}.txt", b"x\n")
            env = {"AWS_ENDPOINT_URL_S3": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
            backend.create_bucket("planning-few", "us-east-1")
            for n in range(few):
                backend.put_object("planning-few", f"many/{n // 1000:03d}/obj-{n:06d}.txt", b"x\n")
            runs = {}
            for count, bucket in ((few, "planning-few"), (many, "planning")):
                run = runs[count] = self._plan_fresh(f"s3://{bucket}/many/", work, f"s3-{count}", env)
                run["store_listing_seconds"] = self._list_s3_fresh(bucket, work, env)
            return runs
        finally:
            server.stop()

    def _list_s3_fresh(self, bucket: str, work: Path, env: dict[str, str]) -> float:
        """The stand-in's own listing time: boto3's paginated ``list_objects_v2`` of the same keys, in a
        fresh process. moto scans and sorts the whole bucket for every page of 1,000 keys, so its
        listing grows as the square of the keys: on an object store the target is judged on the
        planning that follows the listing (splits, balanced tasks, specs), the listing reported beside."""
        result_file = work / f"list-{bucket}.json"
        subprocess.run([sys.executable, "-c", _LIST_S3, bucket, str(result_file)], check=True, cwd=ROOT,
                       env={**os.environ, **env}, capture_output=True, text=True)
        return float(json.loads(result_file.read_text())["seconds"])

    def bench_tiny(self) -> None:
        tiny = self.data.tiny()
        contenders = [
            Contender("corral-tiny", self.corral(str(EXAMPLES / "wordcount.py"), tiny["files"]), read_dict),
            Contender("python-import-corral", lambda out: [sys.executable, "-c", "import corral.cli, corral.driver"]),
        ]
        run_alternating(contenders, max(self.repeat, 5), self.work("tiny"), self.log)
        rows = self.add_rows("tiny", contenders, tiny["bytes"], "corral-tiny")
        row = rows["corral-tiny"]
        text, limit = TARGETS["tiny"]
        row["target"] = text
        row["meets_target"] = row["seconds"] <= limit

    def bench_objects(self) -> None:
        text = self.data.text()
        m, r = self.cfg["objects_maps"], self.cfg["objects_reducers"]
        split = -(-text["bytes"] // m)
        out = self.work("objects") / "out"
        command = self.corral(
            str(EXAMPLES / "wordcount.py"), text["files"],
            "--split-size", str(split), "--map-bin-size", str(split), "--reducers", str(r), "--keep-intermediate",
        )(out)
        stats = measure(command, self.work("objects") / "run.log")
        manifest = json.loads((out / "_corral" / "manifest.json").read_text())
        stage = manifest["stages"][0]
        objects = [p for p in (out / "_corral" / "work").rglob("*") if p.is_file()]
        maps, reducers = stage["map_tasks"], stage["reduce_tasks"]
        ok = len(objects) == maps
        self.check("objects", f"intermediate objects == M ({maps})", ok, f"found {len(objects)}")
        self.rows.append({
            "benchmark": "objects",
            "contender": "corral-wordcount",
            "seconds": stats["seconds"],
            "map_tasks": maps,
            "reduce_tasks": reducers,
            "intermediate_objects": len(objects),
            "m_times_r": maps * reducers,
            "target": TARGETS["objects"][0],
            "meets_target": ok,
        })

    def bench_docker(self) -> None:
        """Per-task overhead of ``--backend docker`` on warm containers, and its cold starts.

        The same word count of many one-line files (a map task each) runs on the docker backend and on
        threads, alternating. A task's overhead is the median time the driver waits for a warm task
        minus the median for a thread: the invoke, the emulator, the container's runtime loop and the
        JSON between them. A cold start is the wait for a task whose container had to start.
        """
        reason = docker_unavailable()
        if reason:
            self.log(f"    skipped: {reason}")
            self.extra["docker"] = f"skipped: {reason}"
            return
        folder = self.work("docker") / "input"
        folder.mkdir(exist_ok=True)
        tasks = self.cfg["docker_tasks"]
        for n in range(tasks):
            (folder / f"part-{n:03d}.txt").write_text(f"task {n} of a docker benchmark\n")
        job = str(EXAMPLES / "wordcount.py")
        flags = ("--map-bin-size", "1", "--reducers", "2", "--max-concurrency", "2")
        contenders = [
            Contender("corral-docker", self.corral(job, [str(folder)], *flags, "--backend", "docker",
                                                   "--memory", "512"), read_dict),
            Contender("corral-threads", self.corral(job, [str(folder)], *flags, "--backend", "threads"), read_dict),
        ]
        attempts: dict[str, list[dict[str, Any]]] = {"corral-docker": [], "corral-threads": []}

        def collect(c: Contender, out: Path) -> None:
            manifest = json.loads((out / "_corral" / "manifest.json").read_text())
            attempts[c.name] += [a["stats"] for t in manifest["stages"][0]["tasks"].values() for a in t["attempts"]]

        run_alternating(contenders, self.repeat, self.work("docker"), self.log, after_run=collect)
        self.compare("docker", contenders[1], [contenders[0]])
        warm = [a["seconds"] for a in attempts["corral-docker"] if not a.get("cold_start")]
        cold = [a["seconds"] for a in attempts["corral-docker"] if a.get("cold_start")]
        threads = [a["seconds"] for a in attempts["corral-threads"]]
        overhead = statistics.median(warm) - statistics.median(threads)
        input_bytes = sum(f.stat().st_size for f in folder.iterdir())
        rows = self.add_rows("docker", contenders, input_bytes, "corral-threads")
        row = rows["corral-docker"]
        init = [a["init_ms"] for a in attempts["corral-docker"] if a.get("init_ms") is not None]
        row.update({
            "tasks_per_run": tasks + 2,
            "warm_tasks": len(warm),
            "warm_task_median_ms": round(1000 * statistics.median(warm), 2),
            "threads_task_median_ms": round(1000 * statistics.median(threads), 2),
            "warm_overhead_ms": round(1000 * overhead, 2),
            "cold_starts": len(cold),
            "cold_start_median_s": round(statistics.median(cold), 3) if cold else None,
            "cold_start_max_s": round(max(cold), 3) if cold else None,
            "init_duration_median_ms": round(statistics.median(init), 1) if init else None,
        })
        warm_text, warm_limit = TARGETS["docker-warm"]
        cold_text, cold_limit = TARGETS["docker-cold"]
        row["target"] = f"{warm_text}; {cold_text}"
        row["meets_target"] = overhead <= warm_limit and bool(cold) and max(cold) <= cold_limit

    def bench_small_objects(self) -> None:
        """2,000 small .gz objects on S3 (moto) counted by Lambda functions (the emulator), 4 at once:
        objects read 16 at a time inside each task (the default) against one after another
        (``CORRAL_READ_AHEAD=0`` in the functions' environment), alternating. Both make one GET per
        object (the listing gave its size; the issue's run made a HEAD and a GET each)."""
        reason = docker_unavailable()
        if reason:
            self.log(f"    skipped: {reason}")
            self.extra["small_objects"] = f"skipped: {reason}"
            return
        import boto3
        from corral_emulator import Emulator
        from moto.server import ThreadedMotoServer

        logs = self.data.cdn_logs()
        paths = sorted(Path(logs["folder"]).rglob("*.gz"))[:2000]
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        env = {"AWS_ENDPOINT_URL_S3": f"http://{host}:{port}", "AWS_ENDPOINT_URL_IAM": f"http://{host}:{port}",
               "AWS_ENDPOINT_URL_STS": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "CORRAL_LAMBDA_IAM_SETTLE": "0"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            s3 = boto3.client("s3")
            s3.create_bucket(Bucket="small-objects")
            from moto.s3.models import s3_backends

            backend = s3_backends["123456789012"]["aws"]
            for path in paths:
                backend.put_object("small-objects", f"logs/{path.parent.name}/{path.name}", path.read_bytes())
            with Emulator(max_concurrency=4, idle_timeout=300) as emulator:
                common = ("--backend", "lambda", "--lambda-endpoint", emulator.endpoint, "--max-concurrency", "4")
                job = str(JOBS / "cdnlogs.py")

                def command(out: Path, *extra: str) -> list[str]:
                    name = out.name
                    return [*corral_command(), "run", job, "s3://small-objects/logs/", "--out",
                            f"s3://small-objects/{name}", "--overwrite", "-q", *common, *extra]

                def read(out: Path) -> Any:
                    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="small-objects", Prefix=f"{out.name}/")
                            .get("Contents", []) if o["Key"].rsplit("/", 1)[-1].startswith("part-")]
                    rows = {}
                    for key in sorted(keys):
                        for line in s3.get_object(Bucket="small-objects", Key=key)["Body"].read().decode().splitlines():
                            word, _, count = line.partition("\t")
                            rows[word] = int(count)
                    return rows

                usage: dict[str, list[dict[str, Any]]] = {"corral-read-ahead": [], "corral-one-at-a-time": []}
                maps: dict[str, list[dict[str, Any]]] = {"corral-read-ahead": [], "corral-one-at-a-time": []}
                server_cpu: dict[str, list[float]] = {"corral-read-ahead": [], "corral-one-at-a-time": []}
                cpu = [_process_cpu()]

                def report(c: Contender, out: Path) -> None:
                    # moto serves in this process: its CPU during the run is this process's (the bound)
                    now = _process_cpu()
                    server_cpu[c.name].append(now - cpu[0])
                    body = s3.get_object(Bucket="small-objects", Key=f"{out.name}/_corral/manifest.json")["Body"]
                    manifest = json.loads(body.read())
                    usage[c.name].append(manifest.get("report", {}))
                    maps[c.name] += [a["stats"] for task, t in manifest["stages"][0]["tasks"].items()
                                     if task.startswith("map-") for a in t["attempts"]]
                    cpu[0] = _process_cpu()

                contenders = [
                    Contender("corral-read-ahead", lambda out: command(out), read),
                    Contender("corral-one-at-a-time", lambda out: command(out, "--environment", "CORRAL_READ_AHEAD=0"),
                              read),
                ]
                measure(command(self.work("small-objects") / "warm-up"), self.work("small-objects") / "warm.log")
                cpu[0] = _process_cpu()
                run_alternating(contenders, self.repeat, self.work("small-objects"), self.log, after_run=report)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            server.stop()
        self.compare("small-objects", contenders[1], [contenders[0]])
        rows = self.add_rows("small-objects", contenders, sum(p.stat().st_size for p in paths), "corral-one-at-a-time")
        for name, row in rows.items():
            row["gb_seconds"] = round(statistics.median(u.get("gb_seconds", 0) for u in usage[name]), 2)
            row["invocations"] = statistics.median(u.get("invocations", 0) for u in usage[name])
            # where a map task's billed time goes: its CPU (at the function's share) against its duration;
            # and what the one S3 server (moto, a single Python process) spent on the run's requests
            row["map_task_seconds"] = round(statistics.median(a.get("seconds", 0) for a in maps[name]), 2)
            row["map_task_cpu_s"] = round(statistics.median(a.get("cpu_seconds", 0) for a in maps[name]), 3)
            row["map_cold_starts"] = sum(1 for a in maps[name] if a.get("cold_start"))
            row["s3_server_cpu_s"] = round(statistics.median(server_cpu[name]), 2)
        new, old = rows["corral-read-ahead"], rows["corral-one-at-a-time"]
        new["gb_seconds_ratio"] = round(new["gb_seconds"] / old["gb_seconds"], 3) if old["gb_seconds"] else None
        new["target"] = TARGETS["small-objects"][0]
        new["meets_target"] = new["paired_ratio"] <= 1 / 3 and (new["gb_seconds_ratio"] or 1) <= 1 / 3

    def bench_reducer_memory(self) -> None:
        small, large = self.cfg["reducer_memory"]
        budget = self.cfg["memory_budget"]
        split = str(self.cfg["reducer_memory_split"])
        work = self.work("reducer-memory")
        peaks: dict[str, dict[str, Any]] = {}
        floor = measure([sys.executable, "-c", _REDUCE_FLOOR], work / "floor.log")
        for label, size in (("1x", small), ("10x", large)):
            text = self.data.text(size)
            out = work / f"out-{label}"
            command = self.corral(
                str(EXAMPLES / "wordcount.py"), text["files"],
                "--split-size", split, "--map-bin-size", split, "--reducers", "2",
                "--memory-budget", budget, "--keep-intermediate",
            )(out)
            measure(command, work / f"run-{label}.log")
            payload = reduce_payload(out, partition=0, output=str(work / f"reduce-{label}.out"))
            payload_file = work / f"payload-{label}.json"
            payload_file.write_text(json.dumps(payload))
            result_file = work / f"result-{label}.json"
            reduce_command = [sys.executable, "-c", _RUN_REDUCE, str(payload_file), str(result_file)]
            stats = measure(reduce_command, work / "reduce.log")
            result = json.loads(result_file.read_text())
            if not result.get("ok"):
                raise RuntimeError(f"reduce task failed: {result.get('error')}")
            peaks[label] = {
                "input_mb": round(text["bytes"] / MiB, 1),
                "map_outputs": len(payload["sources"]),
                "partition_mb": round(sum(s[2] for s in payload["sources"]) / MiB, 2),
                "keys_in": result.get("keys_in"),
                "seconds": stats["seconds"],
                "peak_rss_mb": result["peak_memory_mb"],
            }
            self.log(f"    {label}: {peaks[label]}")
        base = floor["max_process_rss_mb"]
        ratio = peaks["10x"]["peak_rss_mb"] / peaks["1x"]["peak_rss_mb"]
        net_small = max(0.1, peaks["1x"]["peak_rss_mb"] - base)
        net_ratio = (peaks["10x"]["peak_rss_mb"] - base) / net_small
        text_target, limit = TARGETS["reducer-memory"]
        self.rows.append({
            "benchmark": "reducer-memory",
            "contender": "corral-reduce-task",
            "memory_budget": budget,
            "one_x": peaks["1x"],
            "ten_x": peaks["10x"],
            "interpreter_floor_mb": base,
            "ratio": round(ratio, 3),
            "net_ratio": round(net_ratio, 3),
            "target": text_target,
            "meets_target": ratio <= limit,
        })


    def bench_hot_key_memory(self) -> None:
        """One key holding every value: a map task over all of them, and the reducer of a run with 20 map
        tasks, each in a fresh process, at the suite's --memory-budget."""
        budget = self.cfg["memory_budget"]
        budget_mb = int(budget.removesuffix("MB"))
        work = self.work("hot-key-memory")
        floor = measure([sys.executable, "-c", _REDUCE_FLOOR], work / "floor.log")["max_process_rss_mb"]
        job = ROOT / "benchmarks" / "jobs" / "hotkey.py"
        runs = []
        for values in self.cfg["hot_key_values"]:
            data = self.data.hot_key(values)
            path, size = data["files"][0], data["bytes"]
            map_payload = {
                "job": {"module": "hotkey", "class": "HotKey", "path": str(job)}, "args": {}, "stage": 0,
                "memory_budget": budget_mb << 20, "kind": "map", "task": "map-0000", "attempt": 1,
                "splits": [{"url": path, "start": 0, "end": size, "kind": "text"}], "partitions": 1,
                "output": str(work / "map-all.bin"), "output_kind": "shuffle", "input_format": "lines",
                "input_errors": "strict",
            }
            mapped = _run_task_fresh(map_payload, work, "map")
            out = work / f"out-{values}"
            split = str(size // 20 + 1)
            measure(self.corral(str(job), [path], "--split-size", split, "--map-bin-size", split, "--reducers", "1",
                                "--memory-budget", budget, "--keep-intermediate")(out), work / "run.log")
            self.check("hot-key-memory", f"{values} values counted",
                       (out / "part-00000").read_text() == f"hot\t{values}\n")
            payload = reduce_payload(out, partition=0, output=str(work / "reduce.out"))
            reduced = _run_task_fresh(payload, work, "reduce")
            runs.append({
                "values": values, "input_mb": round(size / MiB, 1), "map_outputs": len(payload["sources"]),
                "map_peak_rss_mb": mapped["peak_memory_mb"], "map_seconds": mapped["seconds"],
                "reduce_peak_rss_mb": reduced["peak_memory_mb"], "reduce_seconds": reduced["seconds"],
            })
            self.log(f"    {values} values: {runs[-1]}")
        text_target, limit = TARGETS["hot-key-memory"]
        met = all(r["map_peak_rss_mb"] - floor <= limit * budget_mb + 20
                  and r["reduce_peak_rss_mb"] - floor <= limit * budget_mb for r in runs)
        self.rows.append({
            "benchmark": "hot-key-memory", "contender": "corral-map-and-reduce-task", "memory_budget": budget,
            "interpreter_floor_mb": floor, "runs": runs, "target": text_target, "meets_target": met,
        })


def _run_task_fresh(payload: dict[str, Any], work: Path, name: str) -> dict[str, Any]:
    """``corral.worker.run_task(payload)`` in a fresh process; its result (with the process's peak RSS)."""
    payload_file, result_file = work / f"payload-{name}.json", work / f"result-{name}.json"
    payload_file.write_text(json.dumps(payload))
    measure([sys.executable, "-c", _RUN_REDUCE, str(payload_file), str(result_file)], work / f"{name}.log")
    result = json.loads(result_file.read_text())
    if not result.get("ok"):
        raise RuntimeError(f"{name} task failed: {result.get('error')}")
    return result


#: Runs a command's argv in this process (the corral CLI) and writes its CPU time and peak RSS.
_CPU_OF = (
    "import json, resource, sys, runpy, time\n"
    "sys.argv = sys.argv[1:]\n"
    "code = 0\n"
    "try:\n"
    "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "except SystemExit as exc:\n"
    "    code = exc.code or 0\n"
    "usage = resource.getrusage(resource.RUSAGE_SELF)\n"
    "out = sys.argv[sys.argv.index('--out') + 1]\n"
    "json.dump({'cpu': usage.ru_utime + usage.ru_stime, 'peak_rss_mb': usage.ru_maxrss / 1024},\n"
    "          open(__import__('pathlib').Path(out).parent / 'cpu.json', 'w'))\n"
    "sys.exit(code)\n"
)
#: Plans a URL's files as the driver does for 2 workers (listing, task sizes, balanced tasks, each map
#: task's spec as JSON) and writes the seconds and the memory it took (peak RSS above the start's).
_PLAN = (
    "import json, sys, time, tracemalloc\n"
    "from corral.collector import full_collections_held\n"
    "from corral.planner import list_inputs, plan_map_tasks, task_sizes\n"
    "from corral.tasks import MapSpec\n"
    "from corral.fs import get_filesystem\n"
    "get_filesystem(sys.argv[1])\n"
    "memory = sys.argv[3] == 'memory'\n"
    "if memory:\n"
    "    tracemalloc.start()\n"
    "started = time.perf_counter()\n"
    # as corral.driver.Driver lists and plans (full collections held back for each), then makes each
    # spec as it submits the task, dropped when the task commits (never all of them at once)
    "with full_collections_held(collect=False):\n"
    "    files = list_inputs([sys.argv[1]])\n"
    "listed = time.perf_counter()\n"
    "total = sum(f.size for f in files)\n"
    "split, bin_ = task_sizes(total, 64 << 20, 64 << 20, set(), 2)\n"
    "with full_collections_held(collect=False):\n"
    "    tasks = plan_map_tasks(files, split, bin_, 2)\n"
    "spec_bytes = sum(len(json.dumps(MapSpec(job={}, stage=0, task=f'map-{j:04d}', attempt=1, output='o',\n"
    "                                        output_kind='shuffle', splits=tuple(t), partitions=2).to_json()))\n"
    "                 for j, t in enumerate(tasks))\n"
    "seconds = time.perf_counter() - started\n"
    "result = {'files': len(files), 'map_tasks': len(tasks), 'spec_bytes': spec_bytes}\n"
    "if memory:\n"
    "    result['memory_mb'] = round(tracemalloc.get_traced_memory()[1] / (1 << 20), 2)\n"
    "else:\n"
    "    result['seconds'] = round(seconds, 4)\n"
    "    result['listing_seconds'] = round(listed - started, 4)\n"
    "    result['after_listing_seconds'] = round(seconds - (listed - started), 4)\n"
    "json.dump(result, open(sys.argv[2], 'w'))\n"
)
_LIST_S3 = (
    "import json, sys, time, boto3\n"
    "pages = boto3.client('s3').get_paginator('list_objects_v2')\n"
    "started = time.perf_counter()\n"
    "keys = sum(len(p.get('Contents', [])) for p in pages.paginate(Bucket=sys.argv[1], Prefix='many/'))\n"
    "json.dump({'keys': keys, 'seconds': round(time.perf_counter() - started, 4)}, open(sys.argv[2], 'w'))\n"
)
_REDUCE_FLOOR = "import corral.worker, corral.tasks, corral.shuffle"
_RUN_REDUCE = (
    "import json, sys\n"
    "from corral.worker import run_task\n"
    "result = run_task(json.load(open(sys.argv[1])))\n"
    "json.dump(result, open(sys.argv[2], 'w'))\n"
)


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{module} {version(module)}"
    except PackageNotFoundError:
        return module


def docker_unavailable() -> str | None:
    """Why the docker benchmark cannot run here (None if it can): the backend, an engine, the image."""
    import importlib.util

    if importlib.util.find_spec("corral_docker") is None:
        return "corral-docker is not installed (pip install -e emulator -e backends/lambda -e backends/docker)"
    if shutil.which("docker") is None:
        return "no docker command"
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        return "no Docker engine answers"
    from corral_emulator import default_base_image

    image = default_base_image()
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode != 0:
        return f"the base image {image} is missing (corral emulator build-base)"
    return None


def reduce_payload(out: Path, partition: int, output: str, stage_index: int = 0) -> dict[str, Any]:
    """Rebuild the payload of reduce task ``partition`` of a run kept with ``--keep-intermediate``
    (as corral's driver makes it), from the manifest and the map output objects' indexes."""
    from corral.shuffle import read_index

    manifest = json.loads((out / "_corral" / "manifest.json").read_text())
    stage = manifest["stages"][stage_index]
    module, _, cls = manifest["job"].partition(":")
    job_path = {"wordcount": EXAMPLES / "wordcount.py", "wordcount_fast": EXAMPLES / "wordcount_fast.py",
                "hotkey": ROOT / "benchmarks" / "jobs" / "hotkey.py"}.get(module)
    sources = []
    for _name, task in sorted(stage["tasks"].items()):
        if task["phase"] != "map":
            continue
        attempt = task["attempts"][task["committed_attempt"] - 1]
        url = attempt["output"]
        offset, length = read_index(Path(url).read_bytes())[partition]
        sources.append([url, offset, length])
    return {
        "job": {"module": module, "class": cls, "path": str(job_path) if job_path else None},
        "args": manifest.get("args", {}),
        "stage": stage_index,
        "memory_budget": manifest["settings"]["memory_budget"],
        "kind": "reduce",
        "task": f"reduce-{partition:04d}",
        "attempt": 1,
        "partition": partition,
        "sources": sources,
        "output": output,
        "output_kind": "text",
    }


def source_state() -> dict[str, Any]:
    """Which corral was measured: the git commit, the files of corral/ changed since, and a digest of
    corral/'s sources (the engine may change between runs: compare digests, not just commits)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "corral").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    state: dict[str, Any] = {"corral_digest": digest.hexdigest()[:16]}
    try:
        git = ["git", "-C", str(ROOT)]
        state["git_head"] = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           check=True).stdout.strip()
        changed = subprocess.run([*git, "status", "--porcelain", "--", "corral"], capture_output=True, text=True,
                                 check=True).stdout.split("\n")
        state["corral_changed_files"] = sorted(line[3:] for line in changed if line.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return state


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _sql_engine() -> str:
    from benchmarks.sql import engine_name

    return engine_name()


def _difference(expected: Any, got: Any) -> str:
    if isinstance(expected, dict) and isinstance(got, dict):
        missing = len(expected.keys() - got.keys())
        extra = len(got.keys() - expected.keys())
        differ = [k for k in expected.keys() & got.keys() if expected[k] != got[k]]
        sample = f", e.g. {differ[0]!r}: {expected[differ[0]]!r} vs {got[differ[0]]!r}" if differ else ""
        return f"(missing {missing}, extra {extra}, different {len(differ)}{sample})"
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return f"({len(expected)} vs {len(got)} rows)"
        for a, b in zip(expected, got, strict=True):
            if a != b:
                return f"(first difference: {a!r} vs {b!r})"
    return f"({str(expected)[:200]} vs {str(got)[:200]})"
