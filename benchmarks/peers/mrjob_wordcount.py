"""The 100 MB word count as mrjob's documentation writes it (mapper, combiner, reducer), run with its
local runner (subprocesses, as Hadoop streaming would).

    python -m benchmarks.peers.mrjob_wordcount INPUT --out OUT [--workers 2]

Writes ``OUT/part-*`` as ``word<TAB>count`` lines, the shape corral writes, for the suite's check.
"""

from __future__ import annotations

import sys

from mrjob.job import MRJob
from mrjob.protocol import RawProtocol


class MRWordCount(MRJob):
    OUTPUT_PROTOCOL = RawProtocol  # word<TAB>count, as corral writes it

    def mapper(self, _, line):
        for word in line.split():
            yield word, 1

    def combiner(self, word, counts):
        yield word, sum(counts)

    def reducer(self, word, counts):
        yield word, str(sum(counts))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in argv:  # mrjob's runner calls this file back as the mapper, combiner and reducer
        MRWordCount(argv).execute()
        return 0
    workers = "2"
    if "--workers" in argv:
        at = argv.index("--workers")
        workers = argv[at + 1]
        del argv[at : at + 2]
    out = argv[argv.index("--out") + 1]
    del argv[argv.index("--out") : argv.index("--out") + 2]
    job = MRWordCount(["-r", "local", "--num-cores", workers, "--output-dir", out, "--no-output", *argv])
    with job.make_runner() as runner:
        runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
