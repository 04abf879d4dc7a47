"""Total order: reduce partitions that are key ranges, sampled from the map's keys (Hadoop's
TotalOrderPartitioner with its InputSampler).

A job opts in with ``total_order = True`` (or ``Step(total_order=True)`` for one stage). Before the
stage's map wave the driver reads ``SAMPLE_WINDOWS`` small windows of the stage's input, spread evenly
over it, runs the stage's map over their records (``corral.tasks.sample_keys``), sorts the keys and
takes R-1 of them at even quantiles as the lower bounds of partitions 1..R-1 (``range_bounds``). The
bounds go into every map task's spec (and the journal, so a resumed run partitions as the first did);
a map task sends each key to the range it falls in (``RangePartition``). So ``part-00000``,
``part-00001``, … concatenated are in key order, and since the bounds follow the keys' distribution,
the reducers get about the same share of the data however skewed the keys are (one key's values
cannot be split: a key holding more than a reducer's share makes its reducer bigger).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from corral.split import Split

#: Windows of input read for the sample, spread evenly over the input.
SAMPLE_WINDOWS = 100
#: Bytes of each window (lines starting in it are read whole).
WINDOW_BYTES = 16 << 10
#: Keys kept of each window (the first ones): at most SAMPLE_WINDOWS * this in the sample.
KEYS_PER_WINDOW = 200


class RangePartition:
    """``partition(key, n)`` for sorted ``bounds``: the number of bounds at or below ``key``. Map buffers
    that see one sort all their keys and cut the sorted list at the bounds instead of calling it."""

    def __init__(self, bounds: Sequence[str]) -> None:
        self.bounds = list(bounds)

    def __call__(self, key: str, num_partitions: int) -> int:
        return min(bisect_right(self.bounds, key), num_partitions - 1)


def sample_windows(
    tasks: Sequence[Sequence[Split]], windows: int = SAMPLE_WINDOWS, size: int = WINDOW_BYTES
) -> list[Split]:
    """Splits of ``size`` bytes (less for a small input: then the windows cover it) at ``windows``
    positions spread evenly over the splits of ``tasks``, taken as one stream of bytes. A text split is
    entered at the position; a split that cannot be entered (a compressed file, csv, a previous stage's
    records) is read from its start, once."""
    splits = [s for task in tasks for s in task]
    total = sum(s.end - s.start for s in splits)
    size = max(1, min(size, total // windows))
    starts = [max(0, int((k + 0.5) * total / windows - size / 2)) for k in range(windows)]  # centred windows
    chosen: list[Split] = []
    position = 0  # where the current split starts in the stream
    k = 0
    for split in splits:
        length = split.end - split.start
        taken = False
        while k < windows and starts[k] < position + length:
            if _enterable(split):
                start = split.start + max(0, starts[k] - position)
                chosen.append(Split(split.url, start, min(start + size, split.end), split.kind))
            elif not taken:
                chosen.append(split)
                taken = True
            k += 1
        position += length
    return chosen


def _enterable(split: Split) -> bool:
    return split.kind == "text" and not split.compressed


def range_bounds(keys: list[str], partitions: int) -> list[str]:
    """The lower bounds of partitions 1..``partitions``-1: sampled keys at even quantiles (sorted,
    distinct; fewer when the sample has fewer distinct keys, leaving the last partitions empty)."""
    if partitions <= 1 or not keys:
        return []
    keys = sorted(keys)
    bounds: list[str] = []
    for p in range(1, partitions):
        key = keys[min(len(keys) - 1, p * len(keys) // partitions)]
        if not bounds or key > bounds[-1]:
            bounds.append(key)
    if bounds and bounds[0] == keys[0]:  # nothing of the sample below the first bound: partition 0 empty
        bounds.pop(0)
    return bounds
