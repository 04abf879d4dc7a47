"""The run's journal in ``OUT/_corral/``: what ``--resume`` needs to continue after the driver dies.

Records are JSON objects, one a line: the run (its id, the job, the inputs' fingerprint, the settings
that shape the plan), each stage's plan, each committed attempt (its output, index and counters), and
the final commit's moves. They are buffered and written at least every ``interval`` seconds and at
each phase's end: appended to ``journal.jsonl`` and flushed to disk where the store can append (a
local disk), else as numbered small objects ``journal/000001.jsonl``… (S3, GCS: objects cannot be
appended to). A torn last line (the driver killed mid-write) is ignored when the journal is read.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from corral.fs import FileSystem, join, writing
from corral.jsontext import chunks, encode, pieces

log = logging.getLogger("corral")

FLUSH_SECONDS = 2.0
#: Records pending that make a flush due at once: a wave of quick tasks commits thousands within
#: ``FLUSH_SECONDS``, each record held until written (10,000 no-op tasks: ~5,000 of ~0.6 KB each).
FLUSH_RECORDS = 1000
VERSION = 1


class Journal:
    def __init__(self, fs: FileSystem, out: str, interval: float = FLUSH_SECONDS) -> None:
        self.fs = fs
        self.folder = join(out, "_corral")
        self.interval = interval
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # held while pending records are added or taken
        self._flushing = threading.Lock()  # held while they are written
        self._last_flush = time.monotonic()
        self._appendable: bool | None = None
        self._next_object = 1
        self.enabled = True  # False once the lease is lost: another run owns the journal now

    @property
    def path(self) -> str:
        return join(self.folder, "journal.jsonl")

    def add(self, record: dict[str, Any]) -> bool:
        """Note ``record`` for the next flush; True when it makes ``FLUSH_RECORDS`` pending (the caller
        then asks for a flush)."""
        with self._lock:
            self._pending.append(record)
            return len(self._pending) == FLUSH_RECORDS

    def due(self) -> bool:
        return bool(self._pending) and time.monotonic() - self._last_flush >= self.interval

    def flush(self) -> None:
        """Write what is pending (one append and fsync, or one object). Records added meanwhile wait for
        the next flush, but the adding does not wait for this one: a commit is noted while the keeper's
        thread writes a plan of 20,000 splits. One flush writes at a time, so records stay in order."""
        with self._flushing:
            with self._lock:
                self._last_flush = time.monotonic()
                if not self._pending or not self.enabled:
                    return
                records, self._pending = self._pending, []
            try:
                with writing(self.path):
                    self._write(records)
            except BaseException:
                with self._lock:  # written again by the next flush, from a new line (a torn one is ignored)
                    self._pending[:0] = [{}, *records]
                raise

    def _write(self, records: list[dict[str, Any]]) -> None:
        if self._appendable is not False:
            self._appendable = self.fs.append_pieces(self.path, _text(records))
            if self._appendable:
                return
        url = join(self.folder, "journal", f"{self._next_object:06d}.jsonl")
        self.fs.write_bytes(url, b"".join(_text(records)))
        self._next_object += 1

    def continue_after(self, objects: int) -> None:
        """Resuming: number new objects after the ``objects`` an earlier driver wrote, and start on a
        new line (the earlier driver may have been killed mid-line)."""
        self._next_object = objects + 1
        self._pending.insert(0, {})

    def remove(self) -> None:
        with self._lock:
            self._pending.clear()
            self.fs.remove(self.path)
            self.fs.remove(join(self.folder, "journal"), recursive=True)


#: Records that hold a list as long as the inputs or the tasks (the fingerprint, the plan, the moves):
#: written an item of it at a time.
_LONG = frozenset(("run", "stage", "final"))


def _text(records: list[dict[str, Any]]) -> Iterator[bytes]:
    """The records as JSON lines (``{}`` as an empty line), in pieces of about 32 KB."""

    def lines() -> Iterator[str]:
        for record in records:
            if record:
                yield from chunks(record, 2) if record.get("t") in _LONG else (encode(record),)
            yield "\n"

    return pieces(lines())


def read_journal(fs: FileSystem, out: str) -> tuple[list[dict[str, Any]], int] | None:
    """The records of the journal in ``out`` and how many objects it spans, or None if it has none."""
    folder = join(out, "_corral")
    chunks: list[bytes] = []
    objects = 0
    try:
        chunks.append(fs.read_bytes(join(folder, "journal.jsonl")))
    except FileNotFoundError:
        pass
    except IsADirectoryError:  # pragma: no cover - a store that lists prefixes as folders
        pass
    try:
        found = fs.expand(join(folder, "journal"))
    except FileNotFoundError:
        found = []
    for info in sorted(found, key=lambda i: i.url):
        chunks.append(fs.read_bytes(info.url))
        objects += 1
    if not chunks:
        return None
    records = []
    for chunk in chunks:
        for line in chunk.split(b"\n"):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:  # a line torn by a killed driver: what follows it was never written
                log.debug("ignoring a torn journal line in %s", folder)
    return records, objects
