"""Gzipped CSV output in several part files per reducer, committed on an object store (moto's S3, the GCS
emulator) and read back by a later corral job there, as zstd-compressed jsonl: the part names, the header
in every part and every record exactly, computed here without corral."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections import Counter
from pathlib import Path

import zstandard

from corral.shuffle import default_partition

COUNT_JOB = '''
import corral


class Totals(corral.Job):
    output_format = "csv"
    output_compression = "gzip"
    output_header = ["word", "count", "note"]

    def map(self, key, line):
        for word in line.split():
            yield word, 1

    def combine(self, word, counts):
        yield word, sum(counts)

    def reduce(self, word, counts):
        yield word, [sum(counts), f'{word}, "quoted"\\nsecond line']


class Back(corral.Job):
    """Reads Totals' parts as csv input (the header names the columns) and writes them as jsonl."""

    input_format = "csv"
    input_header = True
    output_format = "jsonl"
    output_compression = "zstd"

    def map(self, key, row):
        yield row["word"], row

    def reduce(self, word, rows):
        yield from ((word, row) for row in rows)
'''
WORDS = [f"wörd{n}" for n in range(23)] + ["a,b", 'q"q']
REDUCERS = 2
PER_FILE = 4


def write_job(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "totals.py").write_text(COUNT_JOB, encoding="utf-8")
    return folder / "totals.py"


def input_text() -> str:
    return "".join(" ".join(WORDS[n % len(WORDS):] + WORDS[: n % 5]) + "\n" for n in range(40))


def expected_parts(text: str) -> dict[str, list[list[str]]]:
    """The committed part files (name -> csv rows after the header): each reducer's words, sorted, in
    part files of PER_FILE rows."""
    counts = Counter(text.split())
    parts = {}
    for r in range(REDUCERS):
        words = sorted(w for w in counts if default_partition(w, REDUCERS) == r)
        for n in range(0, len(words), PER_FILE):
            parts[f"part-{r:05d}-{n // PER_FILE:05d}.csv.gz"] = [
                [w, str(counts[w]), f'{w}, "quoted"\nsecond line'] for w in words[n : n + PER_FILE]]
    return parts


def csv_rows(data: bytes) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(gzip.decompress(data).decode("utf-8"), newline="")))
    assert rows[0] == ["word", "count", "note"]  # the header in every part
    return rows[1:]


def jsonl_records(data: bytes) -> list[dict]:
    text = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read().decode("utf-8")
    return [json.loads(line) for line in text.splitlines()]
