"""Task specs (typed, JSON on the wire) and their execution on a FileSystem.

The driver builds a ``MapSpec`` or ``ReduceSpec`` per attempt, journals what it committed, and sends
``spec.to_json()`` to the executor (executors see plain JSON-able dicts); the worker turns the dict
back into a spec with ``spec_from_json``. The wire format is flat: ``{"kind": "map", "job", "args",
"stage", "task", "attempt", "memory_budget", "files", "output", "output_kind", "splits",
"partitions", "input_format", "input_errors", "input_header"}`` (each split ``(url, start, end)``, or
``(url, start, end, kind)`` when not "text", lists in JSON; a ``Split.to_json`` dict is read too) and
``{"kind": "reduce", …, "partition", "sources": [[url, offset, length], …]}``. ``output_kind`` is
``"shuffle"`` (one indexed object for the reducers), ``"text"`` (the final part files, written as
``"output_spec"`` says: see ``corral.output.OutputSpec``) or ``"records"`` (a stage feeding the next
stage). A final task's result lists its part files (``"parts"``), which the driver commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import chain, count, islice, repeat, starmap
from operator import itemgetter
from typing import Any, ClassVar

from corral import cancellation
from corral.eager import eager_map, eager_pairs
from corral.errors import InputError
from corral.failure_context import Reading, map_input, reduce_input
from corral.fs import FileSystem, get_filesystem, writing
from corral.job import Job, Step
from corral.output import OutputSpec, PartWriter, RecordFile, iter_records
from corral.pairs import shuffle_batches
from corral.shuffle import (
    iter_group_batches,
    limit_fan_in,
    map_buffer,
    merge_batch_groups,
    merge_factor,
    range_blocks,
    spill_dir,
)
from corral.split import Split, iter_text_records, read_ahead, splits_to_wire
from corral.total_order import KEYS_PER_WINDOW, RangePartition

_first = itemgetter(0)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What every attempt of a task needs: which job and stage, the attempt, where its output goes."""

    job: dict[str, Any]  # corral.worker.job_ref(...)
    stage: int
    task: str  # "map-0003", "reduce-0001"
    attempt: int
    output: str  # this attempt's own output URL: attempts never share a name
    output_kind: str
    args: dict[str, str] = field(default_factory=dict)
    memory_budget: int = 256 << 20
    files: tuple[dict[str, Any], ...] = ()  # the job's side files (see corral.sidefiles)
    output_spec: dict[str, Any] | None = None  # how a final task writes its part files (corral.output)

    kind: ClassVar[str] = ""

    def for_attempt(self, attempt: int, output: str) -> TaskSpec:
        """The same task as another attempt, writing to ``output``."""
        return replace(self, attempt=attempt, output=output)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "job": self.job, "args": self.args, "stage": self.stage, "task": self.task,
            "attempt": self.attempt, "memory_budget": self.memory_budget, "files": list(self.files),
            "output": self.output, "output_kind": self.output_kind,
            **({"output_spec": self.output_spec} if self.output_spec is not None else {}),
        }


@dataclass(frozen=True, slots=True)
class MapSpec(TaskSpec):
    splits: tuple[Split, ...] = ()
    partitions: int = 0  # reduce partitions of a "shuffle" output; 0 for map-only stages
    input_format: str = "lines"
    input_errors: str = "strict"
    input_header: bool = False  # csv input: the first row names the columns
    bounds: tuple[str, ...] = ()  # total order: the lowest key of partitions 1, 2, … (corral.total_order)

    kind: ClassVar[str] = "map"

    def to_json(self) -> dict[str, Any]:
        return {
            **TaskSpec.to_json(self), "splits": splits_to_wire(self.splits), "partitions": self.partitions,
            "input_format": self.input_format, "input_errors": self.input_errors,
            "input_header": self.input_header, **({"bounds": list(self.bounds)} if self.bounds else {}),
        }


@dataclass(frozen=True, slots=True)
class ReduceSpec(TaskSpec):
    partition: int = 0
    sources: tuple[tuple[str, int, int], ...] = ()  # (map output URL, offset, length) of the partition

    kind: ClassVar[str] = "reduce"

    def to_json(self) -> dict[str, Any]:
        return {**TaskSpec.to_json(self), "partition": self.partition, "sources": [list(s) for s in self.sources]}


def spec_from_json(data: dict[str, Any]) -> MapSpec | ReduceSpec:
    """A spec from its wire form (unknown keys, e.g. a backend's own, are ignored)."""
    common = {
        "job": data["job"], "stage": data["stage"], "task": data["task"], "attempt": data["attempt"],
        "output": data["output"], "output_kind": data["output_kind"], "args": data.get("args") or {},
        "memory_budget": int(data.get("memory_budget") or 256 << 20), "files": tuple(data.get("files") or ()),
        "output_spec": data.get("output_spec"),
    }
    if data["kind"] == "map":
        splits = data["splits"]
        return MapSpec(
            # the payload's compact tuples (lists, through JSON) made splits in one C loop (10,000 a task)
            **common, splits=tuple(starmap(Split, splits)) if splits and type(splits[0]) in (tuple, list)
            else tuple(Split.from_json(s) for s in splits),
            partitions=data.get("partitions", 0), input_format=data.get("input_format", "lines"),
            input_errors=data.get("input_errors", "strict"), input_header=bool(data.get("input_header")),
            bounds=tuple(data.get("bounds") or ()),
        )
    if data["kind"] == "reduce":
        return ReduceSpec(
            **common, partition=data["partition"], sources=tuple((u, o, n) for u, o, n in data["sources"]),
        )
    raise ValueError(f"unknown task kind {data['kind']!r}")


def _input_batches(
    splits: Iterable[Split], input_format: str, input_errors: str, input_header: bool, reading: Reading
) -> Iterator[tuple[bool, list]]:
    """``(keyed, batch)`` for a task's splits: batches of records (keyed False) or (key, value) pairs
    (True), small splits read ahead where the store serves requests at once (``read_ahead``).
    A cancelled attempt stops here, between batches (``corral.cancellation``). ``reading`` follows
    the split and batch being mapped, for the message of a failure."""
    known: dict[str, FileSystem] = {}
    keyed = input_format == "tsv"
    for split, fs, data in read_ahead(splits, partial(_filesystem, known=known)):
        if split.kind == "records":
            with fs.open(split.url, "rb") as stream:
                for batch in iter_records(stream):
                    cancellation.check()
                    reading.next_batch(split, batch, True)
                    yield True, batch
            continue
        for batch in iter_text_records(fs, split, input_format, input_errors, input_header, data):
            cancellation.check()
            reading.next_batch(split, batch, keyed)
            yield keyed, batch


def _filesystem(url: str, known: dict[str, FileSystem]) -> FileSystem:
    """``get_filesystem(url)``, asked once per protocol and bucket in a task (``known``: what the task
    asked so far): the hook and fsspec's parsing of the URL cost more than reading a small file."""
    scheme = url.find("://")
    place = url[: url.find("/", scheme + 3)] if scheme >= 0 else ""
    fs = known.get(place)
    if fs is None:
        fs = known[place] = get_filesystem(url)
    return fs


def _writer(spec: TaskSpec, source: str, fs: FileSystem) -> PartWriter | RecordFile:
    """The writer of a task's output (on ``fs``): part files (the last stage) or records (for the next
    stage). As a context manager it closes the output, or on an error closes what is open (the driver
    discards it)."""
    url = spec.output
    if spec.output_kind == "text":
        return PartWriter(url, OutputSpec.from_json(spec.output_spec), source, fs)
    return RecordFile(url, source, fs)


def _written(spec: TaskSpec, writer: Any, **result: Any) -> dict[str, Any]:
    """A task's result: its output (the part files of a final task) and its size."""
    result.update(output=spec.output, bytes_out=writer.bytes_out, records_out=writer.records_out)
    if spec.output_kind == "text":
        result["parts"] = writer.parts
    return result


def _map_calls(step: Step, eager: Callable[..., Any] | None, keyed: bool, batch: list) -> Iterable[Iterable[Any]]:
    """What the job's map yields for a batch of input records: iterables of pairs (one per call, or
    per RECORDS_PER_LIST records of an ``eager`` map: see ``corral.eager``)."""
    if step.map_batch is not None:
        return (step.map_batch(batch),)
    if eager is not None:
        return eager_pairs(eager, batch, keyed)
    assert step.map is not None  # a Step has map or map_batch
    return starmap(step.map, batch) if keyed else map(step.map, repeat(None), batch)


def blame(exc: BaseException, found: dict[str, Any] | None) -> None:
    """Attach what the task was reading to ``exc`` (``run_task`` reports it as the error's ``input``)."""
    if found is None or isinstance(exc, InputError | cancellation.TaskCancelled) or hasattr(exc, "corral_input"):
        return  # an input error's message names the place already
    try:
        exc.corral_input = found  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # an exception class with __slots__
        pass


def execute_map(spec: MapSpec, job: Job, step: Step) -> dict[str, Any]:
    """Run one map task; return its result (output URL, index, record counts). A failure names the
    split and, when it can be found, the record that ``map`` failed on (``corral.failure_context``)."""
    reading = Reading()
    eager = eager_map(step.map) if step.map is not None and step.map_batch is None else None
    try:
        return _execute_map(spec, step, eager, reading)
    except Exception as exc:
        blame(exc, map_input(reading, (eager or step.map) if step.map_batch is None else None, spec.input_format, exc))
        raise


def _execute_map(spec: MapSpec, step: Step, eager: Callable[..., Any] | None, reading: Reading) -> dict[str, Any]:
    output_kind = spec.output_kind
    input_format = spec.input_format
    input_errors = spec.input_errors
    input_header = spec.input_header
    source = "map" if step.map_batch is None else "map_batch"  # the method whose pairs these are, for messages
    records_in = 0
    out_fs = get_filesystem(spec.output)
    if step.map_init:
        step.map_init()
    if output_kind == "shuffle":
        buffer = map_buffer(
            spec.partitions,
            spec.memory_budget,
            partition=RangePartition(spec.bounds) if spec.bounds else step.partition,
            combine=step.combine,
            sort_values=step.sort_values,
            value_key=step.value_key,
            spill_dir=spill_dir(),
        )
        try:
            for keyed, batch in _input_batches(spec.splits, input_format, input_errors, input_header, reading):
                records_in += len(batch)
                pairs = chain.from_iterable(_map_calls(step, eager, keyed, batch))
                buffer.add_pairs(source, pairs)  # the hot loop
                buffer.check(records_in)
            reading.done()
            if step.map_final:
                buffer.add_final(chain.from_iterable(shuffle_batches("map_final", step.map_final() or ())))
            with writing(spec.output), out_fs.open(spec.output, "wb") as out:
                index = buffer.write(out)
        finally:
            buffer.close()
        return {"output": spec.output, "index": index, "records_in": records_in, "records_out": buffer.records_out}

    with _writer(spec, source, out_fs) as writer:
        for keyed, batch in _input_batches(spec.splits, input_format, input_errors, input_header, reading):
            records_in += len(batch)
            writer.add_all(chain.from_iterable(_map_calls(step, eager, keyed, batch)))
        reading.done()
        if step.map_final:
            writer.flush()
            writer.source = "map_final"
            writer.add_all(step.map_final() or ())
    return _written(spec, writer, records_in=records_in)


def sample_keys(
    step: Step, windows: Iterable[Split], input_format: str, input_errors: str, input_header: bool,
    per_window: int = KEYS_PER_WINDOW,
) -> list[str]:
    """The keys the stage's map yields for the records of each window (the first ``per_window`` of
    them), for the bounds of a total order (``corral.total_order``). Runs map_init, map or map_batch,
    and map_final as a map task would; map_final's keys (those of every window: in-mapper combining)
    are thinned to ``per_window`` a window, evenly."""
    if step.map_init:
        step.map_init()
    keys: list[str] = []
    windows = list(windows)
    reading = Reading()
    for window in windows:
        taken = 0
        for keyed, batch in _input_batches((window,), input_format, input_errors, input_header, reading):
            for pairs in _map_calls(step, None, keyed, batch):
                for key, _ in islice(pairs, per_window - taken):
                    if type(key) is str:
                        keys.append(key)
                    taken += 1
                if taken >= per_window:
                    break
            if taken >= per_window:
                break
    if step.map_final:
        final = [key for key, _ in step.map_final() or () if type(key) is str]
        keys += final[:: max(1, len(final) // max(1, per_window * len(windows)))]
    return keys


def execute_reduce(spec: ReduceSpec, job: Job, step: Step) -> dict[str, Any]:
    """Run one reduce task: merge its partition of every committed map output, stream the output."""
    assert step.reduce is not None
    sources_spec = [s for s in spec.sources if s[2] > 0]
    factor = merge_factor(spec.memory_budget)
    share = spec.memory_budget // (16 * (min(len(sources_spec), factor) or 1))
    sources = []
    for url, offset, length in sources_spec:
        read = partial(get_filesystem(url).read_range, url)
        block = _read_block(share, local="://" not in url or url.startswith("file://"))
        sources.append(iter_group_batches(range_blocks(read, offset, length, block)))
    sources, merged_files = limit_fan_in(
        sources, factor, value_key=step.value_key, sort_values=step.sort_values, spill_dir=spill_dir(),
        block=_read_block(share, local=True),
    )
    try:
        return _reduce(spec, step, sources)
    except Exception as exc:
        blame(exc, reduce_input(step.reduce, exc))  # the key reduce failed on
        raise
    finally:
        for f in merged_files:
            f.close()


def _read_block(share: int, local: bool) -> int:
    """How much a reducer reads of a map output at a time, from its ``share`` of the memory budget.

    Each source merged at once holds a block (and as much again in its decoder): small blocks keep
    a reducer's memory flat as map outputs multiply. On an object store each block is a ranged GET,
    a request paid for and waited on, so blocks there are bigger.
    """
    low, high = (16 << 10, 64 << 10) if local else (256 << 10, 1 << 20)
    return max(low, min(high, share))


def _reduce(spec: ReduceSpec, step: Step, sources: list[Iterator[list[Any]]]) -> dict[str, Any]:
    if step.reduce_init:
        step.reduce_init()
    reducer = step.reduce
    assert reducer is not None  # only stages with a reduce have reduce tasks
    with _writer(spec, "reduce", get_filesystem(spec.output)) as writer:
        keys = count()  # counts the keys as the merge yields them
        if sources:
            groups = zip(merge_batch_groups(sources, step.value_key, step.sort_values), keys, strict=False)
            writer.add_all(chain.from_iterable(starmap(reducer, map(_first, groups))))  # a call per key, in C
        if step.reduce_final:
            writer.flush()
            writer.source = "reduce_final"
            writer.add_all(step.reduce_final() or ())
    return _written(spec, writer, keys_in=next(keys))
