"""Planning: inputs -> splits -> map bins -> number of reduce partitions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from corral.errors import UsageError
from corral.fs import FileInfo, compression_of, display, get_filesystem
from corral.split import Split


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
        for info in found:
            if info.url not in seen:
                seen.add(info.url)
                files.append(info)
    return files


def make_splits(
    files: Sequence[FileInfo], split_size: int, kind: str = "text", whole_files: bool = False
) -> list[Split]:
    """Cut files into byte ranges of ``split_size``; a compressed file is one split, and so is every file
    with ``whole_files`` (csv input, whose quoted fields may hold newlines); empty files none."""
    splits = []
    for info in files:
        if info.size == 0:
            continue
        if kind != "text" or whole_files or compression_of(info.url):
            splits.append(Split(info.url, 0, info.size, kind))
            continue
        for start in range(0, info.size, split_size):
            splits.append(Split(info.url, start, min(start + split_size, info.size), kind))
    return splits


def pack_bins(splits: Sequence[Split], bin_size: int) -> list[list[Split]]:
    """Pack splits, in order, into map bins of at most ``bin_size`` bytes (a bigger split is alone)."""
    bins: list[list[Split]] = []
    current: list[Split] = []
    filled = 0
    for split in splits:
        size = split.end - split.start
        if current and filled + size > bin_size:
            bins.append(current)
            current, filled = [], 0
        current.append(split)
        filled += size
    if current:
        bins.append(current)
    return bins


def task_sizes(
    total: int, split_size: int, bin_size: int, explicit: AbstractSet[str], concurrency: int
) -> tuple[int, int]:
    """The split and map bin sizes to use: the user's where they set them, else small enough that
    every worker gets a task (``total / concurrency``), but never below 1 MiB per split."""
    target = math.ceil(total / concurrency) if total > 0 else split_size
    if "split_size" not in explicit:
        split_size = max(1 << 20, min(split_size, target))
    if "map_bin_size" not in explicit:
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

