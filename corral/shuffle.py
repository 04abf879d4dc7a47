"""The intermediate format and its two ends: map-side buffering/spilling and reduce-side merging.

One map attempt writes ONE object: for each reduce partition in turn, a segment of msgpack batches
holding that partition's ``(key, [values…])`` groups in sorted key order; the byte range of every
segment is the object's index (returned to the driver, and stored at the object's end). A reducer
range-reads its segment from each committed map object and merges them as streams.

msgpack is a safe codec (it builds only plain data), encoded in batches of many groups.
"""

from __future__ import annotations

import heapq
import io
import os
import struct
import sys
import tempfile
import zlib
from bisect import bisect_left, bisect_right
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from itertools import accumulate, chain, compress, groupby, islice, pairwise, repeat
from operator import eq, itemgetter, mul
from typing import IO, Any

import msgpack

from corral import cancellation, speedups
from corral.fs import writing
from corral.pairs import (
    SCALARS,
    TextError,
    check_keys,
    check_pairs,
    check_values,
    integer_error,
    shuffle_batches,
    text_error,
)
from corral.speedups import are_pairs, count_constant
from corral.total_order import RangePartition

#: Values of one key are stored in entries of at most this many values, so no entry is unbounded.
MAX_VALUES_PER_ENTRY = 1024
#: Packed size a stored batch aims at, and the most values it holds: a reader decodes a batch at a time
#: (about 10x its packed size for small values), and merges one batch of each of up to MERGE_FACTOR sources.
_BATCH_BYTES = 64 << 10
_MAX_BATCH_VALUES = 65536
_MAGIC = b"CORRALS1"
_FOOTER = struct.Struct("<Q8s")  # index offset, magic
_READ_BLOCK = 1 << 20
#: Fewest sorted sources merged at once; more are first merged in passes (``limit_fan_in``). A task
#: merges more at once when its memory budget has room for them (``merge_factor``).
MERGE_FACTOR = 10
#: Memory a task's budget sets aside per source merged at once: a read block, the decoder's buffer and a
#: decoded batch come to 1-2 MB; the rest is headroom (a hot key's values, the reducer's own objects).
_MERGE_SOURCE_BYTES = 8 << 20
#: Keys handled together when a map task writes its groups: few enough to stay in the CPU's caches.
_KEYS_PER_ROUND = 4096
_END = object()
_first = itemgetter(0)
_second = itemgetter(1)
_more_than_one = (1).__lt__
_MARK = object()  # ends a combine call's pairs in a flattened list
_MARKS = repeat((_MARK,))
#: Text read with ``input_errors = "surrogateescape"`` holds its undecodable bytes as lone surrogates:
#: they are written back as those bytes (in the shuffle, between stages and in the output).
_TEXT_ERRORS = "surrogateescape"

Index = list[list[int]]  # per partition: [offset, length]


def default_partition(key: str, num_partitions: int) -> int:
    """A stable partition for ``key``: CRC-32 of its UTF-8 bytes (the same on every machine)."""
    return zlib.crc32(key.encode("utf-8", _TEXT_ERRORS)) % num_partitions


def _own_size(value: Any) -> int:
    """Memory a buffered value adds beyond its slot: none for the shared singletons (None, booleans,
    small ints), else its size."""
    if value is None or value is True or value is False or (type(value) is int and -5 <= value <= 256):
        return 0
    return sys.getsizeof(value)


def _packer() -> Callable[[Any], bytes]:
    """msgpack's ``pack``; text holding undecodable input bytes (lone surrogates) takes a slower path,
    and text that has no bytes at all is a TypeError naming it (``corral.pairs.text_error``)."""
    fast = msgpack.Packer(use_bin_type=True, strict_types=False).pack
    escaping = msgpack.Packer(use_bin_type=True, strict_types=False, unicode_errors=_TEXT_ERRORS).pack

    def pack(obj: Any) -> bytes:
        try:
            return fast(obj)
        except UnicodeEncodeError:
            try:
                return escaping(obj)
            except UnicodeEncodeError as exc:
                raise TextError(str(text_error(exc)), exc) from None

    return pack


class GroupWriter:
    """Writes sorted ``(key, values)`` groups to a binary stream as msgpack batches.

    A reader decodes a stored batch at a time (a reducer holds one per map output it merges), so a
    batch is bounded by its number of values, whatever the groups: ``_room`` values, adapted after
    each batch so that batches pack to about ``_BATCH_BYTES``. A key with more values than that (a hot
    key) is stored as a run of entries over consecutive batches; an entry holds at most
    ``MAX_VALUES_PER_ENTRY`` values.
    """

    def __init__(self, out: IO[bytes], offset: int = 0, source: str | None = None) -> None:
        self.out = out
        self.offset = offset
        self.source = source  # the method whose pairs these are, for error messages
        self._batch: list[Any] = []
        self._values = 0  # values in the batch
        self._room = 4096  # values per batch, adapted to their packed size
        self._pack = _packer()
        self.values_written = 0  # in all (a map task's records out)

    def add(self, key: str, values: list[Any]) -> None:
        n = len(values)
        if not n:  # e.g. a combine that yielded nothing for this key: reduce must not see the key
            return
        if self._values + n <= self._room and n <= MAX_VALUES_PER_ENTRY:
            self._batch += (key, values)
            self._values += n
            if self._values >= self._room:
                self.flush()
            return
        start = 0
        while start < n:  # fill the batch up, then batches of entries of the key alone
            take = min(self._room - self._values, MAX_VALUES_PER_ENTRY, n - start)
            self._batch += (key, values[start : start + take])
            self._values += take
            start += take
            if self._values >= self._room:
                self.flush()

    def add_groups(self, keys: list[str], values: list[list[Any]]) -> None:
        """``add(key, group)`` for every key and group of two parallel lists, batched in C."""
        counts = list(map(len, values))
        if counts and max(counts) > MAX_VALUES_PER_ENTRY:  # rare: a key to store as several entries
            for key, group in zip(keys, values, strict=True):
                self.add(key, group)
            return
        ends = list(accumulate(counts))
        first, done = 0, 0  # the first group not added yet; the values before it
        while first < len(keys):
            cut = bisect_right(ends, done + self._room - self._values, first)  # the groups that fit
            if cut == first:  # the next group alone overflows the batch: split it
                self.add(keys[first], values[first])
                first, done = first + 1, ends[first]
                continue
            if cut - first == 1:
                self._batch += (keys[first], values[first])
            else:
                self._batch += chain.from_iterable(zip(keys[first:cut], values[first:cut], strict=True))
            self._values += ends[cut - 1] - done
            first, done = cut, ends[cut - 1]
            if first < len(keys) or self._values >= self._room:
                self.flush()

    def add_singles(self, keys: list[str], values: list[Any]) -> None:
        """Groups of one value each, ``keys[i]`` with ``values[i]`` (a sort's records): stored as batches
        of two columns, ``[keys, values]``, which pack and unpack as two lists rather than a list per value."""
        if self._batch:  # a batch holds entries or columns, not both
            self.flush()
        first = 0
        while first < len(keys):
            cut = first + self._room
            self._batch = [keys[first:cut], values[first:cut]]
            self._values = len(self._batch[0])
            self.flush()
            first = cut

    def add_entries(self, entries: list[tuple[str, list[Any]]]) -> None:
        """Add stored entries as they are (e.g. a merged round)."""
        if entries:
            self.add_groups(list(map(_first, entries)), list(map(_second, entries)))

    def add_iter(self, key: str, values: Iterable[Any]) -> None:
        iterator = iter(values)
        while chunk := list(islice(iterator, MAX_VALUES_PER_ENTRY)):
            self.add(key, chunk)

    def flush(self) -> None:
        if not self._batch:
            return
        try:
            data = self._pack(self._batch)
        except TextError as exc:
            pairs = list(_batch_pairs(self._batch))
            raise text_error(exc.unicode_error, self.source, pairs) from None
        except OverflowError:  # an int past 64 bits, found only now: the common path pays nothing
            raise integer_error(self.source or "map", list(chain.from_iterable(_batch_pairs(self._batch)))) from None
        self.out.write(data)
        self.offset += len(data)
        self.values_written += self._values
        # the values that pack to about _BATCH_BYTES, from these (never fewer than one)
        self._room = max(1, min(_MAX_BATCH_VALUES, self._values * _BATCH_BYTES // len(data)))
        self._batch = []
        self._values = 0


def iter_group_batches(blocks: Iterable[bytes]) -> Iterator[list[tuple[str, Sequence[Any]]]]:
    """The ``(key, values)`` entries stored in a segment, a stored batch at a time, read block by block."""
    # a small initial buffer (msgpack's default is 1 MiB): a reducer holds one unpacker per map output
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=False, max_buffer_size=1 << 31, unicode_errors=_TEXT_ERRORS, read_size=64 << 10
    )
    for block in blocks:
        unpacker.feed(block)
        for batch in unpacker:
            if type(batch[0]) is list:  # columns: keys, and their one value each (``add_singles``)
                yield list(zip(batch[0], zip(batch[1]), strict=True))
            else:
                yield list(zip(batch[0::2], batch[1::2], strict=True))


def _batch_pairs(batch: list[Any]) -> Iterator[tuple[str, Any]]:
    """The (key, value) pairs of a batch as ``GroupWriter`` holds it (entries or columns), for messages."""
    if batch and type(batch[0]) is list:
        return zip(batch[0], batch[1], strict=True)
    return ((key, value) for key, values in zip(batch[0::2], batch[1::2], strict=True) for value in values)


def iter_groups(blocks: Iterable[bytes]) -> Iterator[tuple[str, Sequence[Any]]]:
    """The ``(key, values)`` entries stored in a segment, read block by block."""
    return chain.from_iterable(iter_group_batches(blocks))


def range_blocks(
    read: Callable[[int, int], bytes], offset: int, length: int, block: int = _READ_BLOCK
) -> Iterator[bytes]:
    """Read ``[offset, offset+length)`` in blocks of ``block`` bytes through ``read(start, end)``.
    A cancelled attempt (``corral.cancellation``) stops here, between blocks."""
    end = offset + length
    while offset < end:
        cancellation.check()
        stop = min(offset + block, end)
        yield read(offset, stop)
        offset = stop


def write_index(out: IO[bytes], index: Index, offset: int) -> None:
    out.write(msgpack.packb(index))
    out.write(_FOOTER.pack(offset, _MAGIC))


def read_index(data: bytes) -> Index:
    """The index stored at the end of a map output object (``data`` is the whole object)."""
    offset, magic = _FOOTER.unpack(data[-_FOOTER.size :])
    if magic != _MAGIC:
        raise ValueError("not a corral map output object")
    return msgpack.unpackb(data[offset : -_FOOTER.size])


def merge_groups(
    sources: list[Iterator[tuple[str, list[Any]]]],
    value_key: Callable[[Any], Any] | None = None,
    sort_values: bool = False,
) -> Iterator[tuple[str, Iterator[Any]]]:
    """Streaming k-way merge of sorted sources of entries into ``(key, lazy values)`` in key order."""
    if sort_values:
        return _merge_sorted_values(sources, value_key)
    return merge_batch_groups([iter(partial(_next_batch, iter(source)), []) for source in sources])


def merge_batch_groups(
    sources: list[Iterator[list[Any]]],
    value_key: Callable[[Any], Any] | None = None,
    sort_values: bool = False,
) -> Iterator[tuple[str, Iterator[Any]]]:
    """``merge_groups`` of sources given as batches of entries (as ``iter_group_batches`` reads them)."""
    if sort_values:
        return _merge_sorted_values([chain.from_iterable(source) for source in sources], value_key)
    return chain.from_iterable(_batch_groups(iter(sources[0] if len(sources) == 1 else merge_batches(sources))))


def _batch_groups(batches: Iterator[list[Any]]) -> Iterator[Iterable[tuple[str, Iterator[Any]]]]:
    """The ``(key, lazy values)`` groups of sorted batches of entries, as iterables to chain.

    While no key repeats (a sort's records: each key of one entry), a batch's groups are made in C, an
    entry each, but for the last entry, which is held back: its key may go on in the next batch. From
    the first batch where a key repeats, the rest is grouped by ``groupby`` (a hot key's values stream)."""
    held: tuple[str, Sequence[Any]] | None = None  # the last entry of the previous batch
    for batch in batches:
        if not batch:
            continue
        keys = list(map(_first, batch))
        if (held is not None and keys[0] == held[0]) or any(map(eq, keys, islice(keys, 1, None))):
            rest = chain(batch, chain.from_iterable(batches))
            grouped = groupby(rest if held is None else chain((held,), rest), key=_first)
            yield ((key, chain.from_iterable(map(_second, entries))) for key, entries in grouped)
            return
        if held is not None:
            yield ((held[0], iter(held[1])),)
        held = batch[-1]
        del keys[-1]
        yield zip(keys, map(iter, map(_second, batch)), strict=False)  # all but the last
    if held is not None:
        yield ((held[0], iter(held[1])),)


def _next_batch(entries: Iterator[Any], size: int = 2048) -> list[Any]:
    return list(islice(entries, size))


def merge_batches(sources: list[Iterator[list[Any]]]) -> Iterator[list[Any]]:
    """Sorted sources of batches of entries, merged into sorted batches: a k-way merge done a batch at a
    time in C (a stable sort of sorted runs), not an entry at a time through a heap.

    Each round looks at every source's current batch and takes the smallest of their last keys, the
    bound: every entry before the bound is in those batches, so they are taken and sorted together
    (ties keep the order of the sources). Then the entries of the bound key itself, which may go on
    in a source's next batches, are taken source after source, batch by batch. So the entries of a key
    keep the order of the sources, and a hot key streams through, one batch in memory per source.
    """
    heads: list[list[Any]] = []  # per source with entries left: [its batches, its current batch, position in it]
    for source in sources:
        source = iter(source)
        entries = _next_entries(source)
        if entries:
            heads.append([source, entries, 0])
    while heads:
        bound = min(head[1][-1][0] for head in heads)
        taken: list[Any] = []
        for head in heads:
            entries, position = head[1], head[2]
            end = bisect_left(entries, bound, position, key=_first)
            taken += entries[position:end]
            head[2] = end
        if taken:
            taken.sort(key=_first)
            yield taken
        for head in heads:
            source, entries, position = head
            while True:
                end = bisect_right(entries, bound, position, key=_first)
                if end > position:
                    yield entries[position:end]
                if end < len(entries):
                    head[2] = end
                    break
                entries, position = _next_entries(source), 0
                head[1], head[2] = entries, 0
                if not entries or entries[0][0] != bound:
                    break
        heads = [head for head in heads if head[1]]


def _next_entries(batches: Iterator[list[Any]]) -> list[Any]:
    """The next batch that is not empty; an empty list at the end."""
    for entries in batches:
        if entries:
            return entries
    return []


def _merge_sorted_values(
    sources: list[Iterator[tuple[str, list[Any]]]], value_key: Callable[[Any], Any] | None
) -> Iterator[tuple[str, Iterator[Any]]]:
    """``merge_groups`` with values in sorted order. A source's entries of one key are a sorted run;
    the runs of a key are merged as streams, so memory holds about one entry per source however many
    values a key has."""
    sources = [iter(source) for source in sources]
    following: list[tuple[str, list[Any]] | None] = [None] * len(sources)  # a long run's next entry
    heads = []  # (key, source number, values): ties on the key are broken by the number
    for n, source in enumerate(sources):
        entry = next(source, None)
        if entry is not None:
            heads.append((entry[0], n, entry[1]))
    heapq.heapify(heads)
    while heads:
        key = heads[0][0]
        runs: list[Iterable[Any]] = []
        long_runs = []
        while heads and heads[0][0] == key:
            _, n, values = heapq.heappop(heads)
            entry = next(sources[n], None)
            if entry is None:
                runs.append(values)
            elif entry[0] != key:  # the common case: the key's only entry in this source
                runs.append(values)
                heapq.heappush(heads, (entry[0], n, entry[1]))
            else:  # a key of several entries: read the rest of them as reduce goes
                run = _run(key, chain(values, entry[1]), sources[n], following, n)
                runs.append(run)
                long_runs.append((n, run))
        yield key, iter(runs[0]) if len(runs) == 1 else heapq.merge(*runs, key=value_key)
        for n, run in long_runs:
            deque(run, maxlen=0)  # skip what reduce left unread
            entry, following[n] = following[n], None
            if entry is not None:
                heapq.heappush(heads, (entry[0], n, entry[1]))


def _run(
    key: str, first: Iterable[Any], source: Iterator[tuple[str, list[Any]]], following: list, n: int
) -> Iterator[Any]:
    """The values of ``key`` in ``source``, entry by entry; the next key's entry goes to ``following[n]``."""
    yield from first
    for entry in source:
        if entry[0] != key:
            following[n] = entry
            return
        yield from entry[1]


def file_blocks(f: IO[bytes], offset: int, length: int, block: int = _READ_BLOCK) -> Iterator[bytes]:
    """``range_blocks`` of an open local file."""

    def read(start: int, end: int) -> bytes:
        f.seek(start)
        return f.read(end - start)

    return range_blocks(read, offset, length, block)


def merge_factor(budget: int) -> int:
    """How many sorted sources a task with ``budget`` bytes merges at once: ``MERGE_FACTOR``, or one per
    ``_MERGE_SOURCE_BYTES`` of the budget when that is more (32 at the default 256 MB). Each pass over
    the limit writes and reads the merged data once more through a local file: a reducer of 16 map
    outputs merged 10 and then 7 of them."""
    return max(MERGE_FACTOR, budget // _MERGE_SOURCE_BYTES)


def limit_fan_in(
    sources: list[Iterator[list[Any]]],
    factor: int = MERGE_FACTOR,
    value_key: Callable[[Any], Any] | None = None,
    sort_values: bool = False,
    spill_dir: str | None = None,
    block: int = _READ_BLOCK,
) -> tuple[list[Iterator[list[Any]]], list[IO[bytes]]]:
    """Merge sorted sources (of entry batches) in passes, into local temporary files, until at most
    ``factor`` are left to merge at once: a merge holds a decoded batch and a read block per source,
    so this bounds its memory however many map outputs or spills there are (Hadoop's merge factor).

    Runs of consecutive sources are merged, each into one that takes their place, so a key's values
    keep the order of the sources; each merge takes just enough sources to reach ``factor`` (no data
    is rewritten without need). Returns the sources to merge and the temporary files, for the caller
    to close when done.
    """
    files: list[IO[bytes]] = []
    sources = list(sources)
    position = 0
    while len(sources) > factor:
        if position >= len(sources) - 1:  # every source merged once and still too many: another pass
            position = 0
        take = min(factor, len(sources) - factor + 1, len(sources) - position)
        f = tempfile.TemporaryFile(dir=spill_dir, prefix="corral-merge-")
        buffered = io.BufferedWriter(f, buffer_size=1 << 20)
        writer = GroupWriter(buffered)
        group = sources[position : position + take]
        with writing(*_spill_place(spill_dir)):
            if sort_values:  # a key's values must stay one sorted run in the merged source
                for key, values in merge_batch_groups(group, value_key, sort_values=True):
                    writer.add_iter(key, values)
            else:
                for entries in merge_batches(group):
                    writer.add_entries(entries)
            writer.flush()
            buffered.flush()
        buffered.detach()
        files.append(f)
        sources[position : position + take] = [iter_group_batches(file_blocks(f, 0, writer.offset, block))]
        position += 1
    return sources, files


def sorted_values(
    values: Iterable[Any], value_key: Callable[[Any], Any] | None, budget: int, spill_dir: str | None = None
) -> Iterator[Any]:
    """``values`` in sorted order (stable), holding about ``budget`` bytes of them: more than that are
    sorted in runs that go to a temporary file, then merged back as streams (an external sort)."""
    iterator = iter(values)
    run = _take(iterator, budget)
    following = next(iterator, _END)
    if following is _END:  # the common case: they fit
        run.sort(key=value_key)
        yield from run
        return
    iterator = chain((following,), iterator)
    with tempfile.TemporaryFile(dir=spill_dir, prefix="corral-sort-") as f:
        buffered = io.BufferedWriter(f, buffer_size=1 << 20)
        writer = GroupWriter(buffered)
        runs = []
        with writing(*_spill_place(spill_dir)):
            while run:
                run.sort(key=value_key)
                start = writer.offset
                writer.add_iter("", run)
                writer.flush()
                runs.append((start, writer.offset - start))
                run = _take(iterator, budget)
            buffered.flush()
        buffered.detach()
        streams = [
            chain.from_iterable(map(_second, iter_groups(file_blocks(f, start, length, 64 << 10))))
            for start, length in runs
        ]
        yield from heapq.merge(*streams, key=value_key)


def _spill_place(spill_dir: str | None) -> tuple[str, str]:
    """The folder spills go to, and how a full-disk message names it."""
    if spill_dir:
        return spill_dir, f"spill files in {spill_dir} (CORRAL_SPILL_DIR)"
    folder = tempfile.gettempdir()
    return folder, f"spill files in {folder} (the temporary folder; CORRAL_SPILL_DIR chooses another)"


def _is_constant(value: Any) -> bool:
    """Whether ``value`` is one of Python's shared constants, which an equal value of its type always is:
    None, a bool, an int from -5 to 256."""
    return value is None or value is True or value is False or (type(value) is int and -5 <= value <= 256)


def _take(iterator: Iterator[Any], budget: int) -> list[Any]:
    """The next values of ``iterator`` that fit in about ``budget`` bytes (at least 1024 of them)."""
    taken = list(islice(iterator, MAX_VALUES_PER_ENTRY))
    if taken:
        sample = taken[:64]
        per_value = 8 + sum(map(_own_size, sample)) / len(sample)
        taken += islice(iterator, max(0, int(budget / per_value) - len(taken)))
    return taken


class MapBuffer:
    """Buffers a map task's output within a memory budget; sorts, combines and spills it.

    ``groups`` is a plain dict of key → list of values that the map loop appends to directly (no
    per-record function layer). Partitions are computed once per distinct key, at spill time.

    While every value buffered is one small constant (a word count's ``1``: an int from -5 to 256,
    a bool or None, all the same object), the buffer only counts each key's values in ``counts``, in C
    (``collections.Counter``'s loop), instead of appending to a list per key; a key's values are
    then that constant ``counts[key]`` times, the very objects map yielded, handed to ``combine`` and
    written as before. The first other value turns the counts into lists and buffering goes on as above.
    """

    def __init__(
        self,
        num_partitions: int,
        budget: int,
        partition: Callable[[str, int], int] | None = None,
        combine: Callable[[str, Iterator[Any]], Iterable[tuple[str, Any]]] | None = None,
        sort_values: bool = False,
        value_key: Callable[[Any], Any] | None = None,
        spill_dir: str | None = None,
    ) -> None:
        self.num_partitions = num_partitions
        self.budget = budget
        self.partition = partition or default_partition
        self.combine = combine
        self.sort_values = sort_values
        self.value_key = value_key
        self.spill_dir = spill_dir
        self.groups: defaultdict[str, list[Any]] = defaultdict(list)
        self._one_value_per_key = False  # groups maps each key to its only value, not to a list
        self.counts: dict[str, int] = {}  # key -> how many times it came with ``_value`` (see above)
        self._value: Any = _END  # the one value counted
        self._counting = True  # while values may still be counted (no other value seen)
        self.spills: list[tuple[IO[bytes], Index]] = []
        self._next_check = 0  # input records after which the next measurement is due
        self.records_out = 0  # values written by the last write (after the combine)
        self._filled_since = 0  # input records read when the buffer was last empty

    def add_pairs(self, source: str, pairs: Iterator[Any]) -> None:
        """Buffer all that ``source`` (map, map_batch) yields for a chunk of input: map's hot loop. While a
        constant is counted, the C module counts the pairs as they are yielded; from the first other
        item on (or without it) they go in checked batches of ``SHUFFLE_BATCH`` to ``add_batch``."""
        if self._counting and self._value is not _END and speedups.count_from is not None:
            odd = speedups.count_from(self.counts, pairs, self._value)
            if odd is None:
                return
            pairs = chain(odd, pairs)
        for shaped in shuffle_batches(source, pairs):
            self.add_batch(source, shaped)

    def add_batch(self, source: str, pairs: list[tuple[str, Any]]) -> None:
        """Buffer a batch of what ``source`` (map, map_batch) yielded: the hot loop, a pair at a time."""
        if self._counting and self._count(source, pairs):
            return
        groups = self.groups
        try:
            for key, value in pairs:
                groups[key].append(value)
        except TypeError:  # a key that cannot be hashed: say which
            check_pairs(source, pairs, shuffle=True)
            raise

    def _count(self, source: str, pairs: list[tuple[str, Any]]) -> bool:
        """Count the keys of a batch whose values are all the constant counted so far (the first batch:
        a small constant); False, after turning the counts into lists, when they are not."""
        value = pairs[0][1]
        if value is not self._value:
            if self._value is not _END or self.groups or not _is_constant(value):
                self._stop_counting()
                return False
            self._value = value
        try:
            if count_constant(self.counts, pairs, value):  # in C where corral._speedups is built
                return True
        except TypeError:  # a key that cannot be hashed: say which
            check_pairs(source, pairs, shuffle=True)
            raise
        self._stop_counting()
        return False

    def _stop_counting(self) -> None:
        """From now on values are appended to lists: the keys counted so far get theirs (the groups are
        empty while there are counts, so the order of each key's values is kept)."""
        self._counting = False
        if self.counts:
            value, groups = self._value, self.groups
            for key, n in self.counts.items():
                groups[key] = [value] * n
            self.counts = {}

    def holds_data(self) -> bool:
        return bool(self.groups) or bool(self.counts)

    def add_final(self, pairs: Iterable[Any]) -> None:
        """Buffer what ``map_final`` yields. With in-mapper combining the buffer is still empty and
        every key comes once: then the pairs become the buffer as they are, a value per key, without
        making a list for each (half the cost of the task's output for a word count)."""
        self._stop_counting()
        if not self.groups and not self.spills:
            pairs = list(pairs)
            if set(map(type, pairs)) <= {tuple} and set(map(len, pairs)) <= {2}:
                single = dict(pairs)
                if len(single) == len(pairs):
                    self.groups, self._one_value_per_key = single, True  # type: ignore[assignment]
                    return
        groups = self.groups
        pairs = iter(pairs)
        while chunk := list(islice(pairs, 65536)):  # measured as it goes: map_final may yield a lot
            for key, value in chunk:
                groups[key].append(value)
            self._fit()
            groups = self.groups

    # --- memory -------------------------------------------------------------------------------
    def estimated_bytes(self) -> int:
        """The buffer's size, from its counts and a sample of its keys and values."""
        groups = self.groups
        if self.counts:  # a key, its dict slot and its count
            sample_keys = list(islice(self.counts, 32))
            return int(len(self.counts) * (sum(map(sys.getsizeof, sample_keys)) / len(sample_keys) + 80))
        if not groups:
            return 0
        values = sum(map(len, groups.values()))
        sample = list(islice(groups.items(), 32))
        key_size = sum(sys.getsizeof(k) for k, _ in sample) / len(sample)
        sampled = [v for _, vs in sample for v in vs[:: max(1, len(vs) // 4)][:4]]  # across a long list
        value_size = sum(map(_own_size, sampled)) / len(sampled) if sampled else 0
        return int(len(groups) * (key_size + 120) + values * (8 + value_size))

    def check(self, records_in: int) -> None:
        """Called between input chunks: combine in place, then spill, when over the budget.

        Measuring walks every key, so after each measurement the next one waits until the input read
        since could, at the rate seen so far, have filled half of the room left.
        """
        if records_in < self._next_check:
            return
        size = self._fit()
        if size == 0:
            self._filled_since = records_in
        read = records_in - self._filled_since
        rate = size / read if read > 0 else 0
        self._next_check = records_in + (int((self.budget - size) / 2 / rate) if rate else 0)

    def _fit(self) -> int:
        """Combine in place, then spill, if the buffer is over the budget; its estimated size after."""
        size = self.estimated_bytes()
        if size > self.budget and self.counts:  # counted values: nothing to combine away
            self._spill()
            size = 0
        elif size > self.budget and self.combine is not None:
            self._combine_in_place()
            size = self.estimated_bytes()
            if size > self.budget // 2:
                self._spill()
                size = 0
        elif size > self.budget:
            self._spill()
            size = 0
        return size

    def _combine_in_place(self) -> None:
        groups = self.groups
        several = list(compress(groups, map(_more_than_one, map(len, groups.values()))))
        keys, values, _ = self._combine_all(several, list(map(groups.__getitem__, several)))
        groups.update(zip(keys, values, strict=True))
        if len(keys) < len(several):  # keys whose combine yielded nothing
            for key in set(several).difference(keys):
                del groups[key]

    def _combine_all(
        self, keys: list[str], values: list[Any], singles: bool = False
    ) -> tuple[list[str], list[Any], bool]:
        """``combine`` over each key and its values: the keys it yielded values for, those values (a list
        per key), and False; or, with ``singles``, when each call yielded one value, that value per key
        and True."""
        combine = self.combine
        assert combine is not None
        # every call's pairs, then a marker, flattened in C: no list per call (the common case, one
        # (key, value) tuple of the key it was given per call, is then checked in a few passes)
        calls = map(combine, keys, map(iter, values))
        flat: list[Any] = list(chain.from_iterable(chain.from_iterable(zip(calls, _MARKS, strict=False))))
        if len(flat) == 2 * len(keys) and flat[1::2].count(_MARK) == len(keys):
            pairs = flat[0::2]
            if are_pairs(pairs) and list(map(_first, pairs)) == keys:
                if singles:
                    return keys, list(map(_second, pairs)), True
                return keys, list(map(list, zip(map(_second, pairs)))), False
        kept_keys, kept_values = [], []
        items = iter(flat)
        for key in keys:
            combined = []
            for item in iter(items.__next__, _MARK):  # what combine yielded for the key
                out_key, value = item
                if out_key != key:
                    raise ValueError(f"combine must yield the key it was given: got {out_key!r} for {key!r}")
                combined.append(value)
            if combined:  # a combine that yielded nothing for a key: reduce must not see the key
                kept_keys.append(key)
                kept_values.append(combined)
        return kept_keys, kept_values, False

    def _combined(self, key: str, values: Iterable[Any]) -> Iterator[Any]:
        """The values ``combine`` yields for one key, as it yields them (a hot key's may not fit in memory)."""
        assert self.combine is not None
        for out_key, value in self.combine(key, iter(values)):
            if out_key != key:
                raise ValueError(f"combine must yield the key it was given: got {out_key!r} for {key!r}")
            yield value

    # --- sorting and writing ------------------------------------------------------------------
    def _a_value(self, key: str) -> Any:
        """A buffered value of ``key`` (for messages)."""
        if self.counts:
            return self._value
        values = self.groups[key]
        return values if self._one_value_per_key else values[0]

    def _sorted_partitions(self) -> list[list[str]]:
        """The buffered keys of each partition, sorted. The default partitioner runs in C over all
        keys at once (CRC-32 of their UTF-8 bytes, modulo the partition count). Keys are partitioned
        in the buffer's order (near their neighbours in memory), then each partition is sorted."""
        keys = list(self.counts or self.groups)
        check_keys("map", keys, self._a_value)
        n = self.num_partitions
        if n == 1 and self.partition is default_partition:
            keys.sort()
            return [keys]
        if isinstance(self.partition, RangePartition):  # key ranges: sort once, cut at the bounds
            keys.sort()
            cuts = [0, *(bisect_left(keys, bound) for bound in self.partition.bounds[: n - 1]), len(keys)]
            cuts += [len(keys)] * (n + 1 - len(cuts))
            return [keys[a:b] for a, b in pairwise(cuts)]
        if self.partition is default_partition:
            try:
                parts: Iterable[int] = map(n.__rmod__, map(zlib.crc32, map(str.encode, keys)))
                parts = list(parts)
            except UnicodeEncodeError:  # undecodable input kept as surrogates: hash its original bytes
                parts = [default_partition(key, n) for key in keys]
        else:
            parts = [self.partition(key, n) for key in keys]
            bad = next((p for p in parts if type(p) is not int or not 0 <= p < n), None)
            if bad is not None:
                key = keys[parts.index(bad)]
                raise ValueError(f"partition({key!r}, {n}) returned {bad!r}, not a number in [0, {n})")
        by_partition: list[list[str]]
        if n <= 16:  # a pass over the keys per partition, in C
            by_partition = [list(compress(keys, map(p.__eq__, parts))) for p in range(n)]
        else:
            by_partition = [[] for _ in range(n)]
            for p, key in zip(parts, keys, strict=True):
                by_partition[p].append(key)
        for partition_keys in by_partition:
            partition_keys.sort()
        return by_partition

    def _write_memory(self, out: IO[bytes], offset: int = 0) -> tuple[Index, int]:
        """Write the buffered groups partition by partition; return the index and the end offset.

        The combine runs on every key (so a map task's output is always combined at least once).
        """
        source = "map" if self.combine is None else "map (or combine)"
        writer = GroupWriter(out, offset, source)
        groups, counts, counted = self.groups, self.counts, [self._value]
        index: Index = []
        for keys in self._sorted_partitions():
            start = writer.offset
            for first in range(0, len(keys), _KEYS_PER_ROUND):
                some_keys = keys[first : first + _KEYS_PER_ROUND]
                values: list[Any]
                if counts and self.combine is not None:  # combine iterates them: value n times, in C
                    values = list(map(repeat, repeat(self._value), map(counts.__getitem__, some_keys)))
                elif counts:  # [value] * n for each key, in C
                    values = list(map(mul, repeat(counted), map(counts.__getitem__, some_keys)))
                else:
                    values = list(map(groups.__getitem__, some_keys))
                single = self._one_value_per_key  # values: each key's one value, not a list of them
                if self.combine is not None:
                    if single:
                        values = list(zip(values))  # (value,): a group of one
                    some_keys, values, single = self._combine_all(some_keys, values, singles=True)
                if single:
                    if not set(map(type, values)) <= SCALARS:
                        check_values(source, some_keys, [[v] for v in values])
                    writer.add_singles(some_keys, values)
                    continue
                check_values(source, some_keys, values)
                if self.sort_values:
                    for group in values:
                        if len(group) > 1:
                            group.sort(key=self.value_key)
                writer.add_groups(some_keys, values)
            writer.flush()
            index.append([start, writer.offset - start])
        self.groups = defaultdict(list)
        self.counts = {}
        self._one_value_per_key = False
        self.records_out = writer.values_written
        return index, writer.offset

    def _spill(self) -> None:
        f = tempfile.TemporaryFile(dir=self.spill_dir, prefix="corral-spill-")
        buffered = io.BufferedWriter(f, buffer_size=1 << 20)
        with writing(*_spill_place(self.spill_dir)):
            index, _ = self._write_memory(buffered)
            buffered.flush()
        buffered.detach()
        self.spills.append((f, index))

    def _spill_segment(self, spill: tuple[IO[bytes], Index], partition: int) -> Iterator[list[Any]]:
        f, index = spill
        return iter_group_batches(file_blocks(f, *index[partition]))

    def write(self, out: IO[bytes]) -> Index:
        """Write everything (memory and spills) as one indexed object to ``out``; return the index."""
        if not self.spills:
            index, end = self._write_memory(out)
            write_index(out, index, end)
            return index
        if self.holds_data():
            self._spill()
        writer = GroupWriter(out, source="map" if self.combine is None else "map (or combine)")
        index = []
        for p in range(self.num_partitions):
            start = writer.offset
            sources, merged_files = limit_fan_in(
                [self._spill_segment(spill, p) for spill in self.spills], merge_factor(self.budget),
                value_key=self.value_key, sort_values=self.sort_values, spill_dir=self.spill_dir,
            )
            for key, values in merge_batch_groups(sources, self.value_key, self.sort_values):
                if self.combine is not None:
                    values = self._combined(key, values)
                    if self.sort_values:  # combine may yield its values in any order
                        values = sorted_values(values, self.value_key, self.budget // 4, self.spill_dir)
                writer.add_iter(key, values)
            for f in merged_files:
                f.close()
            writer.flush()
            index.append([start, writer.offset - start])
        write_index(out, index, writer.offset)
        self.records_out = writer.values_written
        self.close()
        return index

    def close(self) -> None:
        for f, _ in self.spills:
            f.close()
        self.spills = []


class PairBuffer(MapBuffer):
    """The map buffer of a stage without a combine: the pairs as map yielded them, in one list,
    sorted by key when written (Hadoop's way). Nothing to combine, so no dict of lists to grow and
    to walk again: for keys that are mostly distinct (a sort, a join) that walk over memory was half
    a map task. Spills, the merge and the written object are the same as ``MapBuffer``'s."""

    def __init__(self, num_partitions: int, budget: int, **options: Any) -> None:
        super().__init__(num_partitions, budget, **options)
        if self.combine is not None:
            raise ValueError("a PairBuffer buffers pairs that are not combined (use MapBuffer)")
        self.pairs: list[tuple[str, Any]] = []
        self._source = "map"  # the method whose pairs these are, for messages

    def add_batch(self, source: str, pairs: list[tuple[str, Any]]) -> None:
        self.pairs += pairs  # keys are checked when sorted (a key that cannot be hashed is no str)
        self._source = source

    def holds_data(self) -> bool:
        return bool(self.pairs)

    def add_final(self, pairs: Iterable[Any]) -> None:
        pairs = iter(pairs)
        while chunk := list(islice(pairs, 65536)):  # measured as it goes: map_final may yield a lot
            self.pairs += chunk
            self._fit()

    def estimated_bytes(self) -> int:
        """Per pair: its list slot, its tuple, its value and its key (a key object yielded again and
        again, a hot key, counts once), from a sample across the list."""
        pairs = self.pairs
        if not pairs:
            return 0
        sample = pairs[:: max(1, len(pairs) // 32)][:32]
        distinct_keys = {id(k): k for k, _ in sample}
        key_size = sum(map(sys.getsizeof, distinct_keys.values())) / len(sample)
        value_size = sum(_own_size(v) for _, v in sample) / len(sample)
        return int(len(pairs) * (8 + 56 + key_size + value_size))

    def _fit(self) -> int:
        size = self.estimated_bytes()
        if size > self.budget:
            self._spill()
            return 0
        return size

    def _a_value(self, key: str) -> Any:
        return next(v for k, v in self.pairs if k == key)

    def _partitioned(self) -> list[list[tuple[str, Any]]]:
        """The pairs of each partition, sorted by key (stable: a key's values in the order map yielded
        them). Range partitions cut the sorted list; others are computed once per pair, in C for the
        default partitioner, then the pairs are taken partition by partition."""
        pairs = self.pairs
        if not set(map(type, map(_first, pairs))) <= {str}:
            check_keys(self._source, list(map(_first, pairs)), self._a_value)
        n = self.num_partitions
        if n == 1 or isinstance(self.partition, RangePartition):
            ordered = sorted(pairs, key=_first)  # a copy: ``self.pairs`` is freed in the order it was made
            if n == 1:
                return [ordered]
            assert isinstance(self.partition, RangePartition)
            ends = [bisect_left(ordered, bound, key=_first) for bound in self.partition.bounds[: n - 1]]
            cuts = [0, *ends, len(ordered)]
            cuts += [len(ordered)] * (n + 1 - len(cuts))
            return [ordered[a:b] for a, b in pairwise(cuts)]
        keys = list(map(_first, pairs))
        if self.partition is default_partition:
            try:
                parts = list(map(n.__rmod__, map(zlib.crc32, map(str.encode, keys))))
            except UnicodeEncodeError:  # undecodable input kept as surrogates: hash its original bytes
                parts = [default_partition(key, n) for key in keys]
        else:
            of_key = {key: self.partition(key, n) for key in set(keys)}
            bad = next((p for p in of_key.values() if type(p) is not int or not 0 <= p < n), None)
            if bad is not None:
                key = next(k for k, p in of_key.items() if p == bad)
                raise ValueError(f"partition({key!r}, {n}) returned {bad!r}, not a number in [0, {n})")
            parts = list(map(of_key.__getitem__, keys))
        del keys
        if n <= 16:  # a pass over the pairs per partition, in C
            partitioned = [list(compress(pairs, map(p.__eq__, parts))) for p in range(n)]
        else:
            order = sorted(range(len(parts)), key=parts.__getitem__)
            ordered = list(map(pairs.__getitem__, order))
            cuts = [0, *accumulate(map(parts.count, range(n)))]
            partitioned = [ordered[a:b] for a, b in pairwise(cuts)]
        for part in partitioned:
            part.sort(key=_first)
        return partitioned

    def _write_memory(self, out: IO[bytes], offset: int = 0) -> tuple[Index, int]:
        """Write the buffered pairs partition by partition; return the index and the end offset.

        What can be done in the order the pairs were made is: their values' types are looked at, and
        they are freed, in that order, walking memory forwards; in key order each pair is somewhere else
        in memory (for mostly distinct keys, half of a map task's write was such walks)."""
        writer = GroupWriter(out, offset, self._source)
        index: Index = []
        scalars = set(map(type, map(_second, self.pairs))) <= SCALARS  # else looked at per round, for messages
        partitioned = self._partitioned()
        for p in range(len(partitioned)):
            pairs, partitioned[p] = partitioned[p], []
            start = writer.offset
            for first in range(0, len(pairs), _KEYS_PER_ROUND):
                some = pairs[first : first + _KEYS_PER_ROUND]
                keys = list(map(_first, some))
                values: list[Any] = list(map(_second, some))
                if not scalars and not set(map(type, values)) <= SCALARS:
                    check_values(self._source, keys, [[v] for v in values])
                if any(map(eq, keys, islice(keys, 1, None))):  # a key holds several values: group them
                    groups = [(key, list(map(_second, group))) for key, group in groupby(some, key=_first)]
                    keys, values = list(map(_first, groups)), list(map(_second, groups))
                    if self.sort_values:
                        for group in values:
                            if len(group) > 1:
                                group.sort(key=self.value_key)
                    writer.add_groups(keys, values)  # a key over two rounds: two entries, one after the other
                else:
                    writer.add_singles(keys, values)
            writer.flush()
            index.append([start, writer.offset - start])
            pairs = some = []  # this partition no longer held: freed with self.pairs, in their order
        self.pairs = []
        self.records_out = writer.values_written
        return index, writer.offset


def map_buffer(num_partitions: int, budget: int, **options: Any) -> MapBuffer:
    """The buffer of a map task: a ``PairBuffer`` without a combine, else a ``MapBuffer``."""
    cls = MapBuffer if options.get("combine") is not None else PairBuffer
    return cls(num_partitions, budget, **options)


def spill_dir() -> str | None:
    """Where map tasks spill (``CORRAL_SPILL_DIR``, else the system temporary folder)."""
    return os.environ.get("CORRAL_SPILL_DIR") or None
