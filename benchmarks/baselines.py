"""Hand-written baselines: what a careful programmer writes with ``multiprocessing.Pool(2)`` alone.

    python -m benchmarks.baselines NAME --out OUT [--workers 2] [--arg KEY=VALUE ...] INPUT...

NAME is ``wordcount`` (Pool over line-aligned byte ranges, ``collections.Counter``), ``wordcount-single``
(one process, the same Counter loop), ``cdnlogs`` (Pool over halves of the list of small gzip log files,
each read whole and decompressed in one call), ``q1``, ``q2``, ``q3`` (AMPLab queries; q3 is a broadcast hash
join: the rankings are loaded by the pool into a dict that the scanning processes inherit) and ``sort``
(range-partitioned: the pool splits the records into partition files, then sorts each partition).
Every baseline writes its result to OUT in the shape of corral's output (``part-NNNNN`` files of
``key<TAB>value`` lines, non-string values as JSON), so that both are read by the same code.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

BLOCK = 8 << 20  # bytes a worker reads at once
_shared: dict[str, Any] = {}  # inherited by forked pool processes (the q3 rankings)


def byte_ranges(paths: Iterable[str], pieces_per_file: int) -> list[tuple[str, int, int]]:
    """Cut every file into ``pieces_per_file`` byte ranges of about the same size."""
    ranges = []
    for path in paths:
        size = os.path.getsize(path)
        step = max(1, -(-size // pieces_per_file))
        ranges += [(path, start, min(start + step, size)) for start in range(0, size, step)]
    return ranges


def read_lines_blocks(path: str, start: int, end: int, block: int = BLOCK) -> Iterator[bytes]:
    """Blocks of whole lines of ``path`` for the lines that start in ``[start, end)``."""
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()
        position = f.tell()
        while position < end:
            data = f.read(min(block, end - position))
            if not data:
                return
            position += len(data)
            if not data.endswith(b"\n"):
                data += f.readline()  # finish the last line (it started before `end`)
                position = f.tell()
            yield data


def _pool(workers: int) -> Any:
    return multiprocessing.get_context("fork").Pool(workers)


def _run(workers: int, func: Callable, tasks: list) -> list:
    if workers <= 1:
        return [func(t) for t in tasks]
    with _pool(workers) as pool:
        return pool.map(func, tasks, chunksize=1)


def write_tsv(path: Path, rows: Iterable[tuple[Any, Any]]) -> None:
    encode = json.JSONEncoder(ensure_ascii=False).encode
    with open(path, "w", encoding="utf-8") as out:
        for key, value in rows:
            text = value if isinstance(value, str) else encode(value)
            out.write(text + "\n" if key is None else f"{key}\t{text}\n")


# --- word count -----------------------------------------------------------------------------------


def _count_words(task: tuple[str, int, int]) -> Counter:
    counts: Counter = Counter()
    for data in read_lines_blocks(*task):
        counts.update(data.decode("utf-8").split())
    return counts


def wordcount(inputs: list[str], out: Path, workers: int, args: dict[str, str]) -> None:
    parts = _run(workers, _count_words, byte_ranges(inputs, workers))
    total = parts[0]
    for part in parts[1:]:
        total.update(part)
    write_tsv(out / "part-00000", total.items())


def wordcount_single(inputs: list[str], out: Path, workers: int, args: dict[str, str]) -> None:
    counts: Counter = Counter()
    for path in inputs:
        with open(path, encoding="utf-8") as f:
            for line in f:
                counts.update(line.split())
    write_tsv(out / "part-00000", counts.items())


# --- CDN logs: many small gzip files --------------------------------------------------------------


def list_files(inputs: list[str]) -> list[str]:
    """Every file under the inputs (folders recursively), sorted, as corral lists them."""
    paths = []
    for path in inputs:
        if os.path.isdir(path):
            for folder, dirs, names in os.walk(path):
                dirs[:] = [d for d in dirs if d[:1] not in "_."]
                paths += [os.path.join(folder, n) for n in names if n[:1] not in "_."]
        else:
            paths.append(path)
    return sorted(paths)


def _cdn_counts(paths: list[str]) -> Counter:
    """Successful downloads of model files per day and model, in CloudFront logs (see jobs/cdnlogs.py)."""
    import zlib

    counts: Counter = Counter()
    for path in paths:
        with open(path, "rb") as f:
            data = zlib.decompress(f.read(), 31)
        for line in data.decode("utf-8").split("\n"):
            if not line or line[0] == "#":
                continue
            fields = line.split("\t")
            if len(fields) == 33 and fields[7].startswith("/models/") and fields[8] in ("200", "206"):
                counts[f"{fields[0]} {fields[7]}"] += 1
    return counts


def cdnlogs(inputs: list[str], out: Path, workers: int, args: dict[str, str]) -> None:
    paths = list_files(inputs)
    step = -(-len(paths) // workers)
    parts = _run(workers, _cdn_counts, [paths[i : i + step] for i in range(0, len(paths), step)])
    total = parts[0]
    for part in parts[1:]:
        total.update(part)
    write_tsv(out / "part-00000", sorted(total.items()))


# --- AMPLab queries -------------------------------------------------------------------------------


def _q1(task: tuple[str, int, int, int, str]) -> None:
    path, start, end, threshold, part = task
    with open(part, "w", encoding="utf-8") as out:
        for data in read_lines_blocks(path, start, end):
            rows = []
            for line in data.decode("utf-8").splitlines():
                url, rank, _ = line.split(",")
                if int(rank) > threshold:
                    rows.append(f"{url}\t{rank}\n")
            out.writelines(rows)


def q1(inputs: list[str], out: Path, workers: int, args: dict[str, str]) -> None:
    threshold = int(args.get("threshold", "100"))
    ranges = byte_ranges(inputs, workers)
    tasks = [(p, s, e, threshold, str(out / f"part-{i:05d}")) for i, (p, s, e) in enumerate(ranges)]
    _run(workers, _q1, tasks)


def _q2(task: tuple[str, int, int, int]) -> dict[str, float]:
    path, start, end, prefix = task
    sums: dict[str, float] = {}
    get = sums.get
    for data in read_lines_blocks(path, start, end):
        for line in data.decode("utf-8").splitlines():
            ip, _, _, revenue, _ = line.split(",", 4)
            key = ip[:prefix]
            sums[key] = get(key, 0.0) + float(revenue)
    return sums


def q2(inputs: list[str], out: Path, workers: int, args: dict[str, str]) -> None:
    prefix = int(args.get("prefix", "8"))
    parts = _run(workers, _q2, [(*r, prefix) for r in byte_ranges(inputs, workers)])
    total = parts[0]
    for part in parts[1:]:
        for key, value in part.items():
            total[key] = total.get(key, 0.0) + value
    write_tsv(out / "part-00000", total.items())


def _q3_rankings(task: tuple[str, int, int]) -> dict[str, int]:
    ranks = {}
    for data in read_lines_blocks(*task):
        for line in data.decode("utf-8").splitlines():
            url, rank, _ = line.split(",")
            ranks[url] = int(rank)
    return ranks


def _q3_visits(task: tuple[str, int, int, str, str]) -> dict[str, list]:
    path, start, end, first, last = task
    ranks = _shared["ranks"]
    totals: dict[str, list] = {}
    for data in read_lines_blocks(path, start, end):
        for line in data.decode("utf-8").splitlines():
            ip, url, date, revenue, _ = line.split(",", 4)
            if first <= date <= last:
                rank = ranks.get(url)
                if rank is not None:
                    t = totals.get(ip)
                    if t is None:
                        totals[ip] = [float(revenue), rank, 1]
                    else:
                        t[0] += float(revenue)
                        t[1] += rank
                        t[2] += 1
    return totals


def _q3_table(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return "rankings" if f.readline().count(",") == 2 else "uservisits"


def q3(inputs: list[str], out: Path, workers: int, args: dict[str, str]) -> None:
    first, last = args.get("start", "1980-01-01"), args.get("end", "1983-01-01")
    tables: dict[str, list[str]] = {"rankings": [], "uservisits": []}
    for path in inputs:
        tables[_q3_table(path)].append(path)
    ranks: dict[str, int] = {}
    for part in _run(workers, _q3_rankings, byte_ranges(tables["rankings"], workers)):
        ranks.update(part)
    _shared["ranks"] = ranks  # inherited by the scanning processes (fork)
    parts = _run(workers, _q3_visits, [(*r, first, last) for r in byte_ranges(tables["uservisits"], workers)])
    totals = parts[0]
    for part in parts[1:]:
        for ip, (revenue, rank_sum, count) in part.items():
            t = totals.get(ip)
            if t is None:
                totals[ip] = [revenue, rank_sum, count]
            else:
                t[0] += revenue
                t[1] += rank_sum
                t[2] += count
    rows = []
    if totals:
        ip, (revenue, rank_sum, count) = min(totals.items(), key=lambda item: (-item[1][0], item[0]))
        rows.append((ip, [revenue, rank_sum / count]))
    write_tsv(out / "part-00000", rows)


# --- sort -----------------------------------------------------------------------------------------

RECORD = 100


def range_partition(key: bytes, partitions: int) -> int:
    prefix = (key[0] - 32) * 95 + (key[1] - 32)
    return min(partitions - 1, max(0, prefix * partitions // (95 * 95)))


def _sort_split(task: tuple[str, int, int, int, str]) -> list[str]:
    """Read records ``[start, end)`` and append each to its partition's file; return the files."""
    path, start, end, partitions, prefix = task
    buckets: list[list[bytes]] = [[] for _ in range(partitions)]
    table = [value * partitions // (95 * 95) for value in range(95 * 95)]  # as range_partition
    with open(path, "rb") as f:
        f.seek(start)
        remaining = end - start
        while remaining > 0:
            data = f.read(min(BLOCK // RECORD * RECORD, remaining))  # whole records only
            if not data:
                break
            remaining -= len(data)
            for i in range(0, len(data), RECORD):
                record = data[i : i + RECORD]
                buckets[table[(record[0] - 32) * 95 + record[1] - 32]].append(record)
    files = []
    for p, bucket in enumerate(buckets):
        name = f"{prefix}-{p}"
        with open(name, "wb") as out:
            out.write(b"".join(bucket))
        files.append(name)
    return files


def _sort_partition(task: tuple[list[str], str]) -> None:
    sources, target = task
    records: list[bytes] = []
    for name in sources:
        with open(name, "rb") as f:
            data = f.read()
        records += [data[i : i + RECORD] for i in range(0, len(data), RECORD)]
    records.sort(key=lambda r: r[:10])
    with open(target, "wb") as out:
        out.write(b"".join(records))


def sort(inputs: list[str], out: Path, workers: int, args: dict[str, str]) -> None:
    partitions = int(args.get("partitions", str(workers)))
    tmp = tempfile.mkdtemp(prefix="bench-sort-", dir=out)
    try:
        tasks = []
        for i, path in enumerate(inputs):
            records = os.path.getsize(path) // RECORD
            step = -(-records // workers)
            for j, first in enumerate(range(0, records, step)):
                tasks.append((path, first * RECORD, min(first + step, records) * RECORD, partitions, f"{tmp}/m{i}-{j}"))
        with _pool(workers) as pool:
            split = pool.map(_sort_split, tasks, chunksize=1)
            pool.map(
                _sort_partition,
                [([files[p] for files in split], str(out / f"part-{p:05d}")) for p in range(partitions)],
                chunksize=1,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


BASELINES: dict[str, Callable[[list[str], Path, int, dict[str, str]], None]] = {
    "wordcount": wordcount,
    "wordcount-single": wordcount_single,
    "cdnlogs": cdnlogs,
    "q1": q1,
    "q2": q2,
    "q3": q3,
    "sort": sort,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(BASELINES))
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    job_args = dict(item.split("=", 1) for item in args.arg)
    BASELINES[args.name](args.inputs, out, args.workers, job_args)
    (out / "_SUCCESS").write_bytes(b"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
