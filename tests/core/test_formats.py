"""Output formats (text, csv, jsonl, value) x compressions (none, gzip, zstd) on threads and processes,
map-only, with a reduce and in several stages; part files split by --max-records-per-file; csv header
rows and quoting; reading csv and jsonl output back; bad formats, compressions and headers."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest
import zstandard

import corral
from corral.shuffle import default_partition

from . import jobs
from .util import clean_env, cli, manifest, run, run_command

FORMATS = ["text", "csv", "jsonl", "value"]
COMPRESSIONS = ["none", "gzip", "zstd"]
SUFFIX = {"text": "", "value": "", "csv": ".csv", "jsonl": ".jsonl"}
COMPRESSED = {"none": "", "gzip": ".gz", "zstd": ".zst"}

#: Pairs every format can hold (no newline in a str, no tab in a key).
PAIRS: list[tuple[str, Any]] = [
    ("plain", "text"),
    ("int", 42),
    ("negative", -7),
    ("float", 2.5),
    ("small", 1e-05),
    ("true", True),
    ("false", False),
    ("none", None),
    ("comma,key", "a, b, c"),
    ('quote"key', 'say "hi"'),
    ("list", [1, "two, three", None, 3.5, True]),
    ("nested", [[1, 2], {"a": "b"}]),
    ("dict", {"a": 1, "b": [True, None]}),
    ("ünïcode ✓ 🐍", "héllo wörld ✓ 🐍"),
    ("empty", ""),
    ("empty-list", []),
]
#: Pairs only csv and jsonl can hold: newlines and carriage returns inside keys and values.
MULTILINE: list[tuple[str, Any]] = [
    ("line\nbreak", "first line\nsecond line"),
    ("crlf", "a\r\nb"),
    ("quoted list", ['"quoted"\n', "x"]),
]


class EchoPairs(corral.Job):
    """Map-only: each jsonl input line {"k": key, "v": value} becomes the pair (key, value)."""

    input_format = "jsonl"

    def map(self, key, record):
        yield record["k"], record["v"]


class EchoReduce(EchoPairs):
    """The same pairs through the shuffle: reduce yields each value of its key."""

    def reduce(self, key, values):
        for value in values:
            yield key, value


class EchoTwoStages(EchoPairs):
    """Stage 1 keys each pair by its position; stage 2 restores the key (a map-only last stage)."""

    def steps(self):
        return [corral.Step(map=self.number, reduce=self.keep), corral.Step(map=self.restore)]

    def number(self, key, record):
        yield f"{record['n']:05d}", [record["k"], record["v"]]

    def keep(self, key, values):
        for value in values:
            yield key, value

    def restore(self, key, value):
        yield value[0], value[1]


def write_pairs(path: Path, pairs: list[tuple[str, Any]]) -> Path:
    path.write_text("".join(json.dumps({"n": n, "k": k, "v": v}) + "\n" for n, (k, v) in enumerate(pairs)),
                    encoding="utf-8")
    return path


# --- an independent reading of each format -------------------------------------------------------------


def decompress(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return data


def cell(value: Any) -> str:
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return value if isinstance(value, str) else repr(value)


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def expected_record(fmt: str, key: str | None, value: Any) -> Any:
    """What reading one pair back from a part file of ``fmt`` gives."""
    if fmt == "text":
        return as_text(value) if key is None else f"{key}\t{as_text(value)}"
    if fmt == "value":
        return as_text(value)
    if fmt == "jsonl":
        return {"key": key, "value": value}
    cells = list(value) if isinstance(value, list) else [value]
    return [cell(c) for c in ([] if key is None else [key]) + cells]


def read_records(fmt: str, path: Path, header: bool = False) -> list[Any]:
    text = decompress(path).decode("utf-8")
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(text, newline="")))
        return rows[1:] if header else rows
    assert text == "" or text.endswith("\n")
    lines = text.split("\n")[:-1]
    return [json.loads(line) for line in lines] if fmt == "jsonl" else lines


def part_files(out: Path) -> list[Path]:
    return sorted(out.glob("part-*"))


# --- every format x compression ------------------------------------------------------------------------


def _pairs_for(fmt: str) -> list[tuple[str, Any]]:
    return PAIRS + MULTILINE if fmt in ("csv", "jsonl") else PAIRS


@pytest.mark.parametrize("backend", ["threads", "processes"])
@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_map_only_output_in_every_format_and_compression(tmp_path, fmt, compression, backend):
    pairs = _pairs_for(fmt)
    source = write_pairs(tmp_path / "in.jsonl", pairs)
    result = run(EchoPairs, source, tmp_path / "out", backend=backend, output_format=fmt,
                 output_compression=compression)
    (part,) = part_files(tmp_path / "out")
    assert part.name == f"part-00000{SUFFIX[fmt]}{COMPRESSED[compression]}"
    assert read_records(fmt, part) == [expected_record(fmt, k, v) for k, v in pairs]  # in map's order
    assert result["output"] == {"format": fmt, "compression": compression, "header": None, "max_records": None}


@pytest.mark.parametrize("backend", ["threads", "processes"])
@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_reduce_output_in_every_format_and_compression(tmp_path, fmt, compression, backend):
    pairs = _pairs_for(fmt)
    source = write_pairs(tmp_path / "in.jsonl", pairs)
    run(EchoReduce, source, tmp_path / "out", backend=backend, output_format=fmt, output_compression=compression,
        reducers=3)
    parts = part_files(tmp_path / "out")
    assert [p.name for p in parts] == [f"part-0000{r}{SUFFIX[fmt]}{COMPRESSED[compression]}" for r in range(3)]
    for r, part in enumerate(parts):  # each reducer's keys, in sorted order
        keys = sorted(k for k, _ in pairs if default_partition(k, 3) == r)
        by_key = dict(pairs)
        assert read_records(fmt, part) == [expected_record(fmt, k, by_key[k]) for k in keys]


@pytest.mark.parametrize("backend", ["threads", "processes"])
@pytest.mark.parametrize(("fmt", "compression"), [("csv", "gzip"), ("jsonl", "zstd"), ("text", "gzip"),
                                                   ("value", "none")])
def test_only_the_last_stage_has_the_format_and_compression(tmp_path, fmt, compression, backend):
    pairs = _pairs_for(fmt)
    source = write_pairs(tmp_path / "in.jsonl", pairs)
    run(EchoTwoStages, source, tmp_path / "out", backend=backend, output_format=fmt,
        output_compression=compression, reducers=1, keep_intermediate=True)
    (part,) = part_files(tmp_path / "out")
    assert part.name == f"part-00000{SUFFIX[fmt]}{COMPRESSED[compression]}"
    # one reducer: stage 1 sorts by position, so stage 2 sees the pairs in their input order
    assert read_records(fmt, part) == [expected_record(fmt, k, v) for k, v in pairs]
    between = [p for p in (tmp_path / "out" / "_corral" / "work").rglob("*") if p.is_file()]
    assert sorted(p.suffix for p in between) == [".bin", ".rec"]  # corral's own records between the stages


def test_csv_quoting_exactly(tmp_path):
    pairs = [("a,b", 'say "hi"\nthere'), ("plain", [1, 2.5, None, True, "x\ry"]), ("é", {"k": "v"})]
    run(EchoPairs, write_pairs(tmp_path / "in.jsonl", pairs), tmp_path / "out", output_format="csv")
    assert (tmp_path / "out" / "part-00000.csv").read_bytes() == (
        '"a,b","say ""hi""\nthere"\n'
        'plain,1,2.5,,true,"x\ry"\n'
        'é,"{""k"": ""v""}"\n'
    ).encode()


def test_jsonl_is_utf8_without_ascii_escapes(tmp_path):
    run(EchoPairs, write_pairs(tmp_path / "in.jsonl", [("ключ", "✓ 🐍"), ("n", [1, None])]), tmp_path / "out",
        output_format="jsonl")
    assert (tmp_path / "out" / "part-00000.jsonl").read_bytes() == (
        '{"key": "ключ", "value": "✓ 🐍"}\n{"key": "n", "value": [1, null]}\n'
    ).encode()


def test_gzip_and_zstd_parts_are_the_same_bytes_on_every_run(tmp_path):
    source = write_pairs(tmp_path / "in.jsonl", PAIRS)
    for compression in ("gzip", "zstd"):
        got = []
        for backend in ("threads", "processes"):
            out = tmp_path / f"{compression}-{backend}"
            run(EchoPairs, source, out, backend=backend, output_format="csv", output_compression=compression)
            got.append(part_files(out)[0].read_bytes())
        assert got[0] == got[1]
    assert got[0][:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_compressed_part_reaches_its_file_as_it_is_written(tmp_path, compression):
    """Streamed through the compressor: half-way through a 3 MB part, about half of it is on disk (a part
    held in memory, compressed at close, would leave the file empty until then)."""
    import random

    from corral.output import BATCH, OutputSpec, PartWriter

    rng = random.Random(3)
    path = tmp_path / "part"
    writer = PartWriter(str(path), OutputSpec("csv", compression))
    sizes = []
    for n in range(10):
        writer.add_all((f"key-{n}-{i}", [i, rng.randbytes(12).hex()]) for i in range(BATCH))
        sizes.append(path.stat().st_size)
    (written,) = writer.close()
    final = path.stat().st_size
    assert written == str(path) and final > 1_000_000
    assert 0.3 * final < sizes[4] < 0.7 * final and sizes == sorted(sizes)
    rows = list(csv.reader(io.StringIO(_decompressed(path.read_bytes(), compression).decode())))
    assert len(rows) == 10 * BATCH and rows[0][0] == "key-0-0" and rows[-1][0] == f"key-9-{BATCH - 1}"


def _decompressed(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.decompress(data)
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()


# --- header rows and --max-records-per-file ----------------------------------------------------------


class Totals(corral.Job):
    """Counts of each word and its length, as csv rows (word, count, length) under a header."""

    output_format = "csv"
    output_compression = "gzip"
    output_header = ["word", "count", "length"]

    def map(self, key, line):
        for word in line.split():
            yield word, 1

    def combine(self, word, counts):
        yield word, sum(counts)

    def reduce(self, word, counts):
        yield word, [sum(counts), len(word)]


WORDS = "the cat sat on the mat with the hat and a bat; the end é"


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_max_records_per_file_splits_each_reducers_output_with_a_header_in_every_part(tmp_path, backend):
    (tmp_path / "in.txt").write_text(f"{WORDS}\n", encoding="utf-8")
    run(Totals, tmp_path / "in.txt", tmp_path / "out", backend=backend, reducers=2, max_records_per_file=3)
    counts: dict[str, int] = {}
    for word in WORDS.split():
        counts[word] = counts.get(word, 0) + 1
    expected_names = []
    for r in range(2):
        keys = sorted(w for w in counts if default_partition(w, 2) == r)
        chunks = [keys[i : i + 3] for i in range(0, len(keys), 3)]
        for n, chunk in enumerate(chunks):
            name = f"part-{r:05d}-{n:05d}.csv.gz"
            expected_names.append(name)
            rows = list(csv.reader(io.StringIO(gzip.decompress((tmp_path / "out" / name).read_bytes()).decode())))
            assert rows == [["word", "count", "length"]] + [[w, str(counts[w]), str(len(w))] for w in chunk]
    assert [p.name for p in part_files(tmp_path / "out")] == expected_names


def test_max_records_per_file_on_a_map_only_job(tmp_path):
    pairs = [(f"k{n}", n) for n in range(7)]
    run(EchoPairs, write_pairs(tmp_path / "in.jsonl", pairs), tmp_path / "out", max_records_per_file=3,
        output_compression="zstd")
    parts = part_files(tmp_path / "out")
    assert [p.name for p in parts] == ["part-00000-00000.zst", "part-00000-00001.zst", "part-00000-00002.zst"]
    assert [decompress(p).decode() for p in parts] == ["k0\t0\nk1\t1\nk2\t2\n", "k3\t3\nk4\t4\nk5\t5\n", "k6\t6\n"]


def test_an_empty_reducer_writes_a_header_only_part(tmp_path):
    (tmp_path / "in.txt").write_text("x\n")
    run(Totals, tmp_path / "in.txt", tmp_path / "out", reducers=2)
    texts = [gzip.decompress(p.read_bytes()).decode() for p in part_files(tmp_path / "out")]
    assert sorted(texts) == ["word,count,length\n", "word,count,length\nx,1,1\n"]


class RaggedRows(Totals):
    def reduce(self, word, counts):
        yield word, [sum(counts)] if word == "cat" else [sum(counts), len(word)]


def test_a_row_that_does_not_fit_the_header_fails_naming_the_task_and_the_row(tmp_path):
    (tmp_path / "in.txt").write_text("the cat sat\n")
    with pytest.raises(corral.JobFailed) as failed:
        run(RaggedRows, tmp_path / "in.txt", tmp_path / "out", reducers=1, retries=0)
    assert str(failed.value) == (
        "task reduce-0000 attempt 1: ValueError: output row 1 has 2 columns, but output_header has 3 "
        "(word, count, length): ['cat', 1]"
    )
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    assert part_files(tmp_path / "out") == []


# --- reading output back --------------------------------------------------------------------------------


class ReadCsv(corral.Job):
    """csv input: each row as it was parsed; the header row of every file names the columns."""

    input_format = "csv"
    input_header = True
    output_format = "jsonl"

    def map(self, key, row):
        yield row["word"], row


class ReadRows(corral.Job):
    input_format = "csv"
    output_format = "jsonl"

    def map(self, key, row):
        yield None, row


class ReadJsonl(corral.Job):
    input_format = "jsonl"

    def map(self, key, record):
        yield record["key"], record["value"]

    def reduce(self, key, values):
        for value in values:
            yield key, value


def test_csv_gz_output_reads_back_as_csv_input(tmp_path):
    (tmp_path / "in.txt").write_text(f"{WORDS}\n", encoding="utf-8")
    run(Totals, tmp_path / "in.txt", tmp_path / "totals", reducers=2, max_records_per_file=4)
    run(ReadCsv, tmp_path / "totals", tmp_path / "back")
    records = [json.loads(line) for p in part_files(tmp_path / "back") for line in p.read_text().splitlines()]
    written = [row for p in part_files(tmp_path / "totals")
               for row in csv.DictReader(io.StringIO(gzip.decompress(p.read_bytes()).decode()))]
    assert records == [{"key": row["word"], "value": row} for row in written]
    assert len(records) == len(set(WORDS.split()))


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_csv_and_jsonl_round_trips_are_exact(tmp_path, compression):
    pairs = PAIRS + MULTILINE
    source = write_pairs(tmp_path / "in.jsonl", pairs)
    run(EchoPairs, source, tmp_path / "csv", output_format="csv", output_compression=compression,
        max_records_per_file=5)
    run(ReadRows, tmp_path / "csv", tmp_path / "rows")  # csv files, split on the way: one split each
    rows = [json.loads(line)["value"] for line in (tmp_path / "rows" / "part-00000.jsonl").read_text().splitlines()]
    assert rows == [expected_record("csv", k, v) for k, v in pairs]

    run(EchoPairs, source, tmp_path / "jsonl", output_format="jsonl", output_compression=compression, reducers=1)
    run(ReadJsonl, tmp_path / "jsonl", tmp_path / "again", output_format="jsonl", reducers=1)
    assert read_records("jsonl", part_files(tmp_path / "again")[0]) == [
        {"key": k, "value": v} for k, v in sorted(pairs, key=lambda p: p[0])  # one reducer: sorted by key
    ]


def test_csv_input_with_a_quoted_newline_across_read_chunks(tmp_path, monkeypatch):
    import corral.split

    monkeypatch.setattr(corral.split, "READ_BLOCK", 16)  # chunks end inside quoted fields
    (tmp_path / "in.csv").write_text('word,count\n"two\nlines, and ""quotes""",1\nplain,2\n', encoding="utf-8")
    run(ReadCsv, tmp_path / "in.csv", tmp_path / "out", split_size="8")
    assert read_records("jsonl", tmp_path / "out" / "part-00000.jsonl") == [
        {"key": 'two\nlines, and "quotes"', "value": {"word": 'two\nlines, and "quotes"', "count": "1"}},
        {"key": "plain", "value": {"word": "plain", "count": "2"}},
    ]


def test_a_csv_row_that_does_not_fit_the_input_header_is_an_input_error(tmp_path):
    (tmp_path / "in.csv").write_text("word,count\na,1\nb,2,3\n")
    with pytest.raises(corral.JobFailed) as failed:
        run(ReadCsv, tmp_path / "in.csv", tmp_path / "out")
    assert str(failed.value) == (
        f"task map-0000 attempt 1: {tmp_path / 'in.csv'}: a row has 3 fields, but the header row has 2 "
        "(word, count): ['b', '2', '3']"
    )


def test_a_jsonl_line_that_is_not_json_names_its_offset(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"k": "a", "v": 1}\n{"k": "é", "v": 2}\n{oops\n')
    with pytest.raises(corral.JobFailed) as failed:
        run(EchoPairs, tmp_path / "in.jsonl", tmp_path / "out")
    assert str(failed.value).startswith(
        f"task map-0000 attempt 1: {tmp_path / 'in.jsonl'}: the line at byte offset 39 is not JSON (")


# --- from the command line, and bad settings -----------------------------------------------------------


def test_output_flags_on_the_command_line(tmp_path, capsys):
    job = tmp_path / "echo.py"
    job.write_text("import corral\n\nclass Echo(corral.Job):\n    def map(self, key, line):\n"
                   "        yield line, len(line)\n")
    (tmp_path / "in.txt").write_text("a,b\nc\n")
    code, _, err = cli(capsys, "run", job, tmp_path / "in.txt", "--out", tmp_path / "out", "-q", "--backend",
                       "threads", "--output-format", "csv", "--output-compression", "gzip")
    assert (code, err) == (0, "")
    assert gzip.decompress((tmp_path / "out" / "part-00000.csv.gz").read_bytes()) == b'"a,b",3\nc,1\n'
    assert manifest(tmp_path / "out")["output"]["format"] == "csv"


class BadFormat(EchoPairs):
    output_format = "xml"


class BadCompression(EchoPairs):
    output_compression = "lz4"


class BadHeader(EchoPairs):
    output_header = "word,count"


class HeaderWithoutCsv(EchoPairs):
    output_header = ["a", "b"]


class BadInputFormat(EchoPairs):
    input_format = "parquet"


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (BadFormat, "invalid value for BadFormat.output_format: 'xml' is not one of text, csv, jsonl, value"),
        (BadCompression, "invalid value for BadCompression.output_compression: 'lz4' is not one of none, gzip, zstd"),
        (BadHeader, "invalid value for BadHeader.output_header: 'word,count' is not a list of column names"),
        (HeaderWithoutCsv, "HeaderWithoutCsv.output_header is set, but HeaderWithoutCsv.output_format is 'text': "
                           "a header row needs output_format = 'csv'"),
        (BadInputFormat, "invalid value for BadInputFormat.input_format: 'parquet' is not one of lines, tsv, csv, "
                         "jsonl"),
    ],
)
def test_a_bad_format_on_the_job_is_a_usage_error_before_anything_runs(tmp_path, job, message):
    (tmp_path / "in.jsonl").write_text("{}\n")
    with pytest.raises(corral.UsageError) as failed:
        run(job, tmp_path / "in.jsonl", tmp_path / "out")
    assert str(failed.value) == message
    assert not (tmp_path / "out").exists()


def test_a_header_job_run_with_another_format_writes_no_header(tmp_path):
    (tmp_path / "in.txt").write_text("b a\n")
    run(Totals, tmp_path / "in.txt", tmp_path / "out", output_format="jsonl", output_compression="none", reducers=1)
    assert (tmp_path / "out" / "part-00000.jsonl").read_text() == (
        '{"key": "a", "value": [1, 1]}\n{"key": "b", "value": [1, 1]}\n')


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--output-format", "xml"], {}, "invalid value for --output-format: 'xml' is not one of text, csv, jsonl, "
                                         "value"),
        (["--output-compression", "bz2"], {}, "invalid value for --output-compression: 'bz2' is not one of none, "
                                              "gzip, zstd"),
        ([], {"CORRAL_OUTPUT_FORMAT": "parquet"}, "invalid value for CORRAL_OUTPUT_FORMAT: 'parquet' is not one of "
                                                  "text, csv, jsonl, value"),
        (["--max-records-per-file", "0"], {}, "invalid value for --max-records-per-file: 0 is out of range (must "
                                              "be at least 1)"),
    ],
)
def test_bad_output_settings_exit_2_naming_the_setting(tmp_path, args, env, message):
    (tmp_path / "in.txt").write_text("a\n")
    job = Path(__file__).resolve().parents[2] / "examples" / "wordcount.py"
    done = run_command("corral", "run", job, tmp_path / "in.txt", "--out", tmp_path / "out", *args,
                       env=clean_env(**env))
    assert (done.returncode, done.stderr) == (2, f"corral: error: {message}\n")
    assert not (tmp_path / "out").exists()


def test_a_bad_output_setting_in_corral_toml_names_the_file(tmp_path):
    (tmp_path / "corral.toml").write_text('output_compression = "lz4"\n')
    (tmp_path / "in.txt").write_text("a\n")
    job = Path(__file__).resolve().parents[2] / "examples" / "wordcount.py"
    done = run_command("corral", "run", job, "in.txt", "--out", "out", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (2, f"corral: error: invalid value for output_compression in "
                                                 f"{tmp_path / 'corral.toml'}: 'lz4' is not one of none, gzip, zstd\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("values", [[1, -2, 10**15], ["a", 'q"uote', "back\\slash", "tab\tnew\nline\x01", "é ✓"]])
def test_jsonl_lines_are_what_json_dumps_writes(tmp_path, values):
    keys = ['k"1', "k\\2", "k\n3\x7f", "ключ 🐍", ""][: len(values)]
    pairs = list(zip(keys, values, strict=False))
    run(EchoPairs, write_pairs(tmp_path / "in.jsonl", pairs), tmp_path / "out", output_format="jsonl")
    assert (tmp_path / "out" / "part-00000.jsonl").read_text(encoding="utf-8") == "".join(
        json.dumps({"key": k, "value": v}, ensure_ascii=False) + "\n" for k, v in pairs)


@pytest.mark.parametrize("line, message", [
    ("nan", "the value nan (of type float)"),
    ("inf", "-inf in the value {'scores': [1.0, -inf]}"),
])
def test_jsonl_output_refuses_nan_and_infinity_naming_method_key_and_value(tmp_path, capsys, line, message):
    """Python's json writes NaN and Infinity, which JSON readers (and warehouses) refuse."""
    (tmp_path / "in.txt").write_text(f"ok\n{line}\n")
    code, _, err = cli(capsys, "run", f"{jobs.__file__}:NonFinite", tmp_path / "in.txt", "--out", tmp_path / "out",
                       "--output-format", "jsonl", "--retries", "0")
    assert code == 1
    assert err == (f"corral: job failed: task map-0000 attempt 1: ValueError: map yielded a value jsonl output cannot "
                   f"store for the key {line!r}: {message}; JSON has no NaN or Infinity (yield None, or a string such "
                   "as 'nan')\n")
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_jsonl_output_of_finite_floats_is_json(tmp_path):
    (tmp_path / "in.txt").write_text("ok\n")
    run(jobs.NonFinite, tmp_path / "in.txt", tmp_path / "out", output_format="jsonl")
    assert (tmp_path / "out" / "part-00000.jsonl").read_text() == '{"key": "ok", "value": 1.5}\n'


def test_text_output_of_values_alone_in_one_batch():
    """A batch of None keys writes the values alone (a str as is, an int as JSON writes it), through the
    path for str and int values; a bool or a float in the batch takes the per-pair path, same text."""
    from corral.output import text_format

    encode = text_format()
    pairs = [(None, "rec\r"), (None, 12), (None, ""), (None, "é\tx")]
    assert encode(pairs, {type(None)}, {str, int}) == "rec\r\n12\n\né\tx\n"
    assert encode([*pairs, (None, True), (None, 1.5)], {type(None)}, {str, int, bool, float}) == (
        "rec\r\n12\n\né\tx\ntrue\n1.5\n")
