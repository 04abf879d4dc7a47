"""Word count with in-mapper combining: each map task counts in a dict and emits once per word.

Same output as wordcount.py, with far fewer records crossing the shuffle.
"""

from collections import Counter

import corral


class WordCountFast(corral.Job):
    def map_init(self):
        self.counts = Counter()

    def map(self, key, line):
        self.counts.update(line.split())
        return ()

    def map_final(self):
        yield from self.counts.items()

    def reduce(self, word, counts):
        yield word, sum(counts)


if __name__ == "__main__":
    WordCountFast.main()
