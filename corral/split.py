"""Splits: byte ranges of input files, and reading their records.

A line belongs to the split in which it starts, whatever its length: a split skips the partial line it
starts in (unless the byte before it is a newline) and reads past its end to finish its last line.
A compressed file is always one whole split (it cannot be entered in the middle).
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from corral.errors import InputError
from corral.fs import FileSystem, compression_of, display

#: What ``Job.input_format`` may be.
INPUT_FORMATS = ("lines", "tsv", "csv", "jsonl")
#: Bytes read per request while scanning a split; lines are handed on in chunks of about this size.
READ_BLOCK = 4 << 20


@dataclass(frozen=True)
class Split:
    url: str
    start: int
    end: int  # exclusive; for a compressed file, its compressed size
    kind: str = "text"  # "text": lines; "records": corral's binary records (between stages)

    @property
    def compressed(self) -> bool:
        return compression_of(self.url) is not None

    def to_json(self) -> dict[str, Any]:
        # a literal, not dataclasses.asdict (which deep-copies): a plan may hold 100,000 splits
        return {"url": self.url, "start": self.start, "end": self.end, "kind": self.kind}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Split:
        return cls(**data)


def iter_line_chunks(fs: FileSystem, split: Split) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, chunk)``: consecutive whole lines of ``split``, each chunk ending at a line end.

    ``offset`` is the chunk's position in the (decompressed) file, for error messages.
    """
    if split.compressed:
        import zstandard

        stream = fs.open_input(split.url)
        try:
            with stream:
                yield from _chunks(stream, 0, None)
        except (EOFError, OSError, zlib.error, zstandard.ZstdError) as exc:  # corrupt or truncated data
            raise InputError(
                f"{display(split.url)}: cannot read it as {compression_of(split.url)} data "
                f"({type(exc).__name__}: {exc})"
            ) from None
        return
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
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if "\r" in text:
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    return lines


def iter_text_records(
    fs: FileSystem, split: Split, input_format: str, errors: str, header: bool = False
) -> Iterator[list[Any]]:
    """Batches of input records for ``map``: lists of lines ("lines"), of (key, value) ("tsv"), of rows
    ("csv": lists of fields, or dicts with ``header``) or of JSON values ("jsonl")."""
    if input_format == "csv":
        yield from _csv_rows(fs, split, errors, header)
        return
    for offset, chunk in iter_line_chunks(fs, split):
        lines = decode_lines(chunk, offset, split.url, errors)
        if input_format == "tsv":
            yield [_tsv_record(line) for line in lines]
        elif input_format == "jsonl":
            yield _json_values(lines, offset, split.url)
        else:
            yield lines


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


def _csv_rows(fs: FileSystem, split: Split, errors: str, header: bool) -> Iterator[list[Any]]:
    """Batches of a csv split's rows, parsed by the ``csv`` module across chunks (a quoted field may
    hold newlines); with ``header``, the first row names the columns and rows come as dicts."""
    import csv

    def lines() -> Iterator[str]:
        for offset, chunk in iter_line_chunks(fs, split):
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
