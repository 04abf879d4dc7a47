"""Input records and split reading: a line belongs to the split in which it starts."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import os

import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import corral
import corral.split
from corral.fs import FileInfo, get_filesystem
from corral.planner import make_splits
from corral.split import decode_lines, iter_line_chunks, iter_text_records

from . import jobs
from .util import cli, lines, manifest, run


def read_all(path, split_size, errors="strict", input_format="lines"):
    """Every record of ``path`` read split by split, as the map tasks would."""
    url = str(path)
    fs = get_filesystem(url)
    size = os.path.getsize(url)
    records = []
    for split in make_splits([FileInfo(url, size)], split_size):
        for batch in iter_text_records(fs, split, input_format, errors):
            records.extend(batch)
    return records


@contextlib.contextmanager
def read_block(size):
    """Scan with a small read block, so that lines span many reads (the multi-block code paths); splits
    of at most ``size`` bytes are read in one request (the small-split path), longer ones streamed."""
    saved = corral.split.READ_BLOCK, corral.split.SMALL_READ
    corral.split.READ_BLOCK = corral.split.SMALL_READ = size
    try:
        yield
    finally:
        corral.split.READ_BLOCK, corral.split.SMALL_READ = saved


# --- input records -------------------------------------------------------------------------------


def test_lines_are_records_with_key_none_and_no_line_ending(tmp_path):
    (tmp_path / "in.txt").write_bytes(b"first\nsecond\r\n\nfourth \t x\r\n\r\n  \nlast without newline")
    run(jobs.Records, tmp_path / "in.txt", tmp_path / "out")
    assert [json.loads(line) for line in lines(tmp_path / "out")] == [
        [None, "first"],
        [None, "second"],
        [None, ""],
        [None, "fourth \t x"],
        [None, ""],
        [None, "  "],
        [None, "last without newline"],
    ]


def test_a_lone_carriage_return_inside_a_line_is_kept(tmp_path):
    (tmp_path / "in.txt").write_bytes(b"a\rb\nc\r\r\n")
    assert read_all(tmp_path / "in.txt", 100) == ["a\rb", "c\r"]


def test_tsv_records(tmp_path):
    (tmp_path / "in.tsv").write_text(
        "key\tvalue\nno tab here\ntwo\ttabs\there\n\tempty key\nempty value\t\n\t\nk\tv\r\n", encoding="utf-8"
    )
    run(jobs.TsvRecords, tmp_path / "in.tsv", tmp_path / "out")
    assert [json.loads(line) for line in lines(tmp_path / "out")] == [
        ["key", "value"],
        [None, "no tab here"],
        [None, "two\ttabs\there"],
        ["", "empty key"],
        ["empty value", ""],
        ["", ""],
        ["k", "v"],
    ]


def test_empty_file_and_file_of_empty_lines(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a-empty.txt").write_bytes(b"")
    (tmp_path / "in" / "b-newlines.txt").write_bytes(b"\n\r\n\n")
    run(jobs.Records, tmp_path / "in", tmp_path / "out")
    assert lines(tmp_path / "out") == ['[null, ""]'] * 3


# --- undecodable input -----------------------------------------------------------------------------


def _bad_file(path, bad_at_line=1000):
    """Lines of text with one invalid byte (0xFF) in line ``bad_at_line``; returns its byte offset."""
    data = "".join(f"line {i} é\n" for i in range(bad_at_line)).encode() + b"abc\xffdef\n" + b"more\n" * 50
    path.write_bytes(data)
    return data.index(b"\xff")


@pytest.mark.parametrize("split_size", ["64MB", "1KB", "100"])
def test_invalid_utf8_fails_naming_file_and_exact_offset(tmp_path, capsys, split_size):
    offset = _bad_file(tmp_path / "bad.txt")
    assert offset > 10_000  # the bad byte is far into the file: a later split at small split sizes
    code, _, err = cli(
        capsys, "run", f"{jobs.__file__}:Cat", tmp_path / "bad.txt", "--out", tmp_path / "out",
        "--backend", "threads", "--split-size", split_size, "--retries", "0", "-q",
    )
    assert code == 1
    assert f"{tmp_path / 'bad.txt'}: invalid UTF-8 at byte offset {offset} " in err
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    assert not list((tmp_path / "out").glob("part-*"))
    assert manifest(tmp_path / "out")["status"] == "failed"


def test_invalid_utf8_offset_counts_bytes_not_characters(tmp_path):
    data = "€€€\n".encode() * 3 + b"\xe2\x82\n"  # a truncated euro sign
    (tmp_path / "bad.txt").write_bytes(data)
    with pytest.raises(corral.JobFailed, match=r"bad.txt: invalid UTF-8 at byte offset 30 "):
        run(jobs.Cat, tmp_path / "bad.txt", tmp_path / "out", retries=0)


def test_invalid_utf8_in_a_compressed_file_names_the_offset_in_its_content(tmp_path):
    data = b"ok\n" * 10 + b"x\x80y\n"
    (tmp_path / "bad.txt.gz").write_bytes(gzip.compress(data))
    with pytest.raises(corral.JobFailed, match=r"bad.txt.gz: invalid UTF-8 at byte offset 31 "):
        run(jobs.Cat, tmp_path / "bad.txt.gz", tmp_path / "out", retries=0)


@pytest.mark.parametrize("split_size", ["64MB", "100"])
def test_input_errors_replace_reads_bad_bytes_as_replacement_characters(tmp_path, split_size):
    _bad_file(tmp_path / "bad.txt", bad_at_line=3)
    run(jobs.ReplaceErrors, tmp_path / "bad.txt", tmp_path / "out", split_size=split_size)
    values = [json.loads(line)[1] for line in lines(tmp_path / "out")]
    assert values == ["line 0 é", "line 1 é", "line 2 é", "abc\ufffddef"] + ["more"] * 50


def test_invalid_utf8_message_is_one_line_without_traceback(tmp_path, capsys):
    offset = _bad_file(tmp_path / "bad.txt", bad_at_line=5)
    code, out, err = cli(
        capsys, "run", f"{jobs.__file__}:Cat", tmp_path / "bad.txt", "--out", tmp_path / "out",
        "--backend", "threads", "--retries", "0",
    )
    assert (code, out) == (1, "")
    assert err == (
        f"corral: job failed: task map-0000 attempt 1: {tmp_path / 'bad.txt'}: invalid UTF-8 at byte offset "
        f"{offset} (set input_errors = 'replace' on the job to read it anyway)\n"
    )


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_input_errors_surrogateescape_keeps_undecodable_bytes(tmp_path, backend):
    data = b"ok\nab\xffcd\n\xc3(\r\nlatin-1: caf\xe9\nab\xffcd\n"
    (tmp_path / "in.txt").write_bytes(data)
    run(jobs.SurrogateCat, tmp_path / "in.txt", tmp_path / "cat", backend=backend)
    assert (tmp_path / "cat" / "part-00000").read_bytes() == data.replace(b"\r\n", b"\n")
    run(jobs.SurrogateLineCount, tmp_path / "in.txt", tmp_path / "count", backend=backend, reducers=1)
    assert (tmp_path / "count" / "part-00000").read_bytes() == (
        b"ab\xffcd\t2\nlatin-1: caf\xe9\t1\nok\t1\n\xc3(\t1\n"  # keys sorted as str: surrogates last
    )


def test_decode_lines_directly():
    assert decode_lines(b"a\r\nb\n\nc", 0, "x", "strict") == ["a", "b", "", "c"]
    assert decode_lines(b"\n", 0, "x", "strict") == [""]
    with pytest.raises(corral.InputError, match=r"^x: invalid UTF-8 at byte offset 105 "):
        decode_lines(b"ok\n\xc3(\n", 102, "x", "strict")
    assert decode_lines(b"\xc3(\n", 0, "x", "replace") == ["\ufffd("]


# --- splits: every line exactly once, in order -----------------------------------------------------

line_text = st.text(
    alphabet=st.sampled_from("ab \t\ré€😀\x00") | st.characters(blacklist_categories=("Cs",)),
    max_size=10,
).filter(lambda s: "\n" not in s and not s.endswith("\r"))
long_line = st.builds(lambda s, n: (s or "z") * n, line_text, st.integers(10, 60))
a_line = st.tuples(line_text | long_line, st.sampled_from(["\n", "\r\n"]))


@st.composite
def text_files(draw):
    """(file bytes, the lines a reader must return)."""
    body = draw(st.lists(a_line, max_size=20))
    last = draw(st.one_of(st.just(""), line_text, long_line))  # an unterminated last line
    data = "".join(text + end for text, end in body) + last
    expected = [text for text, _ in body] + ([last] if last else [])
    return data.encode("utf-8"), expected


def check_every_line_read_once(tmp_path_factory, data, file, block):
    content, expected = file
    path = tmp_path_factory.mktemp("split") / "f.txt"
    path.write_bytes(content)
    split_sizes = [len(content) + 5]
    if data is not None:
        split_sizes.append(data.draw(st.integers(1, len(content) + 5), label="split_size"))
        if block > 3:  # one split per byte (with 1-byte reads this is quadratic: too slow to test)
            split_sizes.append(1)
    with read_block(block):
        for split_size in split_sizes:
            assert read_all(path, split_size) == expected, f"split size {split_size}"


blocks = st.sampled_from([1, 2, 3, 7, 64, 4 << 20])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), file=text_files(), block=blocks)
@example(data=None, file=(b"", []), block=4 << 20)
@example(data=None, file=(b"\n", [""]), block=1)
def test_every_line_is_read_exactly_once_in_order(tmp_path_factory, data, file, block):
    check_every_line_read_once(tmp_path_factory, data, file, block)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), file=text_files(), block=blocks)
def test_every_line_is_read_exactly_once_in_order_many_examples(tmp_path_factory, data, file, block):
    check_every_line_read_once(tmp_path_factory, data, file, block)


@settings(max_examples=60, deadline=None)
@given(file=text_files(), split_size=st.integers(1, 64))
def test_split_chunks_are_contiguous_line_aligned_and_cover_the_file(tmp_path_factory, file, split_size):
    content, _ = file
    path = tmp_path_factory.mktemp("chunks") / "f.txt"
    path.write_bytes(content)
    fs = get_filesystem(str(path))
    position = 0
    for split in make_splits([FileInfo(str(path), len(content))], split_size):
        for offset, chunk in iter_line_chunks(fs, split):
            assert offset == position  # chunks follow each other, no gap and no overlap
            assert chunk.endswith(b"\n") or offset + len(chunk) == len(content)
            assert content[offset : offset + len(chunk)] == chunk
            position += len(chunk)
    assert position == len(content)


def test_split_boundaries_inside_crlf_and_at_line_starts(tmp_path):
    content = b"ab\r\ncd\r\n\r\nef"
    (tmp_path / "f.txt").write_bytes(content)
    for split_size in range(1, len(content) + 2):
        assert read_all(tmp_path / "f.txt", split_size) == ["ab", "cd", "", "ef"], split_size


@pytest.fixture(scope="module")
def huge_lines_file(tmp_path_factory):
    """Short lines around a 2 MB line and a 5 MB line (multi-byte characters in both)."""
    lines = ["start", "", "é" * (1 << 20), "between", "x" * (5 << 20) + "€", "", "end\tof file"]
    path = tmp_path_factory.mktemp("huge") / "huge.txt"
    path.write_bytes("\r\n".join(lines).encode("utf-8"))
    return path, lines


@pytest.mark.parametrize("split_size", [4096, 65536, 1 << 20, 2 << 20, (2 << 20) + 7, 64 << 20])
def test_lines_of_several_megabytes_with_small_splits(huge_lines_file, split_size):
    path, expected = huge_lines_file
    got = read_all(path, split_size)
    assert len(got) == len(expected)
    assert got == expected


def test_huge_lines_through_a_job_with_tiny_splits(huge_lines_file, tmp_path):
    path, expected = huge_lines_file
    run(jobs.LineCount, path, tmp_path / "out", split_size="3KB", reducers=2)
    got = dict(line.rsplit("\t", 1) for line in lines(tmp_path / "out"))
    assert got == {line: "2" if line == "" else "1" for line in expected}
    stage = manifest(tmp_path / "out")["stages"][0]
    assert len([s for b in stage["plan"] for s in b]) == -(-path.stat().st_size // 3072)


# --- compressed input ------------------------------------------------------------------------------

COMPRESSORS = {
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_compressed_files_are_read_transparently_as_one_split(tmp_path, suffix):
    text = "".join(f"line {i} ✓\r\n" if i % 3 else f"line {i} ✓\n" for i in range(5000)) + "\nlast"
    path = tmp_path / f"in.txt{suffix}"
    path.write_bytes(COMPRESSORS[suffix](text.encode("utf-8")))
    splits = make_splits([FileInfo(str(path), path.stat().st_size)], 100)
    assert len(splits) == 1 and (splits[0].start, splits[0].end) == (0, path.stat().st_size)
    expected = text.replace("\r\n", "\n").split("\n")
    assert read_all(path, 100) == expected
    run(jobs.Cat, path, tmp_path / "out", split_size="100")
    assert lines(tmp_path / "out") == expected
    assert manifest(tmp_path / "out")["stages"][0]["map_tasks"] == 1


def test_zstd_frame_without_content_size(tmp_path):
    """A streamed .zst (no content size in its header, as `zstd` writes from a pipe) reads fully."""
    path = tmp_path / "in.zst"
    with open(path, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as writer:
        for i in range(1000):
            writer.write(f"{i}\n".encode())
    assert read_all(path, 10) == [str(i) for i in range(1000)]


def test_concatenated_gzip_members(tmp_path):
    path = tmp_path / "in.gz"
    path.write_bytes(gzip.compress(b"a\nb\n") + gzip.compress(b"c\n"))
    assert read_all(path, 1) == ["a", "b", "c"]


def _gzip_shapes() -> dict[str, bytes]:
    """Small gzip files of every shape a reader must tell apart (one member or not, damage, padding)."""
    text = b"".join(b"GET /models/%d.bin 200 %s\n" % (i, b"x" * (i % 7)) for i in range(400))
    one = gzip.compress(text, mtime=0)
    flipped = bytearray(one)
    flipped[len(one) // 2] ^= 0x55
    return {
        "one member": one,
        "the same member twice (cat a.gz a.gz)": one + one,
        "two members": one + gzip.compress(b"last line\n"),
        "zero padding": one + b"\0" * 5,
        "trailing garbage": one + b"garbage!",
        "damaged": bytes(flipped),
        "wrong CRC": one[:-8] + bytes(4) + one[-4:],
        "truncated": one[:-3],
        "empty member": gzip.compress(b"", mtime=0),
        "header only": one[:10],
    }


def _read_gzip_file(tmp_path, name, data):
    """What a map task reads of a small gzip file: its lines, or its error's message."""
    path = tmp_path / (name.replace(" ", "-").replace("/", "") + ".txt.gz")
    path.write_bytes(data)
    try:
        return read_all(path, 1 << 20)
    except corral.errors.InputError as exc:
        return f"error: {exc}"


@pytest.mark.parametrize("shape", sorted(_gzip_shapes()))
def test_small_gzip_files_read_alike_with_libdeflate_or_zlib(tmp_path, monkeypatch, shape):
    """libdeflate inflates a small file only when it is one member and nothing else: every other shape
    goes to zlib: the lines are what the gzip module reads, the errors zlib's, word for word."""
    assert corral.split._libdeflate_gunzip is not None  # deflate is one of corral's dependencies
    data = _gzip_shapes()[shape]
    fast = _read_gzip_file(tmp_path, shape, data)
    monkeypatch.setattr(corral.split, "_libdeflate_gunzip", None)
    assert _read_gzip_file(tmp_path, shape, data) == fast
    try:
        expected = gzip.GzipFile(fileobj=io.BytesIO(data)).read().decode().split("\n")[:-1]
    except (OSError, EOFError):
        assert isinstance(fast, str) and "cannot read it as gzip data (" in fast
    else:
        assert fast == expected


def test_a_small_gzip_file_of_one_member_is_inflated_by_libdeflate(tmp_path, monkeypatch):
    """One member (most small files) is inflated by libdeflate, not zlib (half the time); with
    several members, zlib reads them all."""
    assert corral.split._libdeflate_gunzip is not None
    shapes = _gzip_shapes()
    expected = gzip.decompress(shapes["one member"]).decode().split("\n")[:-1]
    zlib_streams = []
    real = corral.split.zlib.decompressobj
    monkeypatch.setattr(corral.split.zlib, "decompressobj", lambda *a, **k: zlib_streams.append(a) or real(*a, **k))
    assert _read_gzip_file(tmp_path, "one", shapes["one member"]) == expected
    assert zlib_streams == []
    assert _read_gzip_file(tmp_path, "twice", shapes["the same member twice (cat a.gz a.gz)"]) == expected * 2
    assert zlib_streams != []


CORRUPT = {
    "not-gzip.txt.gz": (b"plain text, not gzip\n", "gzip data (BadGzipFile: Not a gzipped file"),
    "truncated.txt.gz": (gzip.compress(b"hello\n" * 1000)[:40], "gzip data (EOFError: Compressed file ended"),
    "garbage.txt.bz2": (b"garbage" * 10, "bz2 data (OSError: Invalid data stream)"),
    "garbage.txt.zst": (b"garbage" * 10, "zstd data (ZstdError: "),
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_corrupt_compressed_input_fails_naming_the_file(tmp_path, capsys, name):
    data, reason = CORRUPT[name]
    (tmp_path / name).write_bytes(data)
    code, _, err = cli(
        capsys, "run", f"{jobs.__file__}:Cat", tmp_path / name, "--out", tmp_path / "out",
        "--backend", "threads", "--retries", "0",
    )
    assert code == 1
    assert err.startswith(f"corral: job failed: task map-0000 attempt 1: {tmp_path / name}: cannot read it as {reason}")
    assert "Traceback" not in err and len(err.splitlines()) == 1


@settings(max_examples=500, deadline=None)
@given(text=st.lists(st.sampled_from(["a", "é", "\r", "\n", "\r\n", "\r\n", "\r\n", "\n\r"]), max_size=12).map("".join))
def test_decode_lines_drops_line_ends_as_a_plain_loop_does(text):
    """``decode_lines`` splits CRLF text in one call when every line ends with CRLF; the result is what
    splitting on LF and dropping one CR at the end of each line gives, whatever the text."""
    expected = text.split("\n")
    if expected[-1] == "":
        expected.pop()
    expected = [line[:-1] if line.endswith("\r") else line for line in expected]
    assert decode_lines(text.encode(), 0, "f.txt", "strict") == expected


def test_a_small_splits_last_line_is_read_on_in_growing_requests(tmp_path, monkeypatch):
    """The rest of a small split's last line is read 64 KB first, then in requests growing 4x (a sample
    window read 4 MB for a line that ended a few bytes later), and comes out whole."""
    long_line = b"y" * (700 << 10)
    content = b"a\n" + b"x" * 98 + b"\n" + long_line + b"\nz\n"
    (tmp_path / "f.txt").write_bytes(content)
    fs = get_filesystem(str(tmp_path / "f.txt"))
    asked = []
    read_range = fs.read_range

    def reading(url, start, end):
        asked.append(end - start)
        return read_range(url, start, end)

    monkeypatch.setattr(fs, "read_range", reading)
    short = corral.split.Split(str(tmp_path / "f.txt"), 0, 50)  # its last line, of 100 bytes, goes past byte 51
    assert [b"".join(chunk for _, chunk in iter_line_chunks(fs, short))] == [b"a\n" + b"x" * 98 + b"\n"]
    assert asked == [51, 64 << 10]
    asked.clear()
    long = corral.split.Split(str(tmp_path / "f.txt"), 101, 150)  # in the long line
    assert b"".join(chunk for _, chunk in iter_line_chunks(fs, long)) == long_line + b"\n"
    assert asked == [51, 64 << 10, 256 << 10, 1 << 20]
