"""Splits: byte ranges of input files, and reading their records.

A line belongs to the split in which it starts, whatever its length: a split skips the partial line it
starts in (unless the byte before it is a newline) and reads past its end to finish its last line.
A compressed file is always one whole split (it cannot be entered in the middle).
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain, islice
from operator import itemgetter
from typing import Any, NamedTuple

from corral.errors import InputError
from corral.fs import FileSystem, compression_of, decompressing, display

try:  # libdeflate inflates a small gzip file in half zlib's time; without it, zlib does
    from deflate import DeflateError, gzip_decompress
    from deflate import crc32 as _libdeflate_crc32

    _libdeflate_gunzip: Callable[[bytes, int], bytearray] | None = gzip_decompress
except ImportError:  # pragma: no cover - a platform without its wheel
    _libdeflate_gunzip = None

#: What ``Job.input_format`` may be.
INPUT_FORMATS = ("lines", "tsv", "csv", "jsonl")
#: Bytes read per request while scanning a split; lines are handed on in chunks of about this size.
READ_BLOCK = 4 << 20


class Split(NamedTuple):
    """A byte range of an input file. A named tuple, not a frozen dataclass: the planner makes one per
    small file and a worker reads one per file of its payload (20,000 files: 12.6 → 6.5 ms to make)."""

    url: str
    start: int
    end: int  # exclusive; for a compressed file, its compressed size
    kind: str = "text"  # "text": lines; "records": corral's binary records (between stages)

    @property
    def compressed(self) -> bool:
        return compression_of(self.url) is not None

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "start": self.start, "end": self.end, "kind": self.kind}

    def to_wire(self) -> tuple[Any, ...]:
        """The compact form a task payload carries: ``(url, start, end)`` (``kind`` appended when not
        "text"; a list once the payload went through JSON). A map task over 10,000 small files sends,
        and its worker reads, half the objects of a dict per split before its first file is read."""
        return url_start_end(self) if self.kind == "text" else tuple(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | list[Any] | tuple[Any, ...]) -> Split:
        """A split from ``to_json`` (a dict) or ``to_wire`` (a tuple, or the list JSON made of it)."""
        if isinstance(data, list | tuple):
            return cls(*data)
        return cls(**data)


#: A split's ``(url, start, end)``, in one C call: the plan's form of a split, and a text split's wire form.
url_start_end = itemgetter(0, 1, 2)
_kind = itemgetter(3)


def splits_to_wire(splits: Sequence[Split]) -> list[tuple[Any, ...]]:
    """Every split's ``to_wire``; text splits (10,000 small files a task) in C loops, no call a split."""
    if all(map("text".__eq__, map(_kind, splits))):
        return list(map(url_start_end, splits))
    return [split.to_wire() for split in splits]


#: Splits of at most this many bytes (and compressed files of at most this size) are read in one
#: request, the byte before and after them included, instead of being opened and streamed: a file
#: of a few KB costs one read (one GET on an object store, whose listing already gave its size).
SMALL_READ = READ_BLOCK


#: The most bytes of small splits read ahead of the one being mapped.
READ_AHEAD_BYTES = 32 << 20


def read_ahead(
    splits: Iterable[Split], filesystem: Callable[[str], FileSystem]
) -> Iterator[tuple[Split, FileSystem, bytes | None]]:
    """``(split, its filesystem, its data or None)`` in order. On a filesystem with ``read_ahead``, the
    next small splits (``small_read``) are read by a pool of that many threads while the current
    one is mapped, at most ``read_ahead`` splits and ``READ_AHEAD_BYTES`` ahead; their data is what
    ``iter_line_chunks`` takes. Elsewhere, and for big splits, data is None: they are read as mapped."""
    remaining = iter(splits)
    for split in remaining:  # a local disk's splits pass straight through (10,000 small files a task)
        fs = filesystem(split.url)
        if fs.read_ahead:
            yield from _read_ahead(chain((split,), remaining), filesystem)
            return
        yield split, fs, None


def _read_ahead(
    splits: Iterator[Split], filesystem: Callable[[str], FileSystem]
) -> Iterator[tuple[Split, FileSystem, bytes | None]]:
    """``read_ahead`` from the first split on a filesystem that reads ahead."""
    from concurrent.futures import Future, ThreadPoolExecutor

    pool: ThreadPoolExecutor | None = None
    ahead: deque[tuple[Split, FileSystem, Future[bytes] | None, int]] = deque()
    ahead_bytes = 0
    try:
        while True:
            while not ahead or (ahead[-1][2] is not None and len(ahead) <= ahead[-1][1].read_ahead
                                and ahead_bytes < READ_AHEAD_BYTES):
                split = next(splits, None)
                if split is None:
                    break
                fs = filesystem(split.url)
                window = small_read(split) if fs.read_ahead else None
                future = None
                if window is not None:
                    if pool is None:
                        pool = ThreadPoolExecutor(fs.read_ahead, thread_name_prefix="corral-read")
                    future = pool.submit(fs.read_range, split.url, *window)
                size = window[1] - window[0] if window else 0
                ahead.append((split, fs, future, size))
                ahead_bytes += size
            if not ahead:
                return
            split, fs, future, size = ahead.popleft()
            ahead_bytes -= size
            yield split, fs, future.result() if future is not None else None
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def small_read(split: Split, compressed: bool | None = None) -> tuple[int, int] | None:
    """The byte range ``[start, end)`` that one request reads of a small split, or None for a big one:
    a compressed file whole (and a byte more, which tells that it grew since it was listed); a text
    split with the byte before it (does a line start at its start?) and the byte after it (does its
    last line go on?). ``compressed``: ``split.compressed``, when the caller knows it already."""
    if split.kind != "text" or split.end - split.start > SMALL_READ:
        return None
    if split.compressed if compressed is None else compressed:
        return 0, split.end + 1
    return max(0, split.start - 1), split.end + 1


def iter_line_chunks(fs: FileSystem, split: Split, data: bytes | None = None) -> Iterable[tuple[int, bytes]]:
    """``(offset, chunk)``: consecutive whole lines of ``split``, each chunk ending at a line end.

    ``offset`` is the chunk's position in the (decompressed) file, for error messages. ``data``, if
    given, is what ``fs.read_range(split.url, *small_read(split))`` returns (read ahead by the caller).
    A small split is read when this is called; the rest as the chunks are taken.
    """
    # no generator of its own: a map task over 10,000 small files goes through one layer less a file
    compression = compression_of(split.url)
    window = small_read(split, compression is not None)
    if window is not None and data is None:
        data = fs.read_range(split.url, *window)
    if compression is not None:
        whole = data if data is not None and len(data) <= split.end else None  # else it grew: streamed
        if whole is not None and compression == "gzip":
            return _gzip_chunks(split.url, whole)
        return _decompressed_chunks(fs, split, compression, whole)
    if data is not None:
        return _small_split_chunks(fs, split, data)
    return _opened_chunks(fs, split)


def _opened_chunks(fs: FileSystem, split: Split) -> Iterator[tuple[int, bytes]]:
    """The line chunks of a big text split, streamed from its file."""
    with fs.open(split.url, "rb") as f:
        position = split.start
        if split.start > 0:
            f.seek(split.start - 1)
            if f.read(1) != b"\n":
                next_line = _skip_partial_line(f, split.start)
                if next_line is None or next_line >= split.end:
                    return
                position = next_line
            f.seek(position)
        yield from _chunks(f, position, split.end)


def _gzip_chunks(url: str, data: bytes) -> Iterable[tuple[int, bytes]]:
    """The line chunks of gzip data held whole (a small file). A file of one member whose content fits
    in a block (most small files) is decompressed here, its one chunk in a list: no generator a file.
    Else they come from ``_gunzip`` (the first block decompressed again: at most ``READ_BLOCK`` bytes)."""
    if data[:2] == b"\x1f\x8b":
        content = _one_member(data)
        if content is not None:
            return [(0, content)]
        stream = zlib.decompressobj(31)  # a gzip header and trailer (checked: CRC and length)
        try:
            content = stream.decompress(data, READ_BLOCK)
        except zlib.error as exc:
            raise _unreadable(url, "gzip", exc) from None
        if stream.eof and not stream.unused_data.strip(b"\0"):
            return [(0, content)] if content else []
    return _unreadable_as_input(url, "gzip", _aligned(_gunzip(data)))


def _one_member(data: bytes) -> bytes | None:
    """The content of gzip ``data`` when it is one member, nothing after it, and at most ``READ_BLOCK``
    bytes (most small files), inflated by libdeflate; None for anything else, which zlib reads (and words
    its errors): several members or padding, damage, an empty or big content, no libdeflate here.

    libdeflate reads the first member and checks its CRC and length, but does not say where it ended.
    It is the whole of ``data`` when no other member's header (1f 8b 08) follows the first byte and the
    last 8 bytes are that member's trailer. (Only a file made to fool this, a member and then bytes that
    end with a copy of its trailer, reads as the member, as gzip(1) reads it; zlib would refuse it.)"""
    if _libdeflate_gunzip is None or data.find(b"\x1f\x8b\x08", 1) >= 0:
        return None
    size = int.from_bytes(data[-4:], "little")
    if not 0 < size <= READ_BLOCK:
        return None
    try:
        content = _libdeflate_gunzip(data, size)
    except DeflateError:
        return None
    if len(content) != size or data[-8:-4] != _libdeflate_crc32(content).to_bytes(4, "little"):
        return None
    return bytes(content)


def _decompressed_chunks(
    fs: FileSystem, split: Split, compression: str, data: bytes | None
) -> Iterator[tuple[int, bytes]]:
    """The line chunks of a compressed file, streamed (or from ``data``, the whole file, held)."""

    def chunks() -> Iterator[tuple[int, bytes]]:
        stream = fs.open_input(split.url) if data is None else decompressing(io.BytesIO(data), compression)
        with stream:
            yield from _chunks(stream, 0, None)

    return _unreadable_as_input(split.url, compression, chunks())


def _unreadable_as_input(
    url: str, compression: str, chunks: Iterator[tuple[int, bytes]]
) -> Iterator[tuple[int, bytes]]:
    """``chunks``, with corrupt or truncated compressed data (or a file gone) an InputError naming it."""
    import zstandard

    try:
        yield from chunks
    except (EOFError, OSError, zlib.error, zstandard.ZstdError) as exc:
        raise _unreadable(url, compression, exc) from None


def _unreadable(url: str, compression: str, exc: BaseException) -> InputError:
    return InputError(f"{display(url)}: cannot read it as {compression} data ({type(exc).__name__}: {exc})")


def _gunzip(data: bytes) -> Iterator[bytes]:
    """The content of gzip ``data`` (one member or several, as ``gzip`` reads them) in blocks of at most
    ``READ_BLOCK`` bytes: a small file may hold a lot."""
    while data:
        if data[:2] != b"\x1f\x8b":  # as the gzip module says it
            raise gzip.BadGzipFile(f"Not a gzipped file ({data[:2]!r})")
        stream = zlib.decompressobj(31)  # a gzip header and trailer (checked: CRC and length)
        pending = data
        while not stream.eof:
            block = stream.decompress(pending, READ_BLOCK)
            pending = stream.unconsumed_tail
            if block:
                yield block
            elif not pending and not stream.eof:  # an empty member is no error (an hour without requests)
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
        data = stream.unused_data.lstrip(b"\0")  # the next member, after any zero padding


def _aligned(blocks: Iterable[bytes], offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """``(offset, chunk)`` of consecutive blocks regrouped into chunks that end at a line end."""
    pending: list[bytes] = []
    for block in blocks:
        cut = block.rfind(b"\n")
        if cut < 0:
            pending.append(block)
            continue
        head = block if cut == len(block) - 1 else block[: cut + 1]
        chunk = b"".join((*pending, head)) if pending else head
        yield offset, chunk
        offset += len(chunk)
        pending = [block[cut + 1 :]] if cut < len(block) - 1 else []
    if pending:
        yield offset, b"".join(pending)


def _small_split_chunks(fs: FileSystem, split: Split, data: bytes) -> Iterator[tuple[int, bytes]]:
    """The lines of a small text split from ``data``, bytes ``[start - 1, end + 1)`` of its file (fewer
    at the file's start and end): a line starts in the split at its start or after a newline, and its
    last line is read on past ``end + 1`` only when it is longer than that."""
    low = max(0, split.start - 1)
    first = 0
    if split.start > 0:
        newline = data.find(b"\n", 0, split.end - low - 1)  # the newline before a line that starts in the split
        if newline < 0:
            return
        first = newline + 1
    end = split.end - low
    if len(data) <= end:  # the file ends in the split
        chunk = data[first:]
    elif data[end - 1] == 10:  # the split ends at a line end (10 is "\n")
        chunk = data[first:end]
    elif data[-1] == 10:  # its last line ends at the byte after it
        chunk = data[first:]
    else:
        chunk = b"".join((data[first:], *_rest_of_line(fs, split.url, low + len(data))))
    if chunk:
        yield low + first, chunk


#: The first read for the rest of a small split's last line: most lines end within it (a sample window
#: of a 100-byte-record file read 4 MB for each window's last line); reads grow 4x from there.
REST_OF_LINE_READ = 64 << 10


def _rest_of_line(fs: FileSystem, url: str, position: int) -> Iterator[bytes]:
    """The bytes from ``position`` to the next newline (included) or the end of the file, read in
    requests of ``REST_OF_LINE_READ`` bytes growing to ``READ_BLOCK``."""
    size = min(REST_OF_LINE_READ, READ_BLOCK)
    while True:
        block = fs.read_range(url, position, position + size)
        size = min(size * 4, READ_BLOCK)
        newline = block.find(b"\n")
        if newline >= 0:
            yield block[: newline + 1]
            return
        if not block:
            return
        yield block
        position += len(block)


def _skip_partial_line(f: Any, position: int) -> int | None:
    """Read past the line that started before ``position``; return where the next line starts."""
    while True:
        block = f.read(READ_BLOCK)
        if not block:
            return None
        newline = block.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(block)


def _chunks(f: Any, position: int, end: int | None) -> Iterator[tuple[int, bytes]]:
    """Line-aligned chunks from ``position``; lines starting at or after ``end`` are left out."""
    pending: list[bytes] = []  # an unfinished line, possibly many blocks long
    pending_offset = position
    while True:
        want = READ_BLOCK if end is None else min(READ_BLOCK, end - position)
        if want <= 0:
            break
        block = f.read(want)
        if not block:
            break
        position += len(block)
        cut = block.rfind(b"\n")
        if cut < 0:
            pending.append(block)
            continue
        head = block[: cut + 1]
        chunk = b"".join((*pending, head)) if pending else head
        yield pending_offset, chunk
        pending_offset += len(chunk)
        rest = block[cut + 1 :]
        pending = [rest] if rest else []
    if pending and end is not None:
        # the last line started before `end`: read on to its newline (or the end of the file)
        while True:
            block = f.read(READ_BLOCK)
            if not block:
                break
            newline = block.find(b"\n")
            if newline >= 0:
                pending.append(block[: newline + 1])
                break
            pending.append(block)
    if pending:
        yield pending_offset, b"".join(pending)


def decode_text(chunk: bytes, offset: int, url: str, errors: str) -> str:
    """A chunk as text; an InputError names the file and byte offset of invalid UTF-8."""
    try:
        return chunk.decode("utf-8", errors)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{display(url)}: invalid UTF-8 at byte offset {offset + exc.start} "
            f"(set input_errors = 'replace' on the job to read it anyway)"
        ) from None


def decode_lines(chunk: bytes, offset: int, url: str, errors: str) -> list[str]:
    """The lines of a line-aligned chunk, without their ``\\n`` / ``\\r\\n``."""
    text = decode_text(chunk, offset, url, errors)
    if "\r" in text:
        lines = text.split("\r\n")
        if text.count("\n") == len(lines) - 1:  # every line ends with "\r\n": no loop over the lines
            if lines[-1] == "":
                lines.pop()
            elif lines[-1].endswith("\r"):  # the last line, without "\n", loses its "\r" too
                lines[-1] = lines[-1][:-1]
            return lines
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if "\r" in text:
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    return lines


def iter_text_records(
    fs: FileSystem, split: Split, input_format: str, errors: str, header: bool = False, data: bytes | None = None
) -> Iterable[list[Any]]:
    """Batches of input records for ``map``: lists of lines ("lines"), of (key, value) ("tsv"), of rows
    ("csv": lists of fields, or dicts with ``header``) or of JSON values ("jsonl"). ``data``: as
    ``iter_line_chunks`` takes it. A small file held whole gives its batches at once, in a list."""
    if input_format == "csv":
        return _csv_rows(fs, split, errors, header, data)
    chunks = iter_line_chunks(fs, split, data)
    if type(chunks) is list:  # its one chunk (a small gzip file): no generator a file
        return [_records(chunk, offset, split.url, input_format, errors) for offset, chunk in chunks]
    return (_records(chunk, offset, split.url, input_format, errors) for offset, chunk in chunks)


def _records(chunk: bytes, offset: int, url: str, input_format: str, errors: str) -> list[Any]:
    """The records of a line-aligned chunk of text input (not csv)."""
    lines = decode_lines(chunk, offset, url, errors)
    if input_format == "tsv":
        return [_tsv_record(line) for line in lines]
    if input_format == "jsonl":
        return _json_values(lines, offset, url)
    return lines


def _json_values(lines: list[str], offset: int, url: str) -> list[Any]:
    """The JSON value of each line (blank lines skipped); an InputError names the line's byte offset."""
    decode = json.JSONDecoder().decode
    try:
        return [decode(line) for line in lines if line and not line.isspace()]
    except ValueError:
        pass
    position = offset
    for line in lines:
        if line and not line.isspace():
            try:
                decode(line)
            except ValueError as exc:
                raise InputError(f"{display(url)}: the line at byte offset {position} is not JSON ({exc})") from None
        position += len(line.encode("utf-8", "surrogateescape")) + 1
    raise AssertionError("unreachable")


#: Rows per batch handed to ``map`` for csv input.
CSV_BATCH = 8192


def _csv_rows(fs: FileSystem, split: Split, errors: str, header: bool, data: bytes | None) -> Iterator[list[Any]]:
    """Batches of a csv split's rows, parsed by the ``csv`` module across chunks (a quoted field may
    hold newlines); with ``header``, the first row names the columns and rows come as dicts."""
    import csv

    def lines() -> Iterator[str]:
        for offset, chunk in iter_line_chunks(fs, split, data):
            yield from io.StringIO(decode_text(chunk, offset, split.url, errors), newline="")

    reader = csv.reader(lines())
    columns: list[str] | None = None
    try:
        if header:
            columns = next(reader, None)
            if columns is None:
                return
        while batch := list(islice(reader, CSV_BATCH)):
            if columns is not None:
                width = len(columns)
                if set(map(len, batch)) != {width}:
                    bad = next(row for row in batch if len(row) != width)
                    raise InputError(f"{display(split.url)}: a row has {len(bad)} fields, but the header row has "
                                     f"{width} ({', '.join(columns)}): {bad!r}")
                yield [dict(zip(columns, row, strict=True)) for row in batch]
            else:
                yield batch
    except csv.Error as exc:
        raise InputError(f"{display(split.url)}: cannot read line {reader.line_num} as csv ({exc})") from None


def _tsv_record(line: str) -> tuple[str | None, str]:
    parts = line.split("\t")
    if len(parts) == 2:
        return parts[0], parts[1]
    return None, line
