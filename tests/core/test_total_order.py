"""``total_order``: reduce partitions that are key ranges sampled from the map's keys, so the part files
follow each other in key order and are of about the same size, however skewed the keys."""

from __future__ import annotations

import json
import random
from bisect import bisect_right
from collections import Counter

import pytest

from corral.job import Step
from corral.shuffle import MapBuffer
from corral.split import Split
from corral.tasks import sample_keys
from corral.total_order import RangePartition, range_bounds, sample_windows

from . import jobs
from .util import cli, lines, manifest, part_lines, run


def skewed_lines(count: int, seed: int = 3) -> list[str]:
    """``KEY<TAB>n`` lines whose keys crowd toward "a": the first letter is "a" + 26 * u ** 4."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [
        letters[int(26 * rng.random() ** 4)] + "".join(rng.choice(letters) for _ in range(7)) + f"\t{n}"
        for n in range(count)
    ]


@pytest.fixture
def skewed_input(tmp_path):
    text = skewed_lines(20_000)
    (tmp_path / "in.txt").write_text("\n".join(text) + "\n")
    return tmp_path / "in.txt", text


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_part_files_are_in_total_order_and_balanced_on_skewed_keys(skewed_input, tmp_path, backend):
    path, text = skewed_input
    # 44% of the keys start with "a": a partitioner that assumed uniform first letters would give
    # reducer 0 of 4 (a..f) over 68% of them
    assert sum(line[0] < "g" for line in text) > 0.68 * len(text)
    run(jobs.TotalOrderSort, path, tmp_path / "out", backend=backend, reducers=4, split_size="64KB")
    expected = sorted(text, key=lambda line: line.split("\t")[0])
    assert lines(tmp_path / "out") == expected  # part-00000, part-00001, ... concatenated: sorted
    sizes = [len(part) for part in part_lines(tmp_path / "out")]
    assert len(sizes) == 4 and max(sizes) <= 1.5 * min(sizes), sizes
    stage = manifest(tmp_path / "out")["stages"][0]
    assert stage["map_tasks"] > 1 and len(stage["bounds"]) == 3 and stage["bounds"] == sorted(stage["bounds"])


def test_keys_from_map_final_are_sampled_too(tmp_path):
    words = [f"w{n:04d}" for n in range(3000)]
    (tmp_path / "in.txt").write_text("".join(f"{w} {w}\n" for w in words))
    run(jobs.TotalOrderInMapper, tmp_path / "in.txt", tmp_path / "out", reducers=3)
    assert lines(tmp_path / "out") == [f"{w}\t2" for w in words]
    assert min(len(part) for part in part_lines(tmp_path / "out")) > 500


def test_a_later_stage_is_ordered_by_its_own_keys(tmp_path):
    text = "".join(f"w{n} " * (n % 97 + 1) + "\n" for n in range(500))
    (tmp_path / "in.txt").write_text(text)
    run(jobs.TwoStageTotalOrder, tmp_path / "in.txt", tmp_path / "out", reducers=3, split_size="4KB")
    counts = Counter(text.split())
    by_count: dict[int, list[str]] = {}
    for word, count in counts.items():
        by_count.setdefault(count, []).append(word)
    assert lines(tmp_path / "out") == [f"{c:08d}\t{json.dumps(sorted(w))}" for c, w in sorted(by_count.items())]
    assert all(part_lines(tmp_path / "out"))  # three non-empty ranges


def test_a_resumed_run_keeps_the_journaled_ranges(tmp_path, capsys, skewed_input):
    path, text = skewed_input
    fail = tmp_path / "fail"
    fail.write_text("")
    argv = ["run", f"{jobs.__file__}:TotalOrderSort", path, "--out", tmp_path / "out", "--reducers", "4",
            "--split-size", "64KB", "--backend", "threads", "--retries", "0", "--arg", f"fail={fail}"]
    code, _, err = cli(capsys, *argv)
    assert code == 1 and "reduce failing on purpose" in err
    journal = [json.loads(line) for line in (tmp_path / "out" / "_corral" / "journal.jsonl").read_text().splitlines()]
    (plan,) = [r for r in journal if r.get("t") == "stage"]
    assert len(plan["bounds"]) == 3
    fail.unlink()
    code, _, err = cli(capsys, *argv, "--resume")
    assert code == 0, err
    assert manifest(tmp_path / "out")["stages"][0]["bounds"] == plan["bounds"]
    assert lines(tmp_path / "out") == sorted(text, key=lambda line: line.split("\t")[0])


def test_total_order_with_a_partition_or_without_a_reduce_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("a\tb\n")
    for job, message in (
        ("TotalOrderWithPartition", "TotalOrderWithPartition defines partition() and total_order = True: keep "
                                    "one of them"),
        ("TotalOrderMapOnly", "TotalOrderMapOnly: total_order = True needs a reduce (the order is the reducers' "
                              "key order)"),
    ):
        code, _, err = cli(capsys, "run", f"{jobs.__file__}:{job}", tmp_path / "in.txt", "--out", tmp_path / job,
                           "--backend", "threads")
        assert (code, err) == (2, f"corral: error: {message}\n")
        assert not (tmp_path / job / "_SUCCESS").exists()


def test_a_map_that_fails_while_sampling_fails_the_job_with_its_traceback(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("k1\tv\nbad line\nk2\tv\n")
    code, _, err = cli(capsys, "run", f"{jobs.__file__}:TotalOrderSort", tmp_path / "in.txt", "--out",
                       tmp_path / "out", "--backend", "threads", "--arg", "bad_map=1", "--reducers", "2")
    assert code == 1
    first, *trace = err.splitlines()
    assert first == "corral: job failed: sampling the keys of a total order: ValueError: cannot map 'bad line'"
    assert trace[0] == "Traceback (most recent call last):" and "in map" in err and "corral/" not in err


# --- the parts ---------------------------------------------------------------------------------------


def test_range_bounds_are_the_sampled_keys_at_even_quantiles():
    keys = [f"k{n:03d}" for n in range(100)]
    random.Random(1).shuffle(keys)
    assert range_bounds(keys, 4) == ["k025", "k050", "k075"]
    assert range_bounds(keys, 1) == [] == range_bounds([], 4)
    # a key holding half the sample: one bound for it, the ranges after it share the rest
    assert range_bounds(["a"] * 50 + [f"b{n:02d}" for n in range(50)], 4) == ["b00", "b25"]
    assert range_bounds(["x"] * 10, 3) == []  # one distinct key: one range


def test_range_partition_sends_a_bound_to_the_range_it_starts():
    partition = RangePartition(["g", "p"])
    assert [partition(k, 3) for k in ("a", "f~", "g", "go", "p", "zz")] == [0, 0, 1, 1, 2, 2]
    assert partition("zz", 2) == 1  # never past the last partition


def test_a_map_buffer_cuts_its_sorted_keys_at_the_bounds(tmp_path):
    keys = [f"{c}{n}" for c in "abcdefgh" for n in range(50)]
    random.Random(2).shuffle(keys)
    bounds = ["b", "d10", "g"]
    outputs = []
    for partition in (RangePartition(bounds), lambda key, n: bisect_right(bounds, key)):  # fast path, call path
        buffer = MapBuffer(5, 1 << 20, partition=partition)
        for key in keys:
            buffer.groups[key].append(1)
        outputs.append(buffer._sorted_partitions())
    assert outputs[0] == outputs[1]
    # a*; b*, c*, "d0", "d1" (below "d10" as strings); "d10".."d9", e*, f*; g*, h*; nothing (3 bounds, 5 partitions)
    assert [len(p) for p in outputs[0]] == [50, 102, 148, 100, 0]
    assert outputs[0][2][0] == "d10" and outputs[0][3][0] == "g0" and outputs[0][1][-1] == "d1"


def test_sample_windows_are_spread_evenly_and_whole_files_read_from_their_start():
    tasks = [[Split("a.txt", 0, 1000)], [Split("a.txt", 1000, 2000), Split("b.gz", 0, 1000)]]
    assert sample_windows(tasks, windows=6, size=10) == [
        Split("a.txt", 245, 255), Split("a.txt", 745, 755),  # centred at (k + 0.5) * 3000 / 6
        Split("a.txt", 1245, 1255), Split("a.txt", 1745, 1755),
        Split("b.gz", 0, 1000),  # two windows fall in it: read once
    ]
    small = sample_windows([[Split("s.txt", 0, 50)]], windows=10, size=16 << 10)
    assert small == [Split("s.txt", 5 * k, 5 * k + 5) for k in range(10)]  # windows of 5 bytes cover it


def test_sample_keys_runs_the_map_over_each_window(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("".join(f"{n:04d} x\n" for n in range(1000)))  # 7 bytes a line
    step = Step(map=lambda key, line: ((word, 1) for word in line.split()))
    windows = [Split(str(path), 700 * k + 3, 700 * k + 30) for k in range(3)]
    assert sample_keys(step, windows, "lines", "strict", False, per_window=6) == [
        "0001", "x", "0002", "x", "0003", "x", "0101", "x", "0102", "x", "0103", "x", "0201", "x", "0202", "x",
        "0203", "x",
    ]
