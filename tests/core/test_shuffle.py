"""The shuffle: stable partitions, one indexed object per map attempt, spills, streaming merges."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter, defaultdict
from itertools import chain, islice, pairwise

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corral
from corral.shuffle import (
    GroupWriter,
    MapBuffer,
    default_partition,
    iter_group_batches,
    iter_groups,
    limit_fan_in,
    map_buffer,
    merge_batch_groups,
    merge_batches,
    merge_groups,
    range_blocks,
    read_index,
    write_index,
)
from corral.worker import job_ref

from . import jobs
from .util import clean_env, counts, lines, manifest, part_lines, run, run_command, word_counter

KEYS = ["", "a", "b", "hello", "wörld", "🐍", "key-123", "x" * 1000, "\t\n", "Z", "zz"]


# --- stable partitioning -----------------------------------------------------------------------------


def _partitions_in_subprocess(seed: str) -> dict:
    code = textwrap.dedent(f"""
        import json
        from corral.shuffle import default_partition
        keys = {KEYS!r}
        print(json.dumps({{
            "partitions": [[default_partition(k, n) for n in (1, 2, 7, 64, 1000)] for k in keys],
            "hash": hash("hello"),
        }}))
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(PYTHONHASHSEED=seed), capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def test_default_partition_is_the_same_across_processes_with_different_hash_seeds():
    here = [[default_partition(k, n) for n in (1, 2, 7, 64, 1000)] for k in KEYS]
    one, two = _partitions_in_subprocess("1"), _partitions_in_subprocess("2")
    assert one["hash"] != two["hash"]  # Python's own hash() differs between these processes...
    assert one["partitions"] == two["partitions"] == here  # ...corral's partitions do not


def test_default_partition_values_are_fixed():
    # CRC-32 of the UTF-8 bytes: these numbers may never change (they decide which reducer gets a key)
    assert [default_partition(k, 1000) for k in ("", "a", "hello", "wörld", "🐍")] == [0, 907, 870, 891, 889]
    assert all(0 <= default_partition(k, n) < n for k in KEYS for n in (1, 3, 17))


def test_part_files_are_identical_whatever_the_hash_seed(tmp_path):
    (tmp_path / "in.txt").write_text("".join(f"w{i % 97} v{i % 13} é{i % 5}\n" for i in range(3000)))
    outputs = []
    for seed in ("11", "22"):
        out = tmp_path / f"out-{seed}"
        done = run_command(
            "corral", "run", jobs.__file__ + ":WordCount", tmp_path / "in.txt", "--out", out,
            "--reducers", "4", "--backend", "processes", "-q",
            env=clean_env(PYTHONHASHSEED=seed),
        )
        assert done.returncode == 0, done.stderr
        outputs.append(part_lines(out))
    assert outputs[0] == outputs[1]
    assert all(outputs[0])  # 4 non-empty parts


# --- one indexed object per map attempt --------------------------------------------------------------


def test_one_intermediate_object_per_map_task_with_a_matching_index(tmp_path):
    text = "".join(f"w{i % 50} v{i % 7} {i}\n" for i in range(1500))
    (tmp_path / "in.txt").write_text(text)
    reducers = 4
    run(
        jobs.WordCount, tmp_path / "in.txt", tmp_path / "out",
        split_size="4KB", map_bin_size="8KB", reducers=reducers, keep_intermediate=True,
    )
    stage = manifest(tmp_path / "out")["stages"][0]
    maps = stage["map_tasks"]
    assert maps == -(-len(text) // 8192) >= 3
    objects = sorted(p for p in (tmp_path / "out" / "_corral" / "work").rglob("*") if p.is_file())
    assert len(objects) == maps  # M objects, not M x R
    assert stage["intermediate_objects"] == maps
    committed = {os.path.basename(t["attempts"][0]["output"]) for t in stage["tasks"].values() if t["phase"] == "map"}
    assert {p.name for p in objects} == committed

    totals: Counter = Counter()
    for path in objects:
        data = path.read_bytes()
        index = read_index(data)
        assert len(index) == reducers
        position = 0
        for partition, (offset, length) in enumerate(index):
            assert offset == position  # segments are contiguous, in partition order
            position += length
            segment = list(iter_groups([data[offset : offset + length]]))
            keys = [key for key, _ in segment]
            assert keys == sorted(keys) and len(set(keys)) == len(keys)  # sorted and combined
            assert all(default_partition(key, reducers) == partition for key in keys)
            for key, values in segment:
                totals[key] += sum(values)
        # after the segments: the index, then the footer
        assert msgpack.unpackb(data[position:-16]) == index
    assert totals == word_counter(text) == Counter(counts(tmp_path / "out"))


def test_intermediate_data_is_deleted_after_success_and_after_failure(tmp_path):
    (tmp_path / "in.txt").write_text("a b\n")
    run(jobs.WordCount, tmp_path / "in.txt", tmp_path / "ok")
    assert not (tmp_path / "ok" / "_corral" / "work").exists()
    assert sorted(p.name for p in (tmp_path / "ok" / "_corral").iterdir()) == ["manifest.json"]
    with pytest.raises(corral.JobFailed):
        run(jobs.AlwaysFails, tmp_path / "in.txt", tmp_path / "failed", retries=0)
    assert not (tmp_path / "failed" / "_corral" / "work").exists()


def test_work_dir_setting_puts_intermediate_data_elsewhere(tmp_path):
    (tmp_path / "in.txt").write_text("a b a\n")
    run(jobs.WordCount, tmp_path / "in.txt", tmp_path / "out", work_dir=str(tmp_path / "work"), keep_intermediate=True)
    kept = [p for p in (tmp_path / "work").rglob("*") if p.is_file()]
    assert len(kept) == 1 and kept[0].suffix == ".bin"
    assert not (tmp_path / "out" / "_corral" / "work").exists()
    assert counts(tmp_path / "out") == {"a": 2, "b": 1}


# --- map side: buffering within a budget, spilling -----------------------------------------------------


def _decoded(data: bytes) -> list[list[tuple[str, list]]]:
    """An object's content per partition: (key, all its values) with entries of one key joined."""
    result = []
    for offset, length in read_index(data):
        joined: dict[str, list] = defaultdict(list)
        for key, values in iter_groups([data[offset : offset + length]]):
            joined[key].extend(values)
        result.append(list(joined.items()))
    return result


def _fill(buffer: MapBuffer, batches: list[list[tuple[str, object]]]) -> None:
    records = 0
    for batch in batches:  # as the map loop does: append to the groups, check between input chunks
        for key, value in batch:
            buffer.groups[key].append(value)
        records += len(batch)
        buffer.check(records)


@pytest.mark.parametrize("combine", [None, lambda key, values: [(key, sum(values))]])
def test_map_buffer_spills_over_its_budget_and_writes_the_same_content(combine):
    batches = [[(f"k{(i * 7 + j) % 300:03d}", j) for j in range(200)] for i in range(20)]
    spilled = MapBuffer(3, 1024, combine=combine)
    _fill(spilled, batches)
    assert len(spilled.spills) >= 5
    out = io.BytesIO()
    spilled.write(out)
    in_memory = MapBuffer(3, 1 << 30, combine=combine)
    _fill(in_memory, batches)
    assert not in_memory.spills
    expected = io.BytesIO()
    in_memory.write(expected)
    if combine is None:
        assert _decoded(out.getvalue()) == _decoded(expected.getvalue())
    else:  # combined at different times, so compare the sums
        def sums(data):
            return [{k: sum(v) for k, v in part} for part in _decoded(data)]

        assert sums(out.getvalue()) == sums(expected.getvalue())


def _add(buffer: MapBuffer, pairs: list[tuple[str, object]]) -> None:
    """As the map loop does: batches of 1024 pairs through ``add_batch``, checked between them."""
    for start in range(0, len(pairs), 1024):
        buffer.add_batch("map", pairs[start : start + 1024])
        buffer.check(start + 1024)


def test_a_map_buffer_counts_a_constant_value_and_writes_what_its_lists_would():
    pairs = [(f"w{i * 7 % 50}", 1) for i in range(100_000)]
    calls = []

    def combine(key, values):
        values = list(values)
        calls.append((key, len(values), {type(v) for v in values}))
        yield key, sum(values)

    counted = MapBuffer(3, 256 << 10, combine=combine)
    _add(counted, pairs)
    # 50 counts, not 50 lists of 2,000 values: no combine in place, no spill, within a few KB
    assert counted.estimated_bytes() < 50 * 200 and not counted.spills and not calls
    out = io.BytesIO()
    counted.write(out)
    assert sorted(calls) == [(f"w{i}", 2000, {int}) for i in sorted(range(50), key=lambda i: f"w{i}")]
    listed = MapBuffer(3, 1 << 30, combine=combine)
    _fill(listed, [pairs])  # the lists, filled directly
    expected = io.BytesIO()
    listed.write(expected)
    assert out.getvalue() == expected.getvalue()


def test_a_map_buffer_that_counted_keeps_each_value_and_its_order_when_others_come():
    seen = {}

    def combine(key, values):
        seen[key] = [repr(v) for v in values]
        yield key, len(seen[key])

    buffer = MapBuffer(1, 1 << 30, combine=combine)
    buffer.add_batch("map", [("a", 1), ("b", 1), ("a", 1)])
    buffer.add_batch("map", [("a", True), ("b", 1.0), ("a", 1)])  # equal to 1, not the same
    buffer.add_batch("map", [("c", 1), ("b", 1)])
    buffer.write(io.BytesIO())
    assert seen == {"a": ["1", "1", "True", "1"], "b": ["1", "1.0", "1"], "c": ["1"]}
    for first, second in (([("a", 2)], [("a", 1)]), ([("a", 1), ("a", 1.0)], [("a", None)])):
        seen.clear()
        buffer = MapBuffer(1, 1 << 30, combine=combine)
        buffer.add_batch("map", first)
        buffer.add_batch("map", second)
        buffer.write(io.BytesIO())
        assert seen == {"a": [repr(v) for _, v in first + second]}


def test_a_counting_map_buffer_spills_over_its_budget_and_writes_the_same_sums():
    pairs = [(f"key-{i * 7919 % 3000:05d}", 1) for i in range(60_000)]

    def combine(key, values):
        yield key, sum(values)

    spilled = MapBuffer(3, 16 << 10, combine=combine)
    _add(spilled, pairs)
    assert len(spilled.spills) >= 3
    out = io.BytesIO()
    spilled.write(out)
    assert [dict(part) for part in _decoded(out.getvalue())] == [
        {k: [n] for k, n in sorted(Counter(k for k, _ in pairs).items()) if default_partition(k, 3) == p}
        for p in range(3)
    ]


def test_map_buffer_keeps_many_values_of_one_key_in_bounded_entries():
    buffer = MapBuffer(1, 1 << 30)
    buffer.groups["hot"].extend(range(5000))
    out = io.BytesIO()
    buffer.write(out)
    (offset, length), = read_index(out.getvalue())
    entries = list(iter_groups([out.getvalue()[offset : offset + length]]))
    assert [len(values) for _, values in entries] == [1024, 1024, 1024, 1024, 904]
    assert [v for _, values in entries for v in values] == list(range(5000))


@pytest.mark.parametrize("job", [jobs.WordCount, jobs.WordCountNoCombine, jobs.InMapperWordCount])
def test_tiny_memory_budget_spills_and_the_output_is_exact(tmp_path, job):
    text = "".join(" ".join(f"w{(i * 31 + j) % 997}" for j in range(8)) + "\n" for i in range(4000))
    (tmp_path / "in.txt").write_text(text)
    run(job, tmp_path / "in.txt", tmp_path / "out", memory_budget="1KB", split_size="4KB", reducers=3)
    pairs = [line.split("\t") for line in lines(tmp_path / "out")]
    totals = [int(v) for k, v in pairs if k == "~total"]  # InMapperWordCount's reduce_final, per reducer
    assert dict((k, int(v)) for k, v in pairs if k != "~total") == word_counter(text)
    assert len(pairs) == len(word_counter(text)) + len(totals)
    if job is jobs.InMapperWordCount:
        assert len(totals) == 3 and sum(totals) == len(text.split())


def test_secondary_sort_survives_spills_and_many_map_tasks(tmp_path):
    import random

    rng = random.Random(5)
    pairs = [(f"g{rng.randrange(6)}", rng.randrange(10**6)) for _ in range(6000)]
    (tmp_path / "in.txt").write_text("".join(f"{k} {v}\n" for k, v in pairs))
    run(
        jobs.SecondarySort, tmp_path / "in.txt", tmp_path / "out",
        memory_budget="1KB", split_size="2KB", map_bin_size="16KB", reducers=2,
    )
    assert manifest(tmp_path / "out")["stages"][0]["map_tasks"] >= 3
    expected = defaultdict(list)
    for k, v in pairs:
        expected[k].append(v)
    got = {key: json.loads(value) for key, value in (line.split("\t") for line in lines(tmp_path / "out"))}
    assert got == {k: sorted(v) for k, v in expected.items()}


# --- reduce side: a streaming merge ---------------------------------------------------------------------


def _sorted_object(groups: list[tuple[str, list]]) -> tuple[bytes, list[list[int]]]:
    out = io.BytesIO()
    writer = GroupWriter(out)
    for key, values in groups:
        writer.add(key, values)
    writer.flush()
    index = [[0, writer.offset]]
    write_index(out, index, writer.offset)
    return out.getvalue(), index


def test_the_reduce_merge_reads_its_sources_as_streams():
    sources_data = [_sorted_object([(f"k{i:07d}", [i]) for i in range(j, 150_000, 3)])[0] for j in range(3)]
    block = 64 << 10
    read_bytes = [0, 0, 0]

    def reader(n):
        def read(start, end):
            read_bytes[n] += end - start
            return sources_data[n][start:end]

        return read

    sources = [
        iter_groups(range_blocks(reader(n), 0, read_index(data)[0][1], block)) for n, data in enumerate(sources_data)
    ]
    merged = merge_groups(sources)
    first = [(key, list(values)) for key, values in islice(merged, 10)]
    assert first == [(f"k{i:07d}", [i]) for i in range(10)]
    assert all(0 < n <= 2 * block for n in read_bytes)  # a block or two of each source, not all of it
    assert sum(len(d) for d in sources_data) > 5 * sum(read_bytes)
    rest = list(merged)
    assert len(rest) == 150_000 - 10 and rest[-1][0] == "k0149999"
    assert all(a[0] < b[0] for a, b in pairwise(rest))


@st.composite
def sorted_sources(draw):
    """Sources as a map task writes them: sorted keys, a key's values sorted and cut into entries."""
    sources = []
    for _ in range(draw(st.integers(1, 5))):
        keys = sorted(draw(st.sets(st.sampled_from("abcdefgh"), max_size=6)))
        entries = []
        for key in keys:
            values = sorted(draw(st.lists(st.integers(-50, 50), min_size=1, max_size=9)))
            cut = draw(st.integers(1, 4))
            entries += [(key, values[i : i + cut]) for i in range(0, len(values), cut)]
        sources.append(entries)
    return sources


@settings(max_examples=200, deadline=None)
@given(sources=sorted_sources(), sort_values=st.booleans(), take=st.integers(0, 12), data=st.data())
def test_merge_groups_against_a_reference(sources, sort_values, take, data):
    reference: dict[str, list] = defaultdict(list)
    for entries in sources:
        for key, values in entries:
            reference[key].extend(values)
    partial = data.draw(st.sets(st.sampled_from("abcdefgh")), label="keys read partially")
    got = []
    for key, values in merge_groups([iter(e) for e in sources], sort_values=sort_values):
        # reduce may leave values unread: the next key must still come out right
        got.append((key, list(islice(values, take)) if key in partial else list(values)))
    expected = [
        (k, (sorted(v) if sort_values else v)[: take if k in partial else None]) for k, v in sorted(reference.items())
    ]
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(sources=sorted_sources(), data=st.data())
def test_merge_batches_against_a_reference(sources, data):
    """Sources cut into batches of any sizes (empty ones too) merge into one sorted stream in which the
    entries of equal keys keep the order of their sources."""
    batched = []
    for entries in sources:
        cuts = sorted(data.draw(st.lists(st.integers(0, len(entries)), max_size=4)))
        bounds = [0, *cuts, len(entries)]
        batched.append(iter([entries[a:b] for a, b in pairwise(bounds)]))
    merged = [entry for batch in merge_batches(batched) for entry in batch]
    tagged = [(key, n, i) for n, entries in enumerate(sources) for i, (key, _) in enumerate(entries)]
    expected = [sources[n][i] for _, n, i in sorted(tagged)]
    assert merged == expected


def _batch_sources(groups_per_source: list[list[tuple[str, list]]]) -> list:
    """Sources as a reducer reads them: stored objects decoded batch by batch."""
    sources = []
    for groups in groups_per_source:
        data, index = _sorted_object(groups)
        sources.append(iter_group_batches([data[: index[0][1]]]))
    return sources


@pytest.mark.parametrize("count", [3, 4, 7, 12, 30])
def test_limit_fan_in_merges_in_passes_and_keeps_the_order_of_values(count):
    groups = [[(f"k{i:03d}", [n, i]) for i in range(n % 5, 60, 1 + n % 3)] for n in range(count)]
    expected: dict[str, list] = defaultdict(list)
    for source in groups:
        for key, values in source:
            expected[key] += values
    sources, files = limit_fan_in(_batch_sources(groups), factor=3)
    assert len(sources) == min(count, 3) and len(files) == (0 if count <= 3 else len(files))
    if count > 3:
        assert files  # sources were merged into local files first
    got = [(key, list(values)) for key, values in merge_groups([chain.from_iterable(s) for s in sources])]
    assert got == sorted(expected.items())  # keys sorted, each key's values in the order of the sources
    for f in files:
        f.close()


def test_limit_fan_in_keeps_sorted_values_sorted():
    groups = [[("a", sorted(range(n, 40, 7))), ("b", [n])] for n in range(7)]
    sources, files = limit_fan_in(_batch_sources(groups), factor=2, sort_values=True)
    assert len(sources) == 2 and files
    merged = merge_groups([chain.from_iterable(s) for s in sources], sort_values=True)
    assert [(key, list(values)) for key, values in merged] == [
        ("a", sorted(v for n in range(7) for v in range(n, 40, 7))), ("b", list(range(7)))
    ]
    for f in files:
        f.close()


def test_a_reduce_over_more_map_outputs_than_the_merge_factor(tmp_path):
    text = "".join(f"w{i % 997} w{i % 13}\n" for i in range(5000))
    (tmp_path / "in.txt").write_text(text)
    run(jobs.WordCountNoCombine, tmp_path / "in.txt", tmp_path / "out", split_size="1KB", map_bin_size="1KB",
        reducers=2, memory_budget="32MB")  # a budget that merges MERGE_FACTOR sources at once
    assert corral.shuffle.merge_factor(32 << 20) == corral.shuffle.MERGE_FACTOR
    assert manifest(tmp_path / "out")["stages"][0]["map_tasks"] > 3 * corral.shuffle.MERGE_FACTOR
    assert counts(tmp_path / "out") == word_counter(text)


def test_sorted_merge_of_one_hot_key_reads_its_sources_as_streams():
    HOT = 3_000_000
    block = 64 << 10
    data = []
    for j in range(3):
        out = io.BytesIO()
        writer = GroupWriter(out)
        writer.add_iter("cold", [j])
        writer.add_iter("hot", range(HOT - 1 - j, -1, -3))  # sorted by the value key: largest first
        writer.add_iter("hotter", [j])
        writer.flush()
        data.append(out.getvalue())
    read_bytes = [0, 0, 0]

    def reader(n):
        def read(start, end):
            read_bytes[n] += end - start
            return data[n][start:end]

        return read

    sources = [iter_groups(range_blocks(reader(n), 0, len(data[n]), block)) for n in range(3)]
    merged = merge_groups(sources, value_key=lambda v: -v, sort_values=True)
    assert [(k, list(v)) for k, v in islice(merged, 1)] == [("cold", [2, 1, 0])]
    key, values = next(merged)
    assert key == "hot" and list(islice(values, 5)) == [HOT - 1, HOT - 2, HOT - 3, HOT - 4, HOT - 5]
    # a msgpack batch (about 1 MiB at most) of each source, not every value of "hot"
    assert all(n <= (2 << 20) for n in read_bytes), read_bytes
    assert sum(map(len, data)) > 3 * sum(read_bytes)
    assert [(k, list(v)) for k, v in merged] == [("hotter", [2, 1, 0])]  # the rest of "hot" skipped


def test_a_reduce_over_many_keys_with_a_tiny_budget(tmp_path):
    text = "".join(f"key{i:06d} shared\n" for i in range(60_000))
    (tmp_path / "in.txt").write_text(text)
    run(jobs.WordCount, tmp_path / "in.txt", tmp_path / "out", memory_budget="1KB", split_size="256KB", reducers=2)
    got = counts(tmp_path / "out")
    assert len(got) == 60_001 and got["shared"] == 60_000 and got["key059999"] == 1


# --- peak memory of a reduce task does not grow with its input (slow) ------------------------------------

TASK_IN_FRESH_PROCESS = """
import json, resource, sys
from corral.worker import run_task
result = run_task(json.load(open(sys.argv[1])))
print(json.dumps({"ok": result["ok"], "error": result.get("error"), "keys_in": result.get("keys_in"),
                  "index": result.get("index"), "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _task_in_fresh_process(folder, payload: dict) -> dict:
    """Run one task in a fresh interpreter; its result and peak RSS (``maxrss_kb``)."""
    (folder / "payload.json").write_text(json.dumps(payload))
    done = subprocess.run(
        [sys.executable, "-c", TASK_IN_FRESH_PROCESS, str(folder / "payload.json")],
        capture_output=True, text=True, check=True, env=clean_env(),
    )
    result = json.loads(done.stdout)
    assert result["ok"], result["error"]
    return result


def _reduce_payload(folder, job, specs: list, budget: int = 256 << 20) -> dict:
    return {
        "kind": "reduce", "job": job_ref(job), "args": {}, "stage": 0, "task": "reduce-0000",
        "attempt": 1, "partition": 0, "sources": specs, "output": str(folder / "out.txt"),
        "output_kind": "text", "memory_budget": budget,
    }


def _map_payload(job, path, output, budget: int, start: int = 0, end: int | None = None) -> dict:
    """Map task of ``job`` over ``path`` (or its bytes [start, end)) into one shuffle object for one reducer."""
    end = path.stat().st_size if end is None else end
    return {
        "kind": "map", "job": job_ref(job), "args": {}, "stage": 0, "task": "map-0000", "attempt": 1,
        "splits": [{"url": str(path), "start": start, "end": end, "kind": "text"}], "partitions": 1,
        "output": str(output), "output_kind": "shuffle", "input_format": "lines", "input_errors": "strict",
        "memory_budget": budget,
    }


def _reduce_in_fresh_process(folder, job, specs: list) -> dict:
    """Run one reduce task of ``job`` over ``specs`` in a fresh interpreter; its result and peak RSS."""
    return _task_in_fresh_process(folder, _reduce_payload(folder, job, specs))


def _reduce_peak_rss(tmp_path, name: str, keys: int, sources: int = 8) -> tuple[int, int]:
    folder = tmp_path / name
    folder.mkdir()
    values = list(range(1000, 1020))
    specs = []
    for j in range(sources):  # source j holds every key i with i % sources == j, sorted
        path = folder / f"map-{j}.bin"
        with open(path, "wb") as f:
            writer = GroupWriter(f)
            for i in range(j, keys, sources):
                writer.add(f"key-{i:010d}", values)
            writer.flush()
            write_index(f, [[0, writer.offset]], writer.offset)
        specs.append([str(path), 0, writer.offset])
    result = _reduce_in_fresh_process(folder, jobs.SumReduce, specs)
    assert result["keys_in"] == keys
    with open(folder / "out.txt") as f:
        assert sum(1 for _ in f) == keys
    input_bytes = sum(s[2] for s in specs)
    for s in specs:
        os.remove(s[0])
    return result["maxrss_kb"], input_bytes


@pytest.mark.slow
def test_reduce_peak_memory_stays_flat_when_its_input_grows_tenfold(tmp_path):
    small_rss, small_bytes = _reduce_peak_rss(tmp_path, "small", 200_000)
    big_rss, big_bytes = _reduce_peak_rss(tmp_path, "big", 2_000_000)
    assert big_bytes >= 9.5 * small_bytes and big_bytes > 100 << 20
    assert big_rss <= 1.5 * small_rss, f"peak RSS {small_rss} KiB -> {big_rss} KiB for 10x the input"


def _hot_key_reduce_peak_rss(tmp_path, name: str, values: int, sources: int = 8) -> int:
    folder = tmp_path / name
    folder.mkdir()
    specs = []
    for j in range(sources):
        path = folder / f"map-{j}.bin"
        with open(path, "wb") as f:
            writer = GroupWriter(f)
            writer.add_iter("hot", range(j, values, sources))
            writer.flush()
            write_index(f, [[0, writer.offset]], writer.offset)
        specs.append([str(path), 0, writer.offset])
    result = _reduce_in_fresh_process(folder, jobs.SecondarySortCount, specs)
    assert (folder / "out.txt").read_text() == f"hot\t{values}\n"  # every value, in sorted order
    for s in specs:
        os.remove(s[0])
    return result["maxrss_kb"]


@pytest.mark.slow
def test_secondary_sort_reduce_of_a_hot_key_stays_flat_when_it_grows_tenfold(tmp_path):
    small = _hot_key_reduce_peak_rss(tmp_path, "small", 2_000_000)
    big = _hot_key_reduce_peak_rss(tmp_path, "big", 20_000_000)
    assert big <= 1.5 * small, f"peak RSS {small} KiB -> {big} KiB for 10x the values of one key"


# --- one hot key: a task's memory follows its budget, not the key (defect: it followed the key) -------------

#: Besides its buffer, a map task holds one chunk of input lines (4 MB of short lines: about 20 MB of str).
INPUT_CHUNK_MB = 20


def _hot_key_peaks(tmp_path, values: int, budget_mb: int, maps: int = 20, job=jobs.HotKey) -> dict[str, float]:
    """Peak RSS (MB) of real tasks of ``job`` (a HotKey), each in a fresh interpreter, for ``values`` lines under one
    key at ``--memory-budget budget_mb``: one map over all of them, and one reducer over ``maps`` map outputs;
    and the floor: a fresh interpreter that ran a one-line map."""
    path = tmp_path / "in.txt"
    with open(path, "w") as f:
        f.writelines(f"value-{i:09d}\n" for i in range(values))
    (tmp_path / "one.txt").write_text("value-000000000\n")
    budget = budget_mb << 20
    floor = _task_in_fresh_process(tmp_path, _map_payload(job, tmp_path / "one.txt", tmp_path / "one.bin", budget))
    mapped = _task_in_fresh_process(tmp_path, _map_payload(job, path, tmp_path / "all.bin", budget))
    size, specs = path.stat().st_size, []
    for m in range(maps):  # real map tasks (run here: their memory is not what is measured)
        start, end = m * size // maps, (m + 1) * size // maps
        result = corral.run_task(_map_payload(job, path, tmp_path / f"map-{m}.bin", budget, start, end))
        assert result["ok"], result["error"]
        specs.append([str(tmp_path / f"map-{m}.bin"), *result["index"][0]])
    reduced = _task_in_fresh_process(tmp_path, _reduce_payload(tmp_path, job, specs, budget))
    assert (tmp_path / "out.txt").read_text() == f"hot\t{values}\n"
    return {name: r["maxrss_kb"] / 1024 for name, r in (("floor", floor), ("map", mapped), ("reduce", reduced))}


def test_a_hot_key_keeps_a_map_task_and_a_reducer_within_twice_the_budget(tmp_path):
    """2 M values of one key at a 16 MB budget (before: map 133+ MB, reducer of 20 map outputs 96 MB)."""
    peaks = _hot_key_peaks(tmp_path, 2_000_000, 16)
    assert peaks["map"] <= peaks["floor"] + 2 * 16 + INPUT_CHUNK_MB, peaks
    assert peaks["reduce"] <= peaks["floor"] + 2 * 16, peaks


def test_a_hot_key_whose_combine_keeps_every_value_out_of_order_is_sorted_on_disk(tmp_path):
    """sort_values with a combine that streams every value back unsorted: the final merge sorts the key's
    values in runs on local disk (before: the whole key's list in memory). The reducer checks the order."""
    peaks = _hot_key_peaks(tmp_path, 500_000, 4, maps=2, job=jobs.HotKeySorted)
    assert peaks["map"] <= peaks["floor"] + 2 * 4 + INPUT_CHUNK_MB, peaks


@pytest.mark.slow
def test_a_hot_key_of_five_million_values_at_a_64mb_budget(tmp_path):
    """The reported case (before: map 451 MB, reducer of 20 map outputs 256 MB)."""
    peaks = _hot_key_peaks(tmp_path, 5_000_000, 64)
    assert peaks["map"] <= peaks["floor"] + 2 * 64 + INPUT_CHUNK_MB, peaks
    assert peaks["reduce"] <= peaks["floor"] + 2 * 64, peaks


# --- the buffer of a stage without a combine: pairs sorted, not grouped in a dict ---------------------


def _pair_buffer_output(buffer, batches):
    records = 0
    for batch in batches:
        buffer.add_batch("map", list(batch))
        records += len(batch)
        buffer.check(records)
    out = io.BytesIO()
    buffer.write(out)
    return out.getvalue()


@settings(max_examples=60, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.sampled_from(KEYS + [f"k{n}" for n in range(40)]), st.integers(-5, 10**6)),
                   max_size=3000),
    partitions=st.sampled_from([1, 3, 20]),
    budget=st.sampled_from([512, 8192, 1 << 30]),
    ranges=st.booleans(),
)
def test_a_pair_buffer_writes_what_a_map_buffer_writes(pairs, partitions, budget, ranges):
    """A stage without a combine buffers its pairs in a list (sorted by key when written) instead of a
    dict of lists: the same partitions, keys in order, a key's values in the order map yielded them,
    with spills or without, for hashed, custom (over 16 partitions: sorted by partition) and range
    partitions."""
    from corral.shuffle import PairBuffer
    from corral.total_order import RangePartition

    partition = RangePartition(["b", "k2", "k3"]) if ranges else None
    if ranges is False and partitions == 20:
        partition = lambda key, n: len(key) % n  # noqa: E731 - a custom partitioner
    batches = [pairs[i : i + 97] for i in range(0, len(pairs), 97)]
    reference = MapBuffer(partitions, 1 << 30, partition=partition)
    _fill(reference, batches)
    expected = io.BytesIO()
    reference.write(expected)
    got = _pair_buffer_output(PairBuffer(partitions, budget, partition=partition), batches)
    assert _decoded(got) == _decoded(expected.getvalue())


def test_a_pair_buffer_spills_within_its_budget_and_names_a_bad_key():
    from corral.shuffle import PairBuffer

    for budget, spills in ((64 << 10, 5), (1 << 30, 0)):  # without spills: partitions of several rounds
        buffer = PairBuffer(2, budget)
        for n in range(20_000):  # 4 values for each of 5000 keys, about 2 MB buffered in all
            buffer.add_batch("map", [(f"key-{n % 5000:05d}", f"v{n}")])
            buffer.check(n + 1)
        assert len(buffer.spills) > spills or spills == 0
        out = io.BytesIO()
        buffer.write(out)
        groups = {key: values for part in _decoded(out.getvalue()) for key, values in part}
        assert groups == {f"key-{k:05d}": [f"v{k + 5000 * i}" for i in range(4)] for k in range(5000)}
    bad = PairBuffer(2, 1 << 20)
    bad.add_batch("map_batch", [("ok", 1), (("not", "a str"), 2)])
    with pytest.raises(TypeError, match=r"^map_batch yielded the key \('not', 'a str'\) \(of type tuple\) with "
                                        r"the value 2: keys must be str$"):
        bad.write(io.BytesIO())


def test_a_map_buffer_writes_what_an_irregular_combine_yields_for_each_key():
    """Combine calls are flattened in one pass; a call that yields no pair, two pairs or a list must
    still give each key exactly its own values, and a pair of another key is refused."""

    def combine(key, values):
        n = int(key[1:])
        total = sum(values)
        if n % 5 == 0:
            return []  # nothing: reduce must not see the key
        if n % 3 == 0:
            return [(key, total), (key, -total)]
        return iter([(key, total)])

    pairs = [(f"k{i % 40}", 1) for i in range(4000)]
    buffer = MapBuffer(2, 1 << 30, combine=combine)
    _add(buffer, pairs)
    out = io.BytesIO()
    buffer.write(out)
    kept = {f"k{n}": [100, -100] if n % 3 == 0 else [100] for n in range(40) if n % 5}
    expected = [{k: v for k, v in kept.items() if default_partition(k, 2) == p} for p in range(2)]
    assert [dict(part) for part in _decoded(out.getvalue())] == expected

    def renaming(key, values):
        yield (key.upper() if key == "k7" else key), sum(values)

    buffer = MapBuffer(1, 1 << 30, combine=renaming)
    _add(buffer, pairs)
    with pytest.raises(ValueError, match="combine must yield the key it was given: got 'K7' for 'k7'"):
        buffer.write(io.BytesIO())


def test_a_pair_buffer_stores_keys_of_one_value_as_columns_and_reads_them_back_in_order():
    """A sort's records (a key, one value) are stored as batches of two columns, [keys, values], not as
    a [value] list per record; rounds where keys repeat keep entries. Both read back as (key, values)."""
    buffer = map_buffer(1, 1 << 30)
    distinct = [(f"k{i:05d}", i) for i in range(10_000)]
    repeated = [("k99999", "a"), ("k99999", "b")]
    buffer.add_batch("map", distinct[5000:] + repeated + distinct[:5000])
    out = io.BytesIO()
    buffer.write(out)
    (offset, length), = read_index(out.getvalue())
    segment = out.getvalue()[offset : offset + length]
    batches = list(msgpack.Unpacker(io.BytesIO(segment), raw=False))
    assert [type(batch[0]) for batch in batches][:2] == [list, list]  # columns
    assert batches[0][0][:2] == ["k00000", "k00001"] and batches[0][1][:2] == [0, 1]
    assert type(batches[-1][0]) is str  # the round where a key repeats: entries
    entries = [(key, list(values)) for key, values in iter_groups([segment])]
    assert entries == [(k, [v]) for k, v in distinct] + [("k99999", ["a", "b"])]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_merge_batch_groups_of_distinct_keys_against_a_reference(data):
    """Sources of batches whose keys are mostly distinct (a sort's records, stored as columns): each key's
    group is made from its entry (the last entry of a batch waits for the next batch, which may go on with
    its key), and from the first key that repeats the rest is grouped by groupby; reduce may leave values
    unread."""
    sources, reference = [], defaultdict(list)
    for n in range(data.draw(st.integers(1, 3))):
        keys = sorted(data.draw(st.sets(st.text("abcdefghijkl", min_size=1, max_size=2), max_size=30)))
        entries = [(key, (f"{key}:{n}",)) for key in keys]
        if keys and data.draw(st.booleans()):  # a key of several entries (a hot key, or two rounds)
            at = data.draw(st.integers(0, len(entries) - 1))
            entries.insert(at + 1, (entries[at][0], [f"{entries[at][0]}:{n}b", "more"]))
        for key, values in entries:
            reference[key] += values
        cuts = sorted(data.draw(st.lists(st.integers(0, len(entries)), max_size=5)))
        sources.append(iter([entries[a:b] for a, b in pairwise([0, *cuts, len(entries)])]))
    partial = data.draw(st.sets(st.sampled_from(sorted(reference) or ["a"])), label="keys read partially")
    got = [(key, list(islice(values, 1)) if key in partial else list(values))
           for key, values in merge_batch_groups(sources)]
    assert got == [(k, v[:1] if k in partial else v) for k, v in sorted(reference.items())]


def test_merge_batch_groups_gives_each_key_an_iterator_of_its_values():
    batches = [[("a", (1,)), ("b", (2,))], [("c", (3,))], [("c", [4, 5]), ("d", (6,))]]
    groups = [(key, iter(values) is values, list(values)) for key, values in merge_batch_groups([iter(batches)])]
    assert groups == [("a", True, [1]), ("b", True, [2]), ("c", True, [3, 4, 5]), ("d", True, [6])]


def test_add_pairs_buffers_what_the_batches_would_counting_straight_from_the_generator():
    """``add_pairs`` (map's hot loop: counted in C straight from the iterator, where the C module is built)
    and ``add_batch`` over the same pairs write the same bytes; a bool among the ints stops the counting."""
    pairs = [(f"w{i % 7}", 1) for i in range(5000)] + [("w1", True)] + [(f"w{i % 5}", 1) for i in range(3000)]
    seen = []

    def combine(key, values):
        values = list(values)
        seen.append((key, [type(v).__name__ for v in values].count("bool"), len(values)))
        yield key, sum(values)

    streamed = MapBuffer(2, 1 << 30, combine=combine)
    streamed.add_pairs("map", iter(pairs[:1500]))  # the first chunk finds the constant in a batch
    streamed.add_pairs("map", iter(pairs[1500:]))
    out = io.BytesIO()
    streamed.write(out)
    batched = MapBuffer(2, 1 << 30, combine=combine)
    _add(batched, pairs)
    expected = io.BytesIO()
    batched.write(expected)
    assert out.getvalue() == expected.getvalue()
    half = len(seen) // 2  # each buffer's combine calls: the same values, the bool among w1's 1,316
    assert seen[:half] == seen[half:] and ("w1", 1, 1316) in seen[:half]
