"""A job enriching words from two side files, one small (shipped in the package) and one over
``corral.sidefiles.PACKAGE_LIMIT`` (through the working folder), for the remote backends' tests."""

from __future__ import annotations

import csv
import gzip
import io
import random
from collections import Counter
from pathlib import Path

JOB = '''
import corral


class Lookup(corral.Job):
    """Counts words; each row gets the word's colour (small.tsv) and size (big.tsv)."""

    files = ["small.tsv", "lookup/big.tsv"]
    output_format = "csv"
    output_compression = "gzip"
    output_header = ["word", "count", "colour", "size"]

    def _load(self):
        def table(name):
            with open(self.file_path(name), encoding="utf-8") as f:
                return dict(line.rstrip("\\n").split("\\t") for line in f if not line.startswith("#"))

        self.colours, self.sizes = table("small.tsv"), table("big.tsv")

    def map_init(self):
        self._load()

    def reduce_init(self):
        self._load()

    def map(self, key, line):
        for word in line.split():
            yield word, 1

    def combine(self, word, counts):
        yield word, sum(counts)

    def reduce(self, word, counts):
        yield word, [sum(counts), self.colours.get(word, "?"), self.sizes.get(word, "?")]
'''
WORDS = [f"w{n}" for n in range(40)] + ["café", "naïve"]
BIG_SIZE = 5 << 20  # over the 4 MB that go in the package


def write_job(folder: Path) -> Path:
    """The job and its side files in ``folder`` (a folder no container mounts)."""
    (folder / "lookup").mkdir(parents=True, exist_ok=True)
    (folder / "lookup_job.py").write_text(JOB, encoding="utf-8")
    (folder / "small.tsv").write_text("".join(f"{w}\tcolour-{i % 7}\n" for i, w in enumerate(WORDS[::2])),
                                      encoding="utf-8")
    rows = "".join(f"{w}\t{len(w) * 3}\n" for w in WORDS[::3])
    padding = "#" + "x" * (BIG_SIZE - len(rows.encode()) - 2) + "\n"
    (folder / "lookup" / "big.tsv").write_text(padding + rows, encoding="utf-8")
    return folder / "lookup_job.py"


def input_text(lines: int = 400, seed: int = 5) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choices(WORDS, k=8)) + "\n" for _ in range(lines))


def expected_rows(text: str) -> list[list[str]]:
    """The job's rows, computed here: (word, count, colour, size) for every word, sorted by word."""
    colours = {w: f"colour-{i % 7}" for i, w in enumerate(WORDS[::2])}
    sizes = {w: str(len(w) * 3) for w in WORDS[::3]}
    counts = Counter(text.split())
    return [[w, str(n), colours.get(w, "?"), sizes.get(w, "?")] for w, n in sorted(counts.items())]


def rows_of(parts: list[bytes]) -> list[list[str]]:
    """The rows of gzipped csv part files, each checked to start with the header, sorted by word."""
    rows = []
    for data in parts:
        found = list(csv.reader(io.StringIO(gzip.decompress(data).decode("utf-8"))))
        assert found[0] == ["word", "count", "colour", "size"]
        rows += found[1:]
    return sorted(rows)
