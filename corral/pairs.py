"""What ``map``, ``combine`` and ``reduce`` may yield, checked where it is yielded.

Pairs are ``(key, value)`` tuples. Keys are ``str`` (or ``None`` in a job's output, to write the value
alone); values are ``str``, ``int``, ``float``, ``bool``, ``None``, or lists and dicts (with ``str``
keys) of those. Anything else (a bare string, a number, bytes, a set, an object) fails the task with
a message naming the method and the value, not a codec's error far from the user's line.

The checks run in C over batches of pairs and look closer only when something is off. Into the
shuffle, map's hot loop checks each batch's shape as it is yielded; the values are checked when the
map buffer writes them (after ``combine``, once per stored value), keys when it sorts them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from operator import itemgetter
from typing import Any

from corral.speedups import are_pairs

#: Values a pair may hold without a closer look (lists, tuples and dicts of them are looked into).
SCALARS = frozenset({str, int, float, bool, type(None)})
_STR_KEY = frozenset({str})
_STR_OR_NONE_KEY = frozenset({str, type(None)})
#: What ``unstorable`` returns for a value corral can store.
OK = object()
_first = itemgetter(0)
_second = itemgetter(1)
#: Pairs of map's hot loop checked together: few enough that they are still in the CPU's caches.
SHUFFLE_BATCH = 1024
VALUES_RULE = "values must be str, int, float, bool, None, or lists and dicts (with str keys) of those"
#: msgpack (the shuffle, the records between stages) stores integers of 64 bits.
INT_RULE = "integers passed on to reduce or to the next stage must be from -2**63 to 2**64-1"


def describe(value: Any) -> str:
    """``repr(value)`` (shortened) and its type, for messages."""
    text = repr(value)
    if len(text) > 200:
        text = text[:200] + "…"
    return f"{text} (of type {type(value).__name__})"


class DictKey:
    """What ``unstorable`` finds when a dict's key is not a str: the key, said to be one in messages."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key


def unstorable(value: Any) -> Any:
    """The part of ``value`` corral cannot store (a set, bytes, an object; a dict's non-str key as a
    ``DictKey``), or ``OK`` when it can store all of it."""
    kind = type(value)
    if kind in SCALARS:
        return OK
    if kind is list or kind is tuple:
        if set(map(type, value)) <= SCALARS:
            return OK
        for item in value:
            bad = unstorable(item)
            if bad is not OK:
                return bad
        return OK
    if kind is dict:
        bad_key = next((k for k in value if type(k) is not str), OK)
        if bad_key is not OK:
            return DictKey(bad_key)
        return unstorable(list(value.values()))
    if isinstance(value, (str, int, float)):  # subclasses (an IntEnum, numpy.float64) store as their base
        return OK
    return value



def value_error(source: str, key: Any, value: Any, bad: Any) -> TypeError:
    if isinstance(bad, DictKey):
        what = f"the dict key {describe(bad.key)} in the value {value!r}"
    else:
        what = f"the value {describe(value)}" if bad is value else f"{describe(bad)} in the value {value!r}"
    return TypeError(f"{source} yielded a value corral cannot store for the key {key!r}: {what}; {VALUES_RULE}")


def _texts(item: Any) -> Iterator[str]:
    """Every str in a key or value (a dict's keys too)."""
    if isinstance(item, str):
        yield item
    elif isinstance(item, list | tuple):
        for part in item:
            yield from _texts(part)
    elif isinstance(item, dict):
        for name, part in item.items():
            yield from _texts(name)
            yield from _texts(part)


def _surrogate(text: str, exc: UnicodeEncodeError) -> str:
    return (f"{describe(text)} holds the lone surrogate {text[exc.start]!r} at position {exc.start}, which UTF-8 "
            "cannot encode")


class TextError(TypeError):
    """Text the msgpack encoder could not write; ``unicode_error`` is the codec's error, for a caller that
    knows the method and the pairs to raise ``text_error`` with them."""

    def __init__(self, message: str, unicode_error: UnicodeEncodeError) -> None:
        super().__init__(message)
        self.unicode_error = unicode_error


def text_error(exc: UnicodeEncodeError, source: str | None = None,
               pairs: Iterable[tuple[Any, Any]] = ()) -> TypeError:
    """The error for text corral cannot write (a lone surrogate, say from a JSON ``"\\ud800"`` escape: input
    bytes that are not UTF-8 are written back as they were, but this has no bytes), in place of the
    codec's. With the ``pairs`` being written, it names the method and the key of the pair that holds it."""
    for key, value in pairs:
        for text in _texts([key, value]):
            try:
                text.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError as found:
                return TypeError(f"{source} yielded text corral cannot write for the key {key!r}: "
                                 f"{_surrogate(text, found)}")
    text = exc.object if isinstance(exc.object, str) else ""
    return TypeError(f"{source + ' yielded ' if source else ''}text corral cannot write: {_surrogate(text, exc)}")


class NonFiniteError(ValueError):
    """A float NaN or infinity met by an encoder whose format (JSON) cannot hold it, for a caller that
    knows the method and the pairs to raise ``non_finite_error`` with them."""


def _non_finite(value: Any) -> float | None:
    """The first float NaN or infinity in ``value``, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    if isinstance(value, (list, tuple)):
        return next((bad for item in value if (bad := _non_finite(item)) is not None), None)
    if isinstance(value, dict):
        return _non_finite(list(value.values()))
    return None


def non_finite_error(source: str, fmt: str, pairs: Iterable[tuple[Any, Any]]) -> ValueError:
    """The error for a float NaN or infinity in ``fmt`` output (JSON has neither: ``NaN`` would be written,
    which JSON readers refuse), naming the method, the key and the value."""
    for key, value in pairs:
        bad = _non_finite(value)
        if bad is not None:
            what = f"the value {describe(value)}" if bad is value else f"{bad!r} in the value {value!r}"
            return ValueError(f"{source} yielded a value {fmt} output cannot store for the key {key!r}: {what}; JSON "
                              "has no NaN or Infinity (yield None, or a string such as 'nan')")
    return ValueError(f"{source} yielded a float NaN or Infinity, which {fmt} output cannot store")


def _too_big(value: Any) -> int | None:
    """The first integer in ``value`` outside msgpack's 64 bits, or None."""
    if isinstance(value, int):  # bool too: always in range
        return value if not -(1 << 63) <= value < 1 << 64 else None
    if isinstance(value, (list, tuple)):
        return next((big for item in value if (big := _too_big(item)) is not None), None)
    if isinstance(value, dict):
        return _too_big(list(value.values()))
    return None


def integer_error(source: str, batch: list[Any]) -> ValueError:
    """For a batch of alternating keys and values (or lists of values) that msgpack refused with an
    OverflowError: the message naming the method, the key and the integer (found only on failure, so
    the common path pays nothing)."""
    for key, value in zip(batch[::2], batch[1::2], strict=False):
        big = _too_big(value)
        if big is not None:
            return ValueError(f"{source} yielded a value corral cannot store for the key {key!r}: the integer {big} "
                              f"does not fit in 64 bits; {INT_RULE}")
    return ValueError(f"{source} yielded an integer corral cannot store; {INT_RULE}")


def key_error(source: str, key: Any, value: Any, shuffle: bool = True) -> TypeError:
    what = "str" if shuffle else "str (or None, to write the value alone)"
    return TypeError(f"{source} yielded the key {describe(key)} with the value {value!r}: keys must be {what}")


def _as_pair(source: str, item: Any) -> tuple[Any, Any]:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise TypeError(f"{source} must yield (key, value) pairs, but it yielded {describe(item)}")


def check_pairs(source: str, pairs: list[Any], shuffle: bool = False) -> tuple[set[type], set[type]]:
    """Check a batch of what ``source`` (``"map"``, ``"reduce"``…) yielded, in place: every item must
    be a ``(key, value)`` pair (a list of two is made a tuple), keys ``str`` (or ``None``, except into
    the shuffle), values storable. A TypeError names the method and the pair. Returns the key and value
    types seen, for the writers' fast paths."""
    if not are_pairs(pairs):
        pairs[:] = [_as_pair(source, item) for item in pairs]
    key_types = set(map(type, map(_first, pairs)))
    allowed = _STR_KEY if shuffle else _STR_OR_NONE_KEY
    if not key_types <= allowed:
        key, value = next(p for p in pairs if type(p[0]) not in allowed)
        raise key_error(source, key, value, shuffle)
    value_types = set(map(type, map(_second, pairs)))
    if not value_types <= SCALARS:
        for key, value in pairs:
            if type(value) not in SCALARS:
                bad = unstorable(value)
                if bad is not OK:
                    raise value_error(source, key, value, bad)
    return key_types, value_types


def shuffle_batches(source: str, pairs: Iterable[Any]) -> Iterator[list[tuple[Any, Any]]]:
    """``pairs`` in batches of ``SHUFFLE_BATCH`` (consumed as they come), each checked to hold only
    ``(key, value)`` tuples: the shape check of map's hot loop. Keys and values are checked later, by
    the map buffer (``check_keys``, ``check_values``); a key that cannot be hashed fails in the loop,
    which then calls ``check_pairs`` for the message."""
    iterator = iter(pairs)
    while batch := list(islice(iterator, SHUFFLE_BATCH)):
        if not are_pairs(batch):  # in C where corral._speedups is built (corral.speedups)
            batch = [_as_pair(source, item) for item in batch]
        yield batch


def check_keys(source: str, keys: list[Any], first_value: Any) -> None:
    """Every key of a map buffer is a str (``first_value(key)``: a value of it, for the message)."""
    if set(map(type, keys)) <= _STR_KEY:
        return
    key = next(k for k in keys if type(k) is not str)
    raise key_error(source, key, first_value(key))


def check_values(source: str, keys: list[str], groups: list[list[Any]]) -> None:
    """Every value of ``groups`` (the lists of values of ``keys``) is storable."""
    if set(map(type, chain.from_iterable(groups))) <= SCALARS:
        return
    for key, values in zip(keys, groups, strict=True):
        for value in values:
            if type(value) not in SCALARS:
                bad = unstorable(value)
                if bad is not OK:
                    raise value_error(source, key, value, bad)
