"""The JSON text of a big value (the manifest, the journal's records) in pieces of about 32 KB, every
part of it encoded by json's C encoder.

``json.dumps`` of a run of 10,000 tasks builds its 4 MB of text at once, then the bytes of it: the
driver's peak memory. ``JSONEncoder.iterencode`` would stream it, but only through the pure-Python
encoder (1.8 s for that manifest). Here the outer levels of a value are walked in Python and what
lies below them (a task's record) is encoded whole, in C; the text is the same as ``json.dumps``'s.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

#: About how many bytes a piece holds.
PIECE = 32 << 10
#: About how many bytes of a list's small items are encoded at once.
BATCH = 8 << 10

#: One value's compact JSON text, by json's C encoder (what is not JSON is written as its ``str``).
encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


def chunks(value: Any, depth: int) -> Iterator[str]:
    """The text of ``json.dumps(value, separators=(",", ":"), default=str)``, in chunks: dicts and
    lists down to ``depth`` levels are written item by item (the last level's small items about ``BATCH``
    bytes at a time), what lies deeper is encoded whole."""
    if depth <= 0 or not value or not isinstance(value, dict | list | tuple):
        yield encode(value)
    elif isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):  # json turns other keys into strings itself
            yield encode(value)
            return
        opening = "{"
        for key, item in value.items():
            yield opening + encode(key) + ":"
            yield from chunks(item, depth - 1)
            opening = ","
        yield "}"
    elif depth == 1:
        yield from _batched(value)
    else:
        opening = "["
        for item in value:
            yield opening
            yield from chunks(item, depth - 1)
            opening = ","
        yield "]"


def _batched(items: list[Any] | tuple[Any, ...]) -> Iterator[str]:
    """The text of ``encode(items)``, items encoded whole, many at a time: as many as make about
    ``BATCH`` bytes by the size of the batch before (a run's fingerprint of 20,000 small files was
    20,000 calls of the encoder, 30 ms; a list of big items still goes an item at a time)."""
    opening = "["
    start, count = 0, 1
    while start < len(items):
        text = encode(items[start : start + count])  # "[a,b,…]": its items and commas
        yield opening + text[1:-1]
        opening = ","
        start += count
        count = max(1, min(count * 8, count * BATCH // len(text)))
    yield "]"


def pieces(texts: Iterable[str], size: int = PIECE) -> Iterator[bytes]:
    """``texts`` joined and encoded as UTF-8, in pieces of about ``size`` bytes."""
    buffer: list[str] = []
    length = 0
    for text in texts:
        buffer.append(text)
        length += len(text)
        if length >= size:
            yield "".join(buffer).encode("utf-8")
            buffer.clear()
            length = 0
    if buffer:
        yield "".join(buffer).encode("utf-8")
