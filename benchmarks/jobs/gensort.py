"""Sort gensort ASCII records by their 10-byte key. ``total_order`` samples the keys to cut them into
ranges, one per reducer, so that part-00000, part-00001, ... concatenated in order are globally
sorted, and the reducers get about the same share however skewed the keys are.

    corral run benchmarks/jobs/gensort.py records.dat --out OUT --reducers 4

Output lines are the input records, byte for byte (``\\r\\n`` line ends included).
"""

import corral


class GenSort(corral.Job):
    total_order = True

    def map(self, key, record):
        # corral hands over the line without its "\r\n"
        yield record[:10], record[10:]

    def reduce(self, key, rests):
        for rest in rests:
            yield None, key + rest + "\r"
