"""Sort gensort ASCII records by their 10-byte key, with range partitioning on the key's first two
bytes so that part-00000, part-00001, ... concatenated in order are globally sorted.

    corral run benchmarks/jobs/gensort.py records.dat --out OUT --reducers 4

Output lines are the input records, byte for byte (``\\r\\n`` line ends included).
"""

import corral

_FIRST, _SPAN = 32, 95  # gensort ASCII keys are made of the 95 printable characters ' '..'~'


class GenSort(corral.Job):
    def map(self, key, record):
        # corral hands over the line without its "\r\n"
        yield record[:10], record[10:]

    def partition(self, key, num_partitions):
        prefix = (ord(key[0]) - _FIRST) * _SPAN + (ord(key[1]) - _FIRST) if len(key) > 1 else 0
        return min(num_partitions - 1, max(0, prefix * num_partitions // (_SPAN * _SPAN)))

    def reduce(self, key, rests):
        for rest in rests:
            yield None, key + rest + "\r"
