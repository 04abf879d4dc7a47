"""Map's hot loop over a batch of yielded pairs: in C where ``corral._speedups`` was built, else in Python.

The C module is optional (built from ``corral/_speedups.c`` when a compiler is there; deployment packages
carry only Python, so a remote function uses the fallback). Both do the same: the tests run each on the
same batches. ``CORRAL_SPEEDUPS=0`` turns the C module off, to compare.
"""

from __future__ import annotations

import os
from collections import _count_elements  # type: ignore[attr-defined]
from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import Any

_first = itemgetter(0)
_second = itemgetter(1)
_pair_length = tuple.__len__  # a TypeError for anything but a tuple: shape and type in one pass


def py_are_pairs(batch: list[Any]) -> bool:
    """Whether every item of ``batch`` is a tuple of two (a namedtuple too)."""
    try:
        return set(map(_pair_length, batch)) <= {2}
    except TypeError:
        return False


def py_count_constant(counts: dict[Any, int], batch: list[Any], value: Any) -> bool:
    """When every item of ``batch`` is a ``(key, value)`` tuple whose value is ``value`` (of the same type
    and equal), add one to ``counts[key]`` for each and return True; else return False with ``counts``
    untouched. A key that cannot be hashed raises TypeError, with the keys before it counted."""
    if not py_are_pairs(batch):
        return False
    values = list(map(_second, batch))
    # the types first: an equality that raises (a numpy array's) is never asked
    if not set(map(type, values)) <= {type(value)} or values.count(value) != len(values):
        return False
    _count_elements(counts, map(_first, batch))
    return True


are_pairs: Callable[[list[Any]], bool] = py_are_pairs
count_constant: Callable[[dict[Any, int], list[Any], Any], bool] = py_count_constant
#: Counts pairs straight from an iterator (C only; without it the batches above do the same).
count_from: Callable[[dict[Any, int], Iterator[Any], Any], tuple[Any] | None] | None = None
#: The files below a local folder, walked without the GIL (C only; corral.filesystems.local lists them in
#: Python without it): ``(device, inode, [(relative path, size, mtime_ns)])``.
scan_tree: Callable[[str], tuple[int, int, list[tuple[str, int, int]]]] | None = None
#: ``scan_tree``'s files as FileInfo objects, ``(prefix, scanned, FileInfo)`` (C only).
file_infos: Callable[[str, list[tuple[str, int, int]], type[Any]], list[Any]] | None = None
#: The names of a folder's symbolic links, from the types readdir gives (C only).
symbolic_links: Callable[[str], list[str]] | None = None
#: ``prctl(PR_SET_PDEATHSIG, signal)``: this process gets ``signal`` when its parent ends (C, Linux only).
die_with_parent: Callable[[int], None] | None = None
#: "C" when the compiled module is used, "Python" when not.
IMPLEMENTATION = "Python"

if os.environ.get("CORRAL_SPEEDUPS", "1") != "0":
    try:
        from corral import _speedups
    except ImportError:  # not built here: the Python functions above
        pass
    else:
        are_pairs = _speedups.are_pairs
        count_constant = _speedups.count_constant
        count_from = _speedups.count_from
        scan_tree = getattr(_speedups, "scan_tree", None)  # not on Windows
        file_infos = _speedups.file_infos
        symbolic_links = getattr(_speedups, "symbolic_links", None)
        die_with_parent = getattr(_speedups, "die_with_parent", None)  # Linux only
        IMPLEMENTATION = "C"
