"""Run one command and measure it: wall time, and peak memory of its whole process tree.

    python -m benchmarks.measure [--log FILE] -- COMMAND...

Prints one JSON object: ``seconds`` (wall time from start to exit), ``tree_peak_rss_mb`` (the largest
sum of the resident memory of the command and all its descendants, sampled every 20 ms with psutil;
pages shared between processes count once per process) and ``max_process_rss_mb`` (the largest peak
RSS of any single process of the tree that was waited for, from ``getrusage(RUSAGE_CHILDREN)``; that is
why each run goes through a fresh ``measure`` process), and ``returncode``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time

SAMPLE_SECONDS = 0.02


def _tree_rss(process) -> int:
    import psutil

    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(command: list[str], log: str | None = None) -> dict:
    import psutil

    peak = 0
    stop = threading.Event()
    output = open(log, "ab") if log else subprocess.DEVNULL
    try:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=output, stderr=output)
        process = psutil.Process(child.pid)

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _tree_rss(process))
                stop.wait(SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        returncode = child.wait()
        seconds = time.perf_counter() - started
        stop.set()
        sampler.join()
    finally:
        if log:
            output.close()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "seconds": round(seconds, 4),
        "tree_peak_rss_mb": round(peak / (1 << 20), 1),
        "max_process_rss_mb": round(children.ru_maxrss / 1024, 1),
        "returncode": returncode,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.measure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", help="append the command's stdout and stderr to this file")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    print(json.dumps(measure(command, args.log)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
