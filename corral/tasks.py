"""Task specs (plain JSON-able dicts) and their execution on a FileSystem.

A map spec: ``{"kind": "map", "job", "stage", "task", "attempt", "splits", "partitions", "output",
"output_kind", "input_format", "memory_budget"}``; ``output_kind`` is ``"shuffle"`` (one indexed
object for the reducers), ``"text"`` (the final part files of a map-only job, written as the spec's
``"output_spec"`` says: see ``corral.output.OutputSpec``) or ``"records"`` (a map-only stage feeding
the next stage). A reduce spec: ``{"kind": "reduce", …, "partition", "sources": [[url, offset,
length], …], "output", "output_kind", "output_spec"}``. A final task's result lists its part files
(``"parts"``), which the driver commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import partial
from itertools import chain, count, repeat, starmap
from typing import Any

from corral import cancellation
from corral.fs import FileSystem, get_filesystem
from corral.job import Job, Step
from corral.output import OutputSpec, PartWriter, RecordFile, iter_records
from corral.pairs import check_pairs, shuffle_batches
from corral.shuffle import (
    MERGE_FACTOR,
    MapBuffer,
    iter_group_batches,
    limit_fan_in,
    merge_batch_groups,
    range_blocks,
    spill_dir,
)
from corral.split import Split, iter_text_records, read_ahead


def _input_batches(
    splits: list[dict[str, Any]], input_format: str, input_errors: str, input_header: bool
) -> Iterator[tuple[bool, list]]:
    """``(keyed, batch)`` for a task's splits: batches of records (keyed False) or (key, value) pairs
    (True), small splits read ahead where the store serves requests at once (``read_ahead``).
    A cancelled attempt stops here, between batches (``corral.cancellation``)."""
    known: dict[str, FileSystem] = {}
    keyed = input_format == "tsv"
    for split, fs, data in read_ahead(map(Split.from_json, splits), partial(_filesystem, known=known)):
        if split.kind == "records":
            with fs.open(split.url, "rb") as stream:
                for batch in iter_records(stream):
                    cancellation.check()
                    yield True, batch
            continue
        for batch in iter_text_records(fs, split, input_format, input_errors, input_header, data):
            cancellation.check()
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


def _writer(spec: dict[str, Any], source: str) -> PartWriter | RecordFile:
    """The writer of a task's output: part files (the last stage) or records (for the next stage). As a
    context manager it closes the output, or on an error closes what is open (the driver discards it)."""
    url = spec["output"]
    if spec["output_kind"] == "text":
        return PartWriter(url, OutputSpec.from_json(spec.get("output_spec")), source)
    return RecordFile(url, source)


def _written(spec: dict[str, Any], writer: Any, **result: Any) -> dict[str, Any]:
    """A task's result: its output (the part files of a final task) and its size."""
    result.update(output=spec["output"], bytes_out=writer.bytes_out)
    if spec["output_kind"] == "text":
        result["parts"] = writer.parts
    return result


def _map_calls(step: Step, keyed: bool, batch: list) -> Iterable[Iterable[Any]]:
    """What the job's map yields for a batch of input records: one iterable of pairs per call."""
    if step.map_batch is not None:
        return (step.map_batch(batch),)
    assert step.map is not None  # a Step has map or map_batch
    return starmap(step.map, batch) if keyed else map(step.map, repeat(None), batch)


def execute_map(spec: dict[str, Any], job: Job, step: Step) -> dict[str, Any]:
    """Run one map task; return its result (output URL, index, record counts)."""
    output_kind = spec["output_kind"]
    input_format = spec.get("input_format", "lines")
    input_errors = spec.get("input_errors", "strict")
    input_header = bool(spec.get("input_header"))
    source = "map" if step.map_batch is None else "map_batch"  # the method whose pairs these are, for messages
    records_in = 0
    out_fs = get_filesystem(spec["output"])
    if step.map_init:
        step.map_init()
    if output_kind == "shuffle":
        buffer = MapBuffer(
            spec["partitions"],
            spec["memory_budget"],
            partition=step.partition,
            combine=step.combine,
            sort_values=step.sort_values,
            value_key=step.value_key,
            spill_dir=spill_dir(),
        )
        try:
            for keyed, batch in _input_batches(spec["splits"], input_format, input_errors, input_header):
                records_in += len(batch)
                groups = buffer.groups
                pairs = chain.from_iterable(_map_calls(step, keyed, batch))
                for shaped in shuffle_batches(source, pairs):  # the hot loop: no function layer per pair
                    try:
                        for key, value in shaped:
                            groups[key].append(value)
                    except TypeError:  # a key that cannot be hashed: say which
                        check_pairs(source, shaped, shuffle=True)
                        raise
                buffer.check(records_in)
            if step.map_final:
                buffer.add_final(chain.from_iterable(shuffle_batches("map_final", step.map_final() or ())))
            with out_fs.open(spec["output"], "wb") as out:
                index = buffer.write(out)
        finally:
            buffer.close()
        return {"output": spec["output"], "index": index, "records_in": records_in}

    with _writer(spec, source) as writer:
        for keyed, batch in _input_batches(spec["splits"], input_format, input_errors, input_header):
            records_in += len(batch)
            writer.add_all(chain.from_iterable(_map_calls(step, keyed, batch)))
        if step.map_final:
            writer.flush()
            writer.source = "map_final"
            writer.add_all(step.map_final() or ())
    return _written(spec, writer, records_in=records_in)


def execute_reduce(spec: dict[str, Any], job: Job, step: Step) -> dict[str, Any]:
    """Run one reduce task: merge its partition of every committed map output, stream the output."""
    assert step.reduce is not None
    sources_spec = [s for s in spec["sources"] if s[2] > 0]
    share = spec["memory_budget"] // (16 * (min(len(sources_spec), MERGE_FACTOR) or 1))
    sources = []
    for url, offset, length in sources_spec:
        read = partial(get_filesystem(url).read_range, url)
        block = _read_block(share, local="://" not in url or url.startswith("file://"))
        sources.append(iter_group_batches(range_blocks(read, offset, length, block)))
    sources, merged_files = limit_fan_in(
        sources, value_key=step.value_key, sort_values=step.sort_values, spill_dir=spill_dir(),
        block=_read_block(share, local=True),
    )
    try:
        return _reduce(spec, step, sources)
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


def _reduce(spec: dict[str, Any], step: Step, sources: list[Iterator[list[Any]]]) -> dict[str, Any]:
    if step.reduce_init:
        step.reduce_init()
    reducer = step.reduce
    assert reducer is not None  # only stages with a reduce have reduce tasks
    with _writer(spec, "reduce") as writer:
        keys = count()  # counts the keys as the merge yields them
        if sources:
            groups = zip(merge_batch_groups(sources, step.value_key, step.sort_values), keys, strict=False)
            writer.add_all(chain.from_iterable(reducer(key, values) for (key, values), _ in groups))
        if step.reduce_final:
            writer.flush()
            writer.source = "reduce_final"
            writer.add_all(step.reduce_final() or ())
    return _written(spec, writer, keys_in=next(keys))
