"""What a failed task was reading: the file, the byte range, the line (or the key it was reducing).

mrjob calls it the "probable cause of failure". A map task tracks its current split and batch of
records (per batch: nothing per record); only when ``map`` raises is the record found, as the value
the user's ``map`` frame was called with (the traceback holds it). The worker sends the result as the
error's ``input``; ``describe`` makes the line the driver prints under the failure::

    while reading /data/in.txt bytes 0 to 1048576, line 17: 'a line that did not parse'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from corral.split import Split

#: A record shown in a failure message is cut to this many characters.
RECORD_CHARS = 200
#: A failed task's line number in a local file is counted from the file's start up to this far in.
COUNT_LIMIT = 1 << 30


@dataclass
class Reading:
    """A map task's place in its input: the split and batch being mapped (updated once per batch)."""

    split: Split | None = None
    before: int = 0  # records of the split in earlier batches
    batch: list[Any] = field(default_factory=list)
    keyed: bool = False  # records are (key, value) pairs

    def next_batch(self, split: Split, batch: list[Any], keyed: bool) -> None:
        if split is not self.split:
            self.split, self.before = split, 0
        else:
            self.before += len(self.batch)
        self.batch, self.keyed = batch, keyed

    def done(self) -> None:
        """Past the input (``map_final``, writing the output): no record to blame."""
        self.split, self.batch = None, []


def _frames(tb: TracebackType | None) -> list[Any]:
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def _arguments(function: Any, exc: BaseException) -> tuple[Any, Any] | None:
    """The (key, value) that ``function`` (the user's map or reduce) was running with when ``exc`` was
    raised in it, from its frame in the traceback; None if it is not there (raised elsewhere)."""
    code = getattr(getattr(function, "__func__", function), "__code__", None)
    if code is None or code.co_argcount < 2:
        return None
    skip = 1 if hasattr(function, "__self__") else 0
    if code.co_argcount < skip + 2:
        return None
    names = code.co_varnames[skip: skip + 2]
    for frame in reversed(_frames(exc.__traceback__)):
        if frame.f_code is code:
            local = frame.f_locals
            if names[0] in local and names[1] in local:
                return local[names[0]], local[names[1]]
    return None


def _shown(record: Any) -> str:
    text = repr(record)
    return text if len(text) <= RECORD_CHARS else text[: RECORD_CHARS - 3] + "..."


def map_input(reading: Reading, map_function: Any, input_format: str, exc: BaseException) -> dict[str, Any] | None:
    """The ``input`` of a map task that failed with ``exc``: its split, and the record and its line when
    the failing call of ``map`` can be found (by identity: the very object read, not an equal one)."""
    split = reading.split
    if split is None:
        return None
    found: dict[str, Any] = {"url": split.url, "start": split.start, "end": split.end, "kind": split.kind}
    arguments = _arguments(map_function, exc) if map_function is not None else None
    if arguments is None:
        return found
    key, value = arguments
    matches = [i for i, record in enumerate(reading.batch)
               if ((record[1] is value and record[0] is key) if reading.keyed else record is value)]
    if not matches:  # the map replaced its argument before it raised
        return found
    found["record"] = _shown(reading.batch[matches[0]])
    if len(matches) > 1:  # one object read several times (Python shares "" and one-character strings)
        return found
    number = reading.before + matches[0] + 1  # of the split's records
    lines_before = _lines_before(split) if split.kind != "records" and input_format in ("lines", "tsv") else None
    if lines_before is not None:
        found["line"] = lines_before + number  # every line is a record
    else:
        found["record_number"] = number
    return found


def _lines_before(split: Split) -> int | None:
    """How many lines of the split's file come before the split: 0 at its start; counted in a local file
    that starts less than COUNT_LIMIT bytes before (only after a failure); else unknown (None)."""
    if split.start == 0:
        return 0
    path = split.url[len("file://"):] if split.url.startswith("file://") else split.url
    if "://" in path or split.compressed or split.start > COUNT_LIMIT:
        return None
    try:
        with open(path, "rb") as f:
            counted = 0
            left = split.start
            block = b""
            while left > 0:
                block = f.read(min(left, 1 << 20))
                if not block:
                    return None
                counted += block.count(b"\n")
                left -= len(block)
    except OSError:
        return None
    # a split that starts inside a line leaves that line to the split before it
    return counted if block.endswith(b"\n") else counted + 1


def reduce_input(reduce_function: Any, exc: BaseException) -> dict[str, Any] | None:
    """The ``input`` of a reduce task that failed with ``exc`` inside ``reduce``: the key it was reducing."""
    arguments = _arguments(reduce_function, exc)
    if arguments is None:
        return None
    return {"key": _shown(arguments[0])}


def describe(found: dict[str, Any] | None) -> str | None:
    """One line for a failure's ``input``: ``while reading FILE bytes S to E, line N: 'record'``."""
    if not found:
        return None
    if "key" in found:
        return f"while reducing key {found['key']}"
    from corral.fs import display

    records = found.get("kind") == "records"
    what = "(records from the previous stage)" if records else f"bytes {found['start']} to {found['end']}"
    text = f"while reading {display(found['url'])} {what}"
    if "line" in found:
        text += f", line {found['line']}"
    elif "record_number" in found:
        text += f", record {found['record_number']}" + ("" if records else " of that range")
    if "record" in found:
        text += f": {found['record']}"
    return text
