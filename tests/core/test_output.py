"""Output: part files of ``key<TAB>value`` lines, _SUCCESS, the manifest; key order, partitioners,
secondary sort."""

from __future__ import annotations

import json
import random
from collections import defaultdict

import pytest

import corral
from corral.shuffle import default_partition

from . import jobs
from .util import lines, manifest, part_lines, parts, run

TYPED_LINES = [
    "str\tthe line",
    "int\t42",
    "negative\t-7",
    "float\t2.5",
    "true\ttrue",
    "false\tfalse",
    "none\tnull",
    'list\t[1, "two", null, 3.5]',
    'dict\t{"a": 1, "b": [true, null]}',
    "unicode\théllo wörld ✓ 🐍",
    'unicode-list\t["é", "✓"]',
]


def test_values_are_written_as_is_when_str_and_as_json_otherwise(tmp_path):
    (tmp_path / "in.txt").write_text("the line\n")
    run(jobs.Typed, tmp_path / "in.txt", tmp_path / "out")
    assert (tmp_path / "out" / "part-00000").read_bytes() == ("\n".join(TYPED_LINES) + "\n").encode("utf-8")


def test_typed_values_through_the_shuffle(tmp_path):
    (tmp_path / "in.txt").write_text("the line\n")
    run(jobs.TypedReduce, tmp_path / "in.txt", tmp_path / "out", reducers=1)
    assert lines(tmp_path / "out") == sorted(TYPED_LINES)  # one reducer: keys in sorted order


def test_map_only_key_none_writes_the_value_alone(tmp_path):
    (tmp_path / "in.txt").write_text("a\tb\nc\n")
    run(jobs.Cat, tmp_path / "in.txt", tmp_path / "out")
    assert (tmp_path / "out" / "part-00000").read_text() == "a\tb\nc\n"


def test_output_folder_layout_and_manifest(tmp_path):
    (tmp_path / "in.txt").write_text("b a\nc a\n" * 100)  # 800 bytes
    result = run(
        jobs.CountersJob, tmp_path / "in.txt", tmp_path / "out", reducers=2, split_size="200", map_bin_size="400"
    )
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "_corral", "part-00000", "part-00001"]
    assert (out / "_SUCCESS").read_bytes() == b""
    assert sorted(p.name for p in (out / "_corral").iterdir()) == ["manifest.json"]
    m = manifest(out)
    assert m == json.loads(json.dumps(result))  # corral.run returns the manifest it wrote
    assert m["status"] == "succeeded" and m["error"] is None
    assert m["job"] == f"{jobs.__name__}:CountersJob"
    assert m["out"] == str(out)
    assert m["settings"]["reducers"] == 2 and m["settings"]["backend"] == "threads"
    assert m["counters"] == {
        "lines": {"total": 200},
        "reduce": {"keys": 3},
        "words": {"total": 400},
    }
    (stage,) = m["stages"]
    assert stage["map_tasks"] == 2 and stage["reduce_tasks"] == 2
    url = str(tmp_path / "in.txt")
    assert stage["plan"] == [[[url, 0, 200], [url, 200, 400]], [[url, 400, 600], [url, 600, 800]]]
    assert sorted(stage["tasks"]) == ["map-0000", "map-0001", "reduce-0000", "reduce-0001"]
    for name, task in stage["tasks"].items():
        assert task["phase"] == name.split("-")[0]
        assert task["committed_attempt"] == 1
        (attempt,) = task["attempts"]
        assert attempt["attempt"] == 1 and attempt["status"] == "committed"
        assert attempt["stats"]["seconds"] >= 0 and attempt["stats"]["peak_memory_mb"] > 0


def test_keep_intermediate_keeps_the_map_outputs(tmp_path):
    (tmp_path / "in.txt").write_text("a b\n")
    run(jobs.WordCount, tmp_path / "in.txt", tmp_path / "out", keep_intermediate=True)
    kept = [p for p in (tmp_path / "out" / "_corral" / "work").rglob("*") if p.is_file()]
    assert [p.suffix for p in kept] == [".bin"]


# --- what reduce sees --------------------------------------------------------------------------------


def _seen_keys(out) -> list[list[str]]:
    """The keys KeysSeen's reducers saw, in order, per part file."""
    result = []
    for part in part_lines(out):
        ((key, value),) = [line.split("\t") for line in part]
        assert key == "keys"
        result.append(json.loads(value))
    return result


def test_reduce_sees_keys_in_sorted_order_within_its_partition(tmp_path):
    rng = random.Random(3)
    words = [rng.choice(["é", "Z", "a", "", "b"]) + str(rng.randrange(500)) for _ in range(5000)]
    (tmp_path / "in.txt").write_text("\n".join(" ".join(words[i : i + 10]) for i in range(0, 5000, 10)))
    run(jobs.KeysSeen, tmp_path / "in.txt", tmp_path / "out", reducers=3, split_size="2KB", map_bin_size="8KB",
        memory_budget="4KB")
    seen = _seen_keys(tmp_path / "out")
    assert len(seen) == 3
    for partition, keys in enumerate(seen):
        assert keys == sorted(set(keys))  # sorted, each key once (merged across map tasks and spills)
        assert all(default_partition(k, 3) == partition for k in keys)
    assert sorted(k for keys in seen for k in keys) == sorted(set(words))


def test_custom_partitioner(tmp_path):
    text = "apple avocado banana blueberry cherry date elderberry fig grape apple\n" * 3
    (tmp_path / "in.txt").write_text(text)
    run(jobs.FirstLetterPartition, tmp_path / "in.txt", tmp_path / "out", reducers=3)
    assert part_lines(tmp_path / "out") == [
        ["apple\t6", "avocado\t3", "date\t3", "grape\t3"],  # a, d, g
        ["banana\t3", "blueberry\t3", "elderberry\t3"],  # b, e
        ["cherry\t3", "fig\t3"],  # c, f
    ]


class BadPartition(jobs.WordCount):
    def partition(self, key, n):
        return n


class IntKeys(corral.Job):
    def map(self, key, line):
        yield len(line), line

    def reduce(self, key, values):
        yield key, list(values)


def test_partition_out_of_range_fails_the_job_with_a_clear_message(tmp_path):
    (tmp_path / "in.txt").write_text("word\n")
    with pytest.raises(corral.JobFailed, match=r"partition\('word', 1\) returned 1, not a number in \[0, 1\)"):
        run(BadPartition, tmp_path / "in.txt", tmp_path / "out", retries=0, reducers=1)


def test_non_str_key_fails_the_job_with_a_clear_message(tmp_path):
    (tmp_path / "in.txt").write_text("word\n")
    with pytest.raises(corral.JobFailed) as failed:
        run(IntKeys, tmp_path / "in.txt", tmp_path / "out", retries=0)
    assert str(failed.value) == (
        "task map-0000 attempt 1: TypeError: map yielded the key 4 (of type int) with the value 'word': "
        "keys must be str"
    )


# --- secondary sort -----------------------------------------------------------------------------------


@pytest.fixture
def grouped_input(tmp_path):
    rng = random.Random(11)
    pairs = [(f"g{rng.randrange(5)}", rng.randrange(-1000, 1000)) for _ in range(4000)]
    (tmp_path / "in.txt").write_text("".join(f"{k} {v}\n" for k, v in pairs))
    expected = defaultdict(list)
    for k, v in pairs:
        expected[k].append(v)
    return tmp_path / "in.txt", expected


def _grouped_output(out) -> dict:
    return {k: json.loads(v) for k, v in (line.split("\t") for line in lines(out))}


SETUPS = {  # one map task in memory / several map tasks / several map tasks and spills
    "one-task": {},
    "many-tasks": {"split_size": "1KB", "map_bin_size": "4KB"},
    "spills": {"split_size": "1KB", "map_bin_size": "8KB", "memory_budget": "1KB"},
}


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_secondary_sort_values_reach_reduce_sorted(tmp_path, grouped_input, setup):
    path, expected = grouped_input
    run(jobs.SecondarySort, path, tmp_path / "out", reducers=2, **SETUPS[setup])
    assert _grouped_output(tmp_path / "out") == {k: sorted(v) for k, v in expected.items()}


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_secondary_sort_by_value_key(tmp_path, grouped_input, setup):
    path, expected = grouped_input
    run(jobs.SecondarySortByKey, path, tmp_path / "out", reducers=2, **SETUPS[setup])
    got = _grouped_output(tmp_path / "out")
    assert {k: [n for _, n in v] for k, v in got.items()} == {k: sorted(v, reverse=True) for k, v in expected.items()}
    assert all(name == f"n{n}" for v in got.values() for name, n in v)


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_secondary_sort_with_a_combine_that_yields_unsorted_values(tmp_path, grouped_input, setup):
    path, expected = grouped_input
    run(jobs.SecondarySortTopCombine, path, tmp_path / "out", reducers=2, **SETUPS[setup])
    got = _grouped_output(tmp_path / "out")
    assert got.keys() == expected.keys()
    for key, values in got.items():
        assert values == sorted(values), f"{key}: values reached reduce unsorted"
        assert values[-5:] == sorted(expected[key])[-5:]  # the top 5 survive every combine


def test_values_without_sort_values_arrive_in_map_order_within_a_task(tmp_path):
    (tmp_path / "in.txt").write_text("k 3\nk 1\nk 2\nj 9\nk 0\n")
    run(jobs.Grouped, tmp_path / "in.txt", tmp_path / "out")
    assert lines(tmp_path / "out") == ["j\t[9]", "k\t[3, 1, 2, 0]"]
    assert len(parts(tmp_path / "out")) == 1


def test_output_batches_mixing_value_types_and_a_none_key(tmp_path):
    # 20,000 keys through one reducer: the first output batch mixes types, the later ones are all int
    words = [f"w{i:05d}" for i in range(20_000)]
    (tmp_path / "in.txt").write_text("".join(" ".join(words[i : i + 100]) + "\n" for i in range(0, 20_000, 100)) * 2)
    run(jobs.SpecialValues, tmp_path / "in.txt", tmp_path / "out", reducers=1)
    expected = []
    for word in words:
        if word == "w00006":
            expected.append("alone 2")
            continue
        value = jobs.SPECIAL_VALUES.get(word, 2)
        expected.append(f"{word}\t{value if isinstance(value, str) else json.dumps(value)}")
    assert lines(tmp_path / "out") == expected
    assert expected[:7] == ["w00000\ttrue", "w00001\tnull", "w00002\t1.5", "w00003\ttext", 'w00004\t[1, "a"]',
                            "w00005\tfalse", "alone 2"]
