"""What tasks write: the pairs ``map`` and ``reduce`` yield, checked where they are yielded, then
encoded as records between stages or as the job's part files.

One streaming interface for every final output: a *format* turns a batch of pairs into text
(``text``: ``key<TAB>value``; ``csv``: RFC 4180 rows; ``jsonl``: ``{"key": …, "value": …}``;
``value``: the value alone), and a *compression* (``none``, ``gzip``, ``zstd``) wraps the output stream.
A ``PartWriter`` feeds one to the other a batch at a time, so no part file is ever held in memory,
and starts a new part file every ``max_records`` records when asked to.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import chain, islice
from json.encoder import encode_basestring
from typing import IO, TYPE_CHECKING, Any

import msgpack

from corral.errors import UsageError
from corral.fs import FileSystem, get_filesystem, join, writing
from corral.pairs import NonFiniteError, TextError, check_pairs, integer_error, non_finite_error, text_error
from corral.shuffle import _READ_BLOCK, _TEXT_ERRORS, _packer

if TYPE_CHECKING:
    from corral.settings import Settings

FORMATS = ("text", "csv", "jsonl", "value")
COMPRESSIONS = ("none", "gzip", "zstd")
#: What a part file's name ends with, by format and by compression.
FORMAT_SUFFIXES = {"text": "", "value": "", "csv": ".csv", "jsonl": ".jsonl"}
COMPRESSION_SUFFIXES = {"none": "", "gzip": ".gz", "zstd": ".zst"}
_STR_KEY = frozenset({str})
_NONE_KEY = frozenset({type(None)})
_INT = frozenset({int})
_TEXT_FAST_VALUES = frozenset({str, int})  # formatted by an f-string exactly as JSON would
_CSV_FAST_VALUES = frozenset({str, int, float, type(None)})  # the csv module writes these as corral would
#: Pairs checked and written together: big enough that the checks run in C, small enough to stay cheap.
BATCH = 8192


# --- writers ------------------------------------------------------------------------------------


class PairWriter:
    """Writes the ``(key, value)`` pairs that ``map`` or ``reduce`` yields, checked and encoded in
    batches (no per-pair function layer); subclasses choose the encoding."""

    BATCH = BATCH
    url: str | None = None  #: where the pairs go (file writers), named if its disk is full

    def __init__(self, out: IO[bytes], source: str = "reduce") -> None:
        self.out = out
        self.source = source  # the method whose pairs these are, for error messages
        self._pending: list[Any] = []
        self.records_out = 0

    def add_all(self, pairs: Iterable[Any]) -> None:
        """Add every pair of ``pairs`` (consumed in batches: a generator yielding millions is fine)."""
        pending = self._pending
        pairs = iter(pairs)
        pending += islice(pairs, self.BATCH - len(pending))
        while len(pending) >= self.BATCH:
            self.flush()
            pending = self._pending
            pending += islice(pairs, self.BATCH)

    def flush(self) -> None:
        pairs, self._pending = self._pending, []
        if pairs:
            key_types, value_types = check_pairs(self.source, pairs)
            with writing(self.url):
                self._write(pairs, key_types, value_types)
            self.records_out += len(pairs)

    def _write(self, pairs: list[tuple[Any, Any]], key_types: set[type], value_types: set[type]) -> None:
        raise NotImplementedError

    def close(self) -> list[str]:
        """Write what is pending and close the output; the URLs written (file writers)."""
        self.flush()
        return []

    def abort(self) -> None:
        """Close what is open after a failure, without writing what is pending."""

    def __enter__(self) -> PairWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


class RecordWriter(PairWriter):
    """Writes ``(key, value)`` records as msgpack batches (the format between the stages of a job)."""

    def __init__(self, out: IO[bytes], source: str = "reduce") -> None:
        super().__init__(out, source)
        self._pack = _packer()

    def _write(self, pairs: list[tuple[Any, Any]], key_types: set[type], value_types: set[type]) -> None:
        try:
            data = self._pack(list(chain.from_iterable(pairs)))
        except TextError as exc:
            raise text_error(exc.unicode_error, self.source, pairs) from None
        except OverflowError:  # an int past 64 bits, found only now: the common path pays nothing
            raise integer_error(self.source, list(chain.from_iterable(pairs))) from None
        self.out.write(data)


class RecordFile(RecordWriter):
    """A RecordWriter to the file at ``url``; ``close`` returns ``[url]``."""

    def __init__(self, url: str, source: str = "reduce", fs: FileSystem | None = None) -> None:
        self.url: str = url
        self._raw = (fs or get_filesystem(url)).open(url, "wb")
        self.bytes_out = 0
        super().__init__(self._raw, source)

    def close(self) -> list[str]:
        self.flush()
        with writing(self.url):
            self.bytes_out = self._raw.tell()
            self._raw.close()
        return [self.url]

    def abort(self) -> None:
        try:
            self._raw.close()
        except Exception:  # the task's own error is the one to report
            pass


def iter_records(stream: IO[bytes]) -> Iterator[list[tuple[Any, Any]]]:
    """Batches of ``(key, value)`` records from a stream written by RecordWriter."""
    unpacker = msgpack.Unpacker(
        stream, raw=False, strict_map_key=False, read_size=_READ_BLOCK, unicode_errors=_TEXT_ERRORS
    )
    for batch in unpacker:
        yield list(zip(batch[0::2], batch[1::2], strict=True))


# --- formats: a batch of checked pairs -> text --------------------------------------------------

Encoder = Callable[[list[tuple[Any, Any]], set[type], set[type]], str]


def _json_encoder() -> Callable[[Any], str]:
    return json.JSONEncoder(ensure_ascii=False).encode


def text_format(header: tuple[str, ...] | None = None) -> Encoder:
    """``key<TAB>value`` lines: a str value as is, any other as JSON; a None key writes the value alone."""
    dumps = _json_encoder()

    def line(key: Any, value: Any) -> str:
        text = value if type(value) is str else dumps(value)
        return text if key is None else f"{key}\t{text}"

    def encode(pairs: list[tuple[Any, Any]], key_types: set[type], value_types: set[type]) -> str:
        if key_types == _STR_KEY and value_types <= _TEXT_FAST_VALUES:
            return "".join([f"{key}\t{value}\n" for key, value in pairs])  # str and int: JSON's text too
        if key_types == _NONE_KEY and value_types <= _TEXT_FAST_VALUES:  # the values alone (a sort's records)
            return "".join([f"{value}\n" for _, value in pairs])
        return "".join([f"{line(key, value)}\n" for key, value in pairs])

    return encode


def value_format(header: tuple[str, ...] | None = None) -> Encoder:
    """The value alone, one per line: a str as is, any other value as JSON."""
    dumps = _json_encoder()

    def encode(pairs: list[tuple[Any, Any]], key_types: set[type], value_types: set[type]) -> str:
        if value_types <= _TEXT_FAST_VALUES:
            return "".join([f"{value}\n" for _, value in pairs])
        return "".join([f"{value if type(value) is str else dumps(value)}\n" for _, value in pairs])

    return encode


def jsonl_format(header: tuple[str, ...] | None = None) -> Encoder:
    """``{"key": …, "value": …}`` per line, UTF-8 (no ASCII escapes). str keys with str or int values
    (most output) are escaped by the C function JSONEncoder itself uses for strings, 3x faster. A float
    NaN or infinity fails the task (``NonFiniteError``): Python would write ``NaN``, which is no JSON."""
    dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
    quote = encode_basestring

    def encode(pairs: list[tuple[Any, Any]], key_types: set[type], value_types: set[type]) -> str:
        if key_types == _STR_KEY and value_types <= _INT:
            return "".join([f'{{"key": {quote(key)}, "value": {value}}}\n' for key, value in pairs])
        if key_types == _STR_KEY and value_types <= _STR_KEY:
            return "".join([f'{{"key": {quote(key)}, "value": {quote(value)}}}\n' for key, value in pairs])
        try:
            return "".join([f'{{"key": {dumps(key)}, "value": {dumps(value)}}}\n' for key, value in pairs])
        except ValueError as exc:  # "Out of range float values are not JSON compliant"
            raise NonFiniteError(str(exc)) from None

    return encode


class CsvFormat:
    """RFC 4180 rows through the ``csv`` module (``\\n`` line ends): the key, then the value; a list or
    tuple value spreads into columns; a None key is left out. Cells: text as is, numbers as Python
    writes them, ``true``/``false``, ``None`` as an empty cell, nested lists and dicts as JSON.

    With a header, every row must have as many columns as the header, or the task fails naming the
    row (a warehouse ``COPY`` would reject the whole file later, far from the cause)."""

    def __init__(self, header: tuple[str, ...] | None = None) -> None:
        self.header = header
        self.rows_written = 0
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")
        self._dumps = _json_encoder()

    def _cell(self, value: Any) -> Any:
        kind = type(value)
        if kind is bool:
            return "true" if value else "false"
        if kind is list or kind is tuple or kind is dict:
            return self._dumps(value)
        return value  # str, int, float, None (an empty cell)

    def _row(self, key: Any, value: Any) -> list[Any]:
        cells = list(value) if type(value) in (list, tuple) else [value]
        row = cells if key is None else [key, *cells]
        if set(map(type, row)) <= _CSV_FAST_VALUES:
            return row
        return [self._cell(cell) for cell in row]

    def header_text(self) -> str:
        return self.encode_rows([list(self.header)]) if self.header else ""

    def encode_rows(self, rows: list[Any]) -> str:
        text = self._written(self._writer, rows)
        if "\r" in text:
            # with "\n" line ends the csv module leaves a lone CR unquoted, which readers take for a line
            # end: such rows are written as with "\r\n" line ends (quoting CR), then given "\n" ones
            crlf = csv.writer(self._buffer, lineterminator="\r\n")
            text = "".join([self._written(crlf, [row])[:-2] + "\n" for row in rows])
        return text

    def _written(self, writer: Any, rows: list[Any]) -> str:
        writer.writerows(rows)
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text

    def __call__(self, pairs: list[tuple[Any, Any]], key_types: set[type], value_types: set[type]) -> str:
        if key_types == _STR_KEY and value_types <= _CSV_FAST_VALUES:
            rows: list[Any] = pairs
        else:
            rows = [self._row(key, value) for key, value in pairs]
        if self.header is not None and set(map(len, rows)) != {len(self.header)}:
            width = len(self.header)
            number, row = next((n, r) for n, r in enumerate(rows, 1) if len(r) != width)
            raise ValueError(
                f"output row {self.rows_written + number} has {len(row)} columns, but output_header "
                f"has {width} ({', '.join(self.header)}): {list(row)!r}"
            )
        self.rows_written += len(rows)
        return self.encode_rows(rows)


def encoder(spec: OutputSpec) -> tuple[Encoder, str]:
    """The encoder of ``spec``'s format, and the text that starts every part file (a csv header)."""
    if spec.format == "csv":
        fmt = CsvFormat(spec.header)
        return fmt, fmt.header_text()
    return {"text": text_format, "value": value_format, "jsonl": jsonl_format}[spec.format](), ""


# --- compression: a stream that compresses what it is given -------------------------------------


def compressed(raw: IO[bytes], compression: str) -> IO[bytes]:
    """A write stream over ``raw`` that compresses as it goes (closing it ends the stream, not ``raw``).

    gzip is written without a file name or time in its header (level 6), so the same records give the
    same bytes on every backend; zstd at its default level 3, one frame per part file."""
    if compression == "gzip":
        return gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0)  # type: ignore[return-value]
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
    return raw


# --- the output spec and part files -------------------------------------------------------------


@dataclass(frozen=True)
class OutputSpec:
    """How a job's final output is written: format, compression, an optional csv header, and the most
    records per part file (None: one part file per task). Plain data, in every final task's payload."""

    format: str = "text"
    compression: str = "none"
    header: tuple[str, ...] | None = None
    max_records: int | None = None

    @property
    def suffix(self) -> str:
        """``.csv.gz``, ``.jsonl.zst``, ``""``…: what a part file's name ends with."""
        return FORMAT_SUFFIXES[self.format] + COMPRESSION_SUFFIXES[self.compression]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["header"] = list(self.header) if self.header is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> OutputSpec:
        if not data:
            return cls()
        header = data.get("header")
        return cls(data.get("format", "text"), data.get("compression", "none"),
                   tuple(header) if header is not None else None, data.get("max_records"))


def output_spec(job_class: type, settings: Settings) -> OutputSpec:
    """The job's output spec: ``--output-format`` / ``--output-compression`` (from any settings source)
    over the Job's ``output_format`` / ``output_compression``; ``output_header`` from the Job;
    ``--max-records-per-file``. A UsageError names a bad value of the Job's and the attribute."""
    name = job_class.__qualname__
    fmt = settings.output_format
    if fmt is None:
        fmt = getattr(job_class, "output_format", None) or "text"
        if fmt not in FORMATS:
            raise UsageError(f"invalid value for {name}.output_format: {fmt!r} is not one of {', '.join(FORMATS)}")
    compression = settings.output_compression
    if compression is None:
        compression = getattr(job_class, "output_compression", None) or "none"
        if compression not in COMPRESSIONS:
            raise UsageError(f"invalid value for {name}.output_compression: {compression!r} is not one of "
                             f"{', '.join(COMPRESSIONS)}")
    header = getattr(job_class, "output_header", None)
    if header is not None:
        if isinstance(header, str) or not isinstance(header, list | tuple) or not header or not all(
                isinstance(column, str) for column in header):
            raise UsageError(f"invalid value for {name}.output_header: {header!r} is not a list of column names")
        if fmt == "csv":
            header = tuple(header)
        elif settings.output_format is None:
            raise UsageError(f"{name}.output_header is set, but {name}.output_format is {fmt!r}: a header row "
                             "needs output_format = 'csv'")
        else:
            header = None  # --output-format chose another format for a csv job: no header row there
    return OutputSpec(fmt, compression, header, settings.max_records_per_file)


class PartWriter(PairWriter):
    """Writes one task's final output: a part file at ``url``, or, with ``spec.max_records``, part
    files ``url/00000<suffix>``, ``url/00001<suffix>``… of at most that many records each. Every
    part file starts with the header (csv) and is compressed as a stream. ``close`` returns the URLs
    written, in order."""

    def __init__(self, url: str, spec: OutputSpec, source: str = "reduce", fs: FileSystem | None = None) -> None:
        super().__init__(None, source)  # type: ignore[arg-type]
        self.url: str = url
        self.spec = spec
        self.fs = fs or get_filesystem(url)
        self.parts: list[str] = []
        self.bytes_out = 0
        self._encode, self._head = encoder(spec)
        self._raw: IO[bytes] | None = None
        self._room = 0  # records the current part file still takes
        self._open()

    def _open(self) -> None:
        url = self.url if self.spec.max_records is None else join(self.url, f"{len(self.parts):05d}{self.spec.suffix}")
        self._raw = self.fs.open(url, "wb")
        self.out = compressed(self._raw, self.spec.compression)
        self.parts.append(url)
        self._room = self.spec.max_records or 0
        if self._head:
            self.out.write(self._head.encode("utf-8", _TEXT_ERRORS))

    def _finish_part(self) -> None:
        assert self._raw is not None
        if self.out is not self._raw:
            self.out.close()  # ends the compressed stream (raw stays open)
        self.bytes_out += self._raw.tell()
        self._raw.close()
        self._raw = None

    def _write(self, pairs: list[tuple[Any, Any]], key_types: set[type], value_types: set[type]) -> None:
        if not self.spec.max_records:
            self.out.write(self._bytes(pairs, key_types, value_types))
            return
        start = 0
        while start < len(pairs):
            if self._room == 0:
                self._finish_part()
                self._open()
            some = pairs[start : start + self._room]
            self.out.write(self._bytes(some, key_types, value_types))
            self._room -= len(some)
            start += len(some)

    def _bytes(self, pairs: list[tuple[Any, Any]], key_types: set[type], value_types: set[type]) -> bytes:
        try:
            return self._encode(pairs, key_types, value_types).encode("utf-8", _TEXT_ERRORS)
        except UnicodeEncodeError as exc:
            raise text_error(exc, self.source, pairs) from None
        except NonFiniteError:
            raise non_finite_error(self.source, self.spec.format, pairs) from None

    def close(self) -> list[str]:
        """Flush and close the last part file; the part files' URLs."""
        self.flush()
        if self._raw is not None:
            with writing(self.url):
                self._finish_part()
        return self.parts

    def abort(self) -> None:
        """Close what is open after a failure (the driver discards the attempt's files)."""
        if self._raw is not None:
            try:
                self._raw.close()
            except Exception:  # the task's own error is the one to report
                pass
            self._raw = None


def part_names(task_number: int, parts: int, spec: OutputSpec) -> list[str]:
    """The committed names of task ``task_number``'s ``parts`` part files: ``part-00003.csv.gz``, or with
    ``max_records`` ``part-00003-00000.csv.gz``, ``part-00003-00001.csv.gz``…"""
    if spec.max_records is None:
        return [f"part-{task_number:05d}{spec.suffix}"]
    return [f"part-{task_number:05d}-{n:05d}{spec.suffix}" for n in range(parts)]
