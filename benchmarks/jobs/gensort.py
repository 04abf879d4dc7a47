"""Sort gensort ASCII records by their 10-byte key. ``total_order`` samples the keys to cut them into
ranges, one per reducer, so that part-00000, part-00001, ... concatenated in order are globally
sorted, and the reducers get about the same share however skewed the keys are.

    corral run benchmarks/jobs/gensort.py records.dat --out OUT --reducers 4

Output lines are the input records, byte for byte (``\\r\\n`` line ends included).

``map_batch`` cuts a whole chunk of records (about 4 MB) in one list comprehension, rather than paying
a Python call and a generator per record (``map(self, key, record)``: ``yield record[:10],
record[10:]`` gives the same pairs, ~0.15 CPU-s more per 50 MB map task).
"""

import corral


class GenSort(corral.Job):
    total_order = True

    def map_batch(self, records):
        # corral hands over the lines without their "\r\n"
        return [(record[:10], record[10:]) for record in records]

    def reduce(self, key, rests):
        for rest in rests:
            yield None, key + rest + "\r"
