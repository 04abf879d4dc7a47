"""The Job base class: what a user subclasses to write a MapReduce job."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

Pair = tuple[str, Any]


def listed(job_class: type, name: str, what: str) -> list[str]:
    """The job's class attribute ``name`` that must be a list (or tuple) of ``what`` (strings, or paths for
    ``files``), e.g. ``requirements``; a UsageError naming it otherwise: a string alone would be taken
    for a list of its characters."""
    from corral.errors import UsageError

    value = getattr(job_class, name, None)
    if value is None:
        return []
    if isinstance(value, str | bytes):
        raise UsageError(f"invalid value for {job_class.__qualname__}.{name}: {value!r} is a string, not a list of "
                         f"{what} (write {name} = [{value!r}])")
    if not isinstance(value, list | tuple) or not all(isinstance(v, str | os.PathLike) for v in value):
        raise UsageError(f"invalid value for {job_class.__qualname__}.{name}: {value!r} is not a list of {what}")
    return [os.fspath(v) for v in value]


@dataclass
class Step:
    """One stage of a job: a map, an optional combine and an optional reduce (map-only without it).

    The callables are usually bound methods of the job. ``sort_values`` makes values reach ``reduce``
    in sorted order (secondary sort), ordered by ``value_key`` when given. ``total_order`` makes the
    reduce partitions key ranges sampled from the map's keys (``corral.total_order``).
    """

    map: Callable[[Any, Any], Iterable[Pair]] | None = None
    map_batch: Callable[[list[Any]], Iterable[Pair]] | None = None
    combine: Callable[[str, Iterator[Any]], Iterable[Pair]] | None = None
    reduce: Callable[[str, Iterator[Any]], Iterable[Pair]] | None = None
    map_init: Callable[[], None] | None = None
    map_final: Callable[[], Iterable[Pair] | None] | None = None
    reduce_init: Callable[[], None] | None = None
    reduce_final: Callable[[], Iterable[Pair] | None] | None = None
    partition: Callable[[str, int], int] | None = None
    sort_values: bool = False
    value_key: Callable[[Any], Any] | None = None
    reducers: int | None = None
    total_order: bool = False

    def __post_init__(self) -> None:
        if self.map is None and self.map_batch is None:
            raise TypeError("a Step needs map or map_batch")


class Job:
    """Subclass and define ``map`` (and ``reduce``, ``combine`` as needed); each yields ``(key, value)``.

    Keys are ``str``; values are ``str``, ``int``, ``float``, ``bool``, ``None``, or lists and dicts of
    those. ``values`` given to ``combine`` and ``reduce`` is a lazy iterator. Override ``steps`` to
    chain several stages.
    """

    #: "lines": key None, value the line. "tsv": a line with exactly one tab is (key, value).
    #: "csv": key None, value the row's fields (a list of str; a CSV file is one split, as a quoted
    #: field may hold a newline). "jsonl": key None, value the line's JSON value.
    input_format: ClassVar[str] = "lines"
    #: csv input: the first row of each file names the columns, and each row comes as a dict.
    input_header: ClassVar[bool] = False
    #: "strict": undecodable UTF-8 input fails the task, naming file and byte offset.
    #: "replace": undecodable bytes become U+FFFD.  "surrogateescape": kept losslessly.
    input_errors: ClassVar[str] = "strict"
    #: values reach reduce sorted (by ``value_key`` if defined).
    sort_values: ClassVar[bool] = False
    #: the part files in key order, one after the other (part-00000 holds the smallest keys), and of
    #: about the same size however skewed the keys: the reducers' key ranges are sampled from what map
    #: yields for a sample of the input (Hadoop's TotalOrderPartitioner). Instead of ``partition``.
    total_order: ClassVar[bool] = False
    #: third-party requirements shipped with the job to remote backends ("pkg==1.0", ...).
    requirements: ClassVar[list[str]] = []
    #: the part files: "text" (key<TAB>value), "csv", "jsonl" ({"key": …, "value": …}) or "value"
    #: (the value alone). ``--output-format`` overrides it. Only the last stage's output has a format.
    output_format: ClassVar[str] = "text"
    #: "none", "gzip" (part-00000.csv.gz) or "zstd" (.zst). ``--output-compression`` overrides it.
    output_compression: ClassVar[str] = "none"
    #: csv output: a header row at the top of every part file; every row must have its length.
    output_header: ClassVar[list[str] | None] = None
    #: read-only side files shipped to every task (paths relative to the job's file), found in a task
    #: with ``self.file_path(name)``; ``--file PATH`` adds more.
    files: ClassVar[list[str]] = []

    def __init__(self, args: dict[str, str] | None = None) -> None:
        #: ``--arg KEY=VALUE`` settings of the run (strings), the same in every task.
        self.args: dict[str, str] = dict(args or {})
        self._counters: Counter[tuple[str, str]] = Counter()
        #: side file name -> local path, set by the worker for a task (see ``file_path``).
        self._side_files: dict[str, str] | None = None

    # --- the user's methods (defaults) ---------------------------------------------------------
    def map(self, key: Any, value: Any) -> Iterable[Pair]:
        """Turn one input record into ``(key, value)`` pairs. The default passes records through."""
        yield key, value

    def map_batch(self, batch: list[Any]) -> Iterable[Pair]:  # pragma: no cover
        """Optional, used instead of ``map`` when defined: called once per chunk of input (about 4 MB)
        with a list of records: for line input the lines (``str``, without newlines), for ``tsv``
        input and later stages ``(key, value)`` tuples. Yields ``(key, value)`` pairs like ``map``;
        it lets a job work on a whole chunk at once (``Counter.update(" ".join(batch).split())``)
        instead of paying a call per record."""
        raise NotImplementedError

    def combine(self, key: str, values: Iterator[Any]) -> Iterable[Pair]:  # pragma: no cover
        raise NotImplementedError

    def reduce(self, key: str, values: Iterator[Any]) -> Iterable[Pair]:  # pragma: no cover
        raise NotImplementedError

    def partition(self, key: str, num_partitions: int) -> int:  # pragma: no cover
        raise NotImplementedError

    def value_key(self, value: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    def map_init(self) -> None: ...
    def map_final(self) -> Iterable[Pair] | None: ...
    def reduce_init(self) -> None: ...
    def reduce_final(self) -> Iterable[Pair] | None: ...

    # --- structure ------------------------------------------------------------------------------
    def _own(self, name: str) -> Callable | None:
        """The bound method ``name`` if this job's class defines it (not the base class default)."""
        if getattr(type(self), name) is getattr(Job, name):
            return None
        return getattr(self, name)

    def steps(self) -> list[Step]:
        """The stages of this job. By default one stage made of this class's own methods."""
        return [
            Step(
                map=self.map,
                map_batch=self._own("map_batch"),
                combine=self._own("combine"),
                reduce=self._own("reduce"),
                map_init=self._own("map_init"),
                map_final=self._own("map_final"),
                reduce_init=self._own("reduce_init"),
                reduce_final=self._own("reduce_final"),
                partition=self._own("partition"),
                sort_values=self.sort_values,
                value_key=self._own("value_key"),
                total_order=self.total_order,
            )
        ]

    # --- counters -------------------------------------------------------------------------------
    def increment_counter(self, group: str, name: str, amount: int = 1) -> None:
        """Add ``amount`` to a counter; totals over committed task attempts are reported at the end."""
        self._counters[(group, name)] += amount

    # --- side files ---------------------------------------------------------------------------
    def file_path(self, name: str) -> str:
        """The local path of the side file ``name`` (its file name, or its path as listed in ``files``
        or ``--file``), wherever the task runs: the file itself on local backends, a copy shipped in
        the package or downloaded once per container on remote ones. Read-only: open it in
        ``map_init`` and keep what it holds for the task."""
        from corral.sidefiles import find_side_file

        return find_side_file(self, name)

    # --- running --------------------------------------------------------------------------------
    @classmethod
    def main(cls, argv: list[str] | None = None) -> None:
        """Run this job from the command line: ``python myjob.py INPUT... --out OUT [options]``."""
        from corral.cli import run_job_main

        sys.exit(run_job_main(cls, argv))
