"""One hot key: every input line is a value of the key ``hot``; reduce counts them.

    corral run benchmarks/jobs/hotkey.py values.txt --out OUT --memory-budget 64MB

The memory benchmark's worst case: a task's memory must follow ``--memory-budget``, not its largest key.
"""

import corral


class HotKey(corral.Job):
    def map(self, key, line):
        yield "hot", line

    def reduce(self, key, values):
        n = 0
        for _ in values:
            n += 1
        yield key, n
