"""Word count, the idiomatic way: map emits (word, 1), combine and reduce sum.

    python examples/wordcount.py examples/data/sample.txt --out /tmp/wc
    corral run examples/wordcount.py examples/data/sample.txt --out /tmp/wc
"""

import corral


class WordCount(corral.Job):
    def map(self, key, line):
        for word in line.split():
            yield word, 1

    def combine(self, word, counts):
        yield word, sum(counts)

    def reduce(self, word, counts):
        yield word, sum(counts)


if __name__ == "__main__":
    WordCount.main()
