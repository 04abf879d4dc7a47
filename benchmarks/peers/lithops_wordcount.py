"""The 100 MB word count on Lithops' localhost backend, written as its documentation shows (map_reduce
over byte ranges of the file with ``obj_chunk_number``, a reducer that merges the counts).

    python -m benchmarks.peers.lithops_wordcount INPUT --out OUT [--workers 2]

Writes ``OUT/part-00000`` as ``word<TAB>count`` lines, the shape corral writes, for the suite's check.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path


def count_words(obj):
    counts = Counter()
    counts.update(obj.data_stream.read().decode("utf-8").split())
    return counts


def merge(results):
    total = Counter()
    for counts in results:
        total.update(counts)
    return total


def main(argv: list[str] | None = None) -> int:
    import lithops

    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    config = {"lithops": {"backend": "localhost", "storage": "localhost", "log_level": "WARNING"},
              "localhost": {"worker_processes": args.workers, "runtime": sys.executable}}
    executor = lithops.FunctionExecutor(config=config)
    path = os.path.abspath(args.input)
    executor.map_reduce(count_words, [path], merge, obj_chunk_number=args.workers)
    total = executor.get_result()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "part-00000", "w", encoding="utf-8") as f:
        f.writelines(f"{word}\t{count}\n" for word, count in total.items())
    executor.clean()
    return 0


if __name__ == "__main__":
    sys.exit(main())
