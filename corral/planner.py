"""Planning: inputs -> splits -> map tasks -> number of reduce partitions.

Map tasks are balanced by size: the input, taken as one stream of bytes in listing order, is cut into
tasks of the same size (a file that can be entered anywhere, plain text, is cut at the boundary;
a compressed file, a csv file or a previous stage's records go whole to the task holding their
middle). Then each task's share of a file is cut into splits of at most the split size. Tasks stay
in input order, so a map-only job's part files follow its input.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from itertools import accumulate, pairwise, repeat
from operator import methodcaller

from corral.errors import CorralError, UsageError
from corral.fs import COMPRESSED_ENDINGS, FileInfo, compression_of, display, file_size, file_url, get_filesystem
from corral.split import Split

#: A file is not cut at a task boundary into a piece smaller than this (each piece is a read, a
#: request on an object store): the boundary moves to the file's start or end instead.
MIN_PIECE = 64 << 10
#: A local map task reads up to this many times its memory budget of input (``task_sizes``): 1 GB at
#: the default 256 MB, where a word count's write of its buffer (~2.4 CPU-s) is 1/30 of the task.
LOCAL_INPUT_PER_BUDGET = 4
#: How many task counts above the first one a plan with a user's --map-bin-size tries before it packs
#: tasks first-fit (which keeps every task within the size, but not balanced).
_BALANCE_TRIES = 3


def list_inputs(urls: Sequence[str]) -> list[FileInfo]:
    """Every input file named by ``urls`` (files, folders recursively, globs), in a stable order."""
    files: list[FileInfo] = []
    seen: set[str] = set()
    for url in urls:
        try:
            found = get_filesystem(url).expand(url)
        except FileNotFoundError:
            raise UsageError(f"input not found: {display(url)}") from None
        except PermissionError:
            raise UsageError(f"input not readable: {display(url)}") from None
        except Exception as exc:  # the store's own (no credentials, unreachable): one line naming the input
            raise CorralError(f"cannot list input {display(url)}: {type(exc).__name__}: {exc}") from None
        for info in found:
            if info.url not in seen:
                seen.add(info.url)
                files.append(info)
    return files


def _kind_is_cut(kind: str, whole_files: bool) -> bool:
    """Whether files of this kind are cut into splits: text that is not read whole (compressed text is
    never cut, see ``_cuttable``)."""
    return kind == "text" and not whole_files


def _cuttable(url: str, kind: str, whole_files: bool) -> bool:
    """Whether a file can be entered at any byte: plain text that is not read whole."""
    return _kind_is_cut(kind, whole_files) and compression_of(url) is None


def _cut(url: str, start: int, end: int, split_size: int, kind: str) -> list[Split]:
    """``[start, end)`` of a file in splits of ``split_size`` bytes (the last one shorter)."""
    return [Split(url, s, min(s + split_size, end), kind) for s in range(start, end, split_size)]


def make_splits(
    files: Sequence[FileInfo], split_size: int, kind: str = "text", whole_files: bool = False
) -> list[Split]:
    """Cut files into byte ranges of ``split_size``; a compressed file is one split, and so is every file
    with ``whole_files`` (csv input, whose quoted fields may hold newlines); empty files none."""
    splits: list[Split] = []
    for info in files:
        if info.size == 0:
            continue
        if _cuttable(info.url, kind, whole_files):
            splits += _cut(info.url, 0, info.size, split_size, kind)
        else:
            splits.append(Split(info.url, 0, info.size, kind))
    return splits


def count_splits(files: Sequence[FileInfo], split_size: int, kind: str = "text", whole_files: bool = False) -> int:
    """How many splits ``make_splits`` would cut (counted, not made: a tiny ``--split-size`` could make
    millions)."""
    if not _kind_is_cut(kind, whole_files):
        return sum(1 for info in files if info.size)
    return sum(
        -(-info.size // split_size) if compression_of(info.url) is None else 1 for info in files if info.size
    )


def plan_map_tasks(
    files: Sequence[FileInfo],
    split_size: int,
    bin_size: int,
    workers: int,
    kind: str = "text",
    whole_files: bool = False,
    fixed_bin_size: bool = False,
) -> list[list[Split]]:
    """The splits of each map task, tasks of about the same size and ``ceil(total / bin_size)`` of them.

    The planner's own choice (``fixed_bin_size`` False: the user did not set ``--map-bin-size``), when
    more than one task, is rounded up to a multiple of ``workers``, so that the last wave keeps every
    worker busy, whenever the input can be cut into that many tasks. With ``fixed_bin_size`` no task
    exceeds ``bin_size`` (unless one file that cannot be cut does alone).

    Tasks differ in size by at most about the largest file that cannot be cut (compressed, csv) or
    ``MIN_PIECE``, whichever is larger.
    """
    # the files' names and sizes taken out in C loops (20,000 small logs: no tuple made per file)
    urls, sizes = list(map(file_url, files)), list(map(file_size, files))
    if not all(sizes):  # an empty file has no split
        urls = [url for url, size in zip(urls, sizes, strict=True) if size]
        sizes = [size for size in sizes if size]
    if not urls:
        return []
    total = sum(sizes)
    min_piece = max(1, min(MIN_PIECE, split_size))
    # _cuttable, without a call per file: whether any file is plain text to cut (not compressed)
    kind_is_cut = _kind_is_cut(kind, whole_files)
    any_cut = kind_is_cut and not all(map(methodcaller("endswith", COMPRESSED_ENDINGS), urls))
    sized = [(url, size, kind_is_cut and not url.endswith(COMPRESSED_ENDINGS))
             for url, size in zip(urls, sizes, strict=True)] if any_cut or fixed_bin_size else []
    # the most tasks the input can make: a piece of min_piece per cuttable file's share, a file each else
    most = sum(max(1, size // min_piece) if cuttable else 1 for _, size, cuttable in sized) if any_cut else len(urls)
    count = max(1, math.ceil(total / bin_size))
    if not fixed_bin_size and count > 1:  # one task is the planner's choice for inputs under 1 MiB a worker
        count = min(-(-count // workers) * workers, most)
        if count >= workers:
            count -= count % workers
    count = min(count, most)
    if not any_cut and not fixed_bin_size:  # whole files only (20,000 small logs): their splits at once
        return [list(map(Split._make, zip(urls[a:b], repeat(0), sizes[a:b], repeat(kind))))
                for a, b in _whole_file_tasks(sizes, total, count)]
    for extra in range(_BALANCE_TRIES + 1 if fixed_bin_size else 1):
        pieces = _balanced(sized, min(most, count + extra), min_piece)
        if not fixed_bin_size or all(_fits(task, bin_size) for task in pieces):
            break
    else:  # cannot cut files: pack them first-fit, in order, within the user's size
        pieces = _first_fit(sized, bin_size)
    planned = []
    for task in pieces:
        splits: list[Split] = []
        add = splits.append
        for url, start, end, cuttable in task:
            if cuttable and end - start > split_size:
                splits += _cut(url, start, end, split_size, kind)
            else:  # one split (a small file's piece: 100,000 files make no list each)
                add(Split(url, start, end, kind))
        planned.append(splits)
    return planned


Piece = tuple[str, int, int, bool]  # url, start, end, cuttable


def _fits(task: list[Piece], bin_size: int) -> bool:
    return len(task) == 1 or sum(end - start for _, start, end, _ in task) <= bin_size


def _balanced(sized: list[tuple[str, int, bool]], count: int, min_piece: int) -> list[list[Piece]]:
    """Cut the stream of files into ``count`` tasks of the same size: boundaries at ``k * total / count``,
    a cuttable file cut there (not into a piece under ``min_piece``: the boundary moves to the file's
    edge), a file that cannot be cut given to the task its middle falls in. Empty tasks are left out."""
    total = sum(size for _, size, _ in sized)
    if not any(cuttable for _, _, cuttable in sized):
        ranges = _whole_file_tasks([size for _, size, _ in sized], total, count)
        return [[(url, 0, size, False) for url, size, _ in sized[a:b]] for a, b in ranges]
    bounds = [total * k // count for k in range(1, count)]
    tasks: list[list[Piece]] = [[]]
    k = 0  # the next boundary
    position = 0  # where the file starts in the stream
    for url, size, cuttable in sized:
        if not cuttable:
            middle = position + size / 2
            while k < len(bounds) and bounds[k] <= middle:
                tasks.append([])
                k += 1
            tasks[-1].append((url, 0, size, False))
            position += size
            continue
        start = 0
        while k < len(bounds) and bounds[k] < position + size:
            cut = max(start, bounds[k] - position)
            if cut - start < min_piece:
                cut = start
            elif size - cut < min_piece:
                cut = size
            if cut > start:
                tasks[-1].append((url, start, cut, True))
                start = cut
            tasks.append([])
            k += 1
        if start < size:
            tasks[-1].append((url, start, size, True))
        position += size
    return [task for task in tasks if task]


def _whole_file_tasks(sizes: list[int], total: int, count: int) -> list[tuple[int, int]]:
    """``_balanced``'s tasks of files none of which can be cut, as ``[start, end)`` ranges of the files
    (their ``sizes``, none 0): a task starts at the first file whose middle is at or past its boundary
    ``k * total // count``. That file ends at or past the boundary: it is the first such (found by
    bisecting the running totals, no loop over 20,000 small logs in Python), or the one after it,
    which starts there."""
    ends = list(accumulate(sizes))
    starts = [0]
    for k in range(1, count):
        boundary = total * k // count
        first = bisect_left(ends, boundary)
        starts.append(first if 2 * ends[first] - sizes[first] >= 2 * boundary else first + 1)
    starts.append(len(sizes))
    return [(a, b) for a, b in pairwise(starts) if b > a]


def _first_fit(sized: list[tuple[str, int, bool]], bin_size: int) -> list[list[Piece]]:
    """Whole files packed in order into tasks of at most ``bin_size`` bytes (a bigger one alone)."""
    tasks: list[list[Piece]] = []
    current: list[Piece] = []
    filled = 0
    for url, size, cuttable in sized:
        if current and filled + size > bin_size:
            tasks.append(current)
            current, filled = [], 0
        current.append((url, 0, size, cuttable))
        filled += size
    if current:
        tasks.append(current)
    return tasks


def task_sizes(
    total: int, split_size: int, bin_size: int, explicit: AbstractSet[str], concurrency: int,
    local_budget: int | None = None,
) -> tuple[int, int]:
    """The split and map bin sizes to use: the user's where they set them, else small enough that
    every worker gets a task (``total / concurrency``), but never below 1 MiB per split.

    ``local_budget``: the tasks run on this machine's cores and read local files, with this memory
    budget each. Then a map task takes up to ``LOCAL_INPUT_PER_BUDGET`` times its budget of input (up
    to ``total / concurrency``) rather than the bin size: every task builds, sorts, combines and writes
    a buffer of its own, of up to its budget, whose distinct keys cost the same in a small task as in a
    big one (a word count: each 64 MB of text has most of the vocabulary), and a reducer merges one run
    per map task. The cap bounds what a crash loses, the tasks running then, at about 1 GB each (1.5 min
    of a word count here; ``--resume`` reruns them). A remote backend keeps the bin size: its many workers want many
    tasks, each within its function's memory and time."""
    target = math.ceil(total / concurrency) if total > 0 else split_size
    if "split_size" not in explicit:
        split_size = max(1 << 20, min(split_size, target))
    if "map_bin_size" not in explicit:
        if local_budget is not None:
            bin_size = max(bin_size, LOCAL_INPUT_PER_BUDGET * local_budget)
        bin_size = max(split_size, min(bin_size, target))
    return split_size, bin_size


def choose_reducers(
    total: int, map_tasks: int, reducers: int | None, reduce_bin_size: int, explicit_bin: bool, concurrency: int
) -> int:
    """``--reducers`` if given; else one per ``--reduce-bin-size`` of input (at least one per worker
    while there are as many map tasks, unless the bin size was set explicitly)."""
    if reducers:
        return reducers
    count = max(1, math.ceil(total / reduce_bin_size))
    if not explicit_bin:
        count = max(count, min(concurrency, map_tasks))
    return count
