"""Planning: listing inputs (files, folders, globs, memory://), splits, map bins and reducers."""

from __future__ import annotations

from itertools import pairwise

import fsspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corral
from corral.fs import FileInfo
from corral.planner import MIN_PIECE, choose_reducers, list_inputs, make_splits, plan_map_tasks, task_sizes
from corral.split import Split

from . import jobs
from .util import counts, manifest, part_lines, parts, run, word_counter


@pytest.fixture
def tree(tmp_path):
    """in/a.txt, in/sub/b.txt, in/sub/deeper/c.log, plus names a job must skip inside folders."""
    root = tmp_path / "in"
    files = {
        "a.txt": "alpha\n",
        "sub/b.txt": "beta beta\n",
        "sub/deeper/c.log": "gamma\n",
        "_SUCCESS": "",
        "_corral/manifest.json": "{}",
        ".hidden": "secret\n",
        ".git/config": "secret\n",
        "sub/_tmp.txt": "secret\n",
        "sub/.swp": "secret\n",
        "_logs/x.txt": "secret\n",
        "sub/.cache/y.txt": "secret\n",
        "empty.txt": "",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_folder_is_listed_recursively_skipping_underscore_and_dot_names(tree):
    assert list_inputs([str(tree)]) == [
        FileInfo(str(tree / "a.txt"), 6),
        FileInfo(str(tree / "empty.txt"), 0),
        FileInfo(str(tree / "sub" / "b.txt"), 10),
        FileInfo(str(tree / "sub" / "deeper" / "c.log"), 6),
    ]


def test_folder_whose_own_name_starts_with_underscore_is_read(tmp_path):
    (tmp_path / "_in" / ".d").mkdir(parents=True)
    (tmp_path / "_in" / "x.txt").write_text("x\n")
    (tmp_path / "_in" / ".d" / "y.txt").write_text("y\n")
    assert [f.url for f in list_inputs([str(tmp_path / "_in")])] == [str(tmp_path / "_in" / "x.txt")]


def test_a_file_named_explicitly_is_read_whatever_its_name(tree):
    assert list_inputs([str(tree / "_SUCCESS"), str(tree / "sub" / ".swp")]) == [
        FileInfo(str(tree / "_SUCCESS"), 0),
        FileInfo(str(tree / "sub" / ".swp"), 7),
    ]


def test_globs_match_files_in_order(tree):
    assert [f.url for f in list_inputs([str(tree / "sub" / "**" / "*.log")])] == [
        str(tree / "sub" / "deeper" / "c.log")
    ]
    assert [f.url for f in list_inputs([str(tree / "*.txt")])] == [str(tree / "a.txt"), str(tree / "empty.txt")]


def test_inputs_keep_their_order_and_are_listed_once(tree):
    urls = [str(tree / "sub"), str(tree / "a.txt"), str(tree / "sub" / "b.txt")]
    assert [f.url for f in list_inputs(urls)] == [
        str(tree / "sub" / "b.txt"),
        str(tree / "sub" / "deeper" / "c.log"),
        str(tree / "a.txt"),
    ]


def test_links_are_followed_a_loop_listed_once_and_a_broken_link_is_no_file(tmp_path):
    root = tmp_path / "in"
    (root / "real").mkdir(parents=True)
    (root / "real" / "a.txt").write_text("alpha\n")
    (tmp_path / "elsewhere.txt").write_text("beta\n")
    (root / "b.txt").symlink_to(tmp_path / "elsewhere.txt")
    (root / "real" / "loop").symlink_to(root)  # a folder reached again: listed once
    (root / "broken.txt").symlink_to(tmp_path / "missing.txt")
    (root / "_hidden").symlink_to(tmp_path / "elsewhere.txt")
    assert list_inputs([str(root)]) == [FileInfo(str(root / "b.txt"), 5), FileInfo(str(root / "real" / "a.txt"), 6)]


def test_thousands_of_files_are_listed_in_order_with_their_sizes(tmp_path):
    root = tmp_path / "many"
    for d in (9, 10, 0):  # d10 sorts before d9, as names do
        (root / f"d{d}").mkdir(parents=True)
        for n in range(1500):
            (root / f"d{d}" / f"{n:05d}.log").write_bytes(b"x" * (n % 7))
    files = list_inputs([str(root)])
    assert [f.url for f in files] == [str(root / f"d{d}" / f"{n:05d}.log") for d in (0, 10, 9) for n in range(1500)]
    assert [f.size for f in files] == [n % 7 for _ in range(3) for n in range(1500)]


@pytest.mark.parametrize("name", ["missing.txt", "missing-dir/", "nothing-*.txt"])
def test_missing_input_is_a_usage_error_naming_it(tmp_path, name):
    url = str(tmp_path / name)
    with pytest.raises(corral.UsageError, match="^input not found: " + url.replace("*", r"\*") + "$"):
        list_inputs([url])


def test_job_over_a_folder_and_a_glob(tree, tmp_path):
    run(jobs.WordCount, [tree, tree / "sub" / "b*.txt"], tmp_path / "out")
    # sub/b.txt is named twice (by the folder and the glob) and read once
    assert counts(tmp_path / "out") == {"alpha": 1, "beta": 2, "gamma": 1}


def test_memory_urls_with_the_threads_backend(tmp_path):
    mem = fsspec.filesystem("memory")
    mem.pipe({
        "/corral-test/in/a.txt": b"one two\r\ntwo\n",
        "/corral-test/in/deep/b.txt": "three three three é\n".encode(),
        "/corral-test/in/_skip.txt": b"not me\n",
    })
    try:
        out = "memory://corral-test/out"
        result = corral.run(jobs.WordCount, "memory://corral-test/in", out, backend="threads", reducers=2)
        assert result["status"] == "succeeded"
        names = sorted(p.rsplit("/", 1)[1] for p in mem.ls("/corral-test/out", detail=False))
        assert names == ["_SUCCESS", "_corral", "part-00000", "part-00001"]
        text = "".join(mem.cat(f"/corral-test/out/part-0000{i}").decode() for i in range(2))
        assert dict(line.split("\t") for line in text.splitlines()) == {
            "one": "1", "two": "2", "three": "3", "é": "1"
        }
        assert not mem.exists("/corral-test/out/_corral/work")
    finally:
        mem.rm("/corral-test", recursive=True)


# --- splits and bins -------------------------------------------------------------------------------


def test_make_splits_cuts_byte_ranges_and_skips_empty_files():
    files = [FileInfo("a", 10), FileInfo("empty", 0), FileInfo("b", 3), FileInfo("c.gz", 100)]
    assert make_splits(files, 4) == [
        Split("a", 0, 4), Split("a", 4, 8), Split("a", 8, 10), Split("b", 0, 3), Split("c.gz", 0, 100)
    ]


MiB = 1 << 20


def task_bytes(tasks):
    return [sum(s.end - s.start for s in task) for task in tasks]


def test_one_file_is_cut_into_tasks_of_the_same_size_and_each_into_splits():
    # the case: 100 MiB with --split-size 8MB for 2 workers made 3 tasks (bins of 5, 5 and 2
    # splits); now 2 tasks of 50 MiB, each cut into splits of 8 MiB from its start
    tasks = plan_map_tasks([FileInfo("a", 100 * MiB)], 8 * MiB, 50 * MiB, 2)
    assert tasks == [
        [Split("a", s, min(s + 8 * MiB, 50 * MiB)) for s in range(0, 50 * MiB, 8 * MiB)],
        [Split("a", s, min(s + 8 * MiB, 100 * MiB)) for s in range(50 * MiB, 100 * MiB, 8 * MiB)],
    ]


def test_the_planners_task_count_is_a_multiple_of_the_workers():
    # 1000 MiB in tasks of at most 64 MiB: 16 tasks (not 15 full ones and a small one)
    assert task_bytes(plan_map_tasks([FileInfo("a", 1000 * MiB)], 64 * MiB, 64 * MiB, 2)) == [1000 * MiB // 16] * 16
    # 3 workers: 1000 MiB / 64 MiB = 16 tasks, rounded up to 18
    sizes = task_bytes(plan_map_tasks([FileInfo("a", 1000 * MiB)], 64 * MiB, 64 * MiB, 3))
    assert len(sizes) == 18 and max(sizes) - min(sizes) <= 1 and sum(sizes) == 1000 * MiB
    # fewer pieces than workers: one task per whole file
    assert len(plan_map_tasks([FileInfo("a.gz", 5 * MiB)], 64 * MiB, 1 * MiB, 4)) == 1
    # 3 whole files for 2 workers: 2 tasks (a multiple of 2), the makespan of 3 tasks
    assert [len(t) for t in plan_map_tasks([FileInfo(f"{i}.gz", 10 * MiB) for i in range(3)], MiB, 10 * MiB, 2)] \
        == [1, 2]


def test_many_small_compressed_files_are_balanced_by_size_not_first_fit():
    # 20,000 .gz files of 3-5 KB for 2 workers: first fit in bins of total/2 made [10047, 9952, 1]
    files = [FileInfo(f"log-{i:05d}.gz", 3000 + (i * 7919) % 2000) for i in range(20_000)]
    total = sum(f.size for f in files)
    tasks = plan_map_tasks(files, MiB, -(-total // 2), 2)
    sizes = task_bytes(tasks)
    assert len(tasks) == 2 and max(sizes) - min(sizes) <= 5000
    assert [s.url for task in tasks for s in task] == [f.url for f in files]  # in order, each once
    assert all(s.start == 0 and s.end == f.size for s, f in zip([s for t in tasks for s in t], files, strict=True))


def test_a_users_map_bin_size_is_never_exceeded_and_tasks_are_balanced():
    files = [FileInfo(f"f{i:02d}.txt", 75) for i in range(40)]  # under MIN_PIECE: not cut
    tasks = plan_map_tasks(files, MiB, 6 * 75, 2, fixed_bin_size=True)
    # ceil(40 / 6) = 7 tasks (not rounded to the workers), 40 files as 5 or 6 a task (first fit: 6 x 6 + 4)
    assert [len(t) for t in tasks] == [5, 6, 6, 5, 6, 6, 6]
    # a task each: the docker benchmark's --map-bin-size 1
    assert [len(t) for t in plan_map_tasks(files[:7], MiB, 1, 2, fixed_bin_size=True)] == [1] * 7
    # balanced cuts would overflow 100 bytes: first fit keeps within it
    files = [FileInfo(f"{i}.gz", size) for i, size in enumerate([60, 60, 60, 60, 60, 30])]
    assert all(sum(task_bytes([t])) <= 100 for t in plan_map_tasks(files, MiB, 100, 2, fixed_bin_size=True))


def test_a_boundary_near_a_files_edge_moves_to_the_edge():
    # total 2 MiB + 2 KiB for 2 workers: the middle falls 1 KiB into b.txt; b.txt is not cut there
    files = [FileInfo("a.txt", MiB), FileInfo("b.txt", MiB + 2048)]
    tasks = plan_map_tasks(files, MiB, MiB + 1024, 2)
    assert tasks == [[Split("a.txt", 0, MiB)], [Split("b.txt", 0, MiB), Split("b.txt", MiB, MiB + 2048)]]


def test_csv_and_compressed_files_are_never_cut():
    files = [FileInfo("a.csv", 10 * MiB), FileInfo("b.txt", 10 * MiB)]
    tasks = plan_map_tasks(files, MiB, 5 * MiB, 2, whole_files=True)
    assert [[(s.url, s.start, s.end) for s in t] for t in tasks] == [[("a.csv", 0, 10 * MiB)], [("b.txt", 0, 10 * MiB)]]
    assert plan_map_tasks([], MiB, MiB, 2) == [] == plan_map_tasks([FileInfo("e", 0)], MiB, MiB, 2)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(0, 3 * MiB), st.booleans()), min_size=1, max_size=40),
    split_size=st.sampled_from([100, 4096, MiB]),
    bin_size=st.integers(1, 8 * MiB),
    workers=st.integers(1, 5),
    fixed=st.booleans(),
)
def test_tasks_cover_every_byte_once_in_order_balanced(sizes, split_size, bin_size, workers, fixed):
    files = [FileInfo(f"f{i}.gz" if whole else f"f{i}.txt", size) for i, (size, whole) in enumerate(sizes)]
    tasks = plan_map_tasks(files, split_size, bin_size, workers, fixed_bin_size=fixed)
    splits = [s for task in tasks for s in task]
    assert all(task for task in tasks)
    # every byte of every non-empty file once, in order; whole files whole; no split over split_size
    expected = [f for f in files if f.size]
    covered: dict[str, int] = {}
    for s in splits:
        assert s.start == covered.get(s.url, 0)
        covered[s.url] = s.end
        if s.url.endswith(".gz"):
            assert (s.start, s.end) == (0, sizes[int(s.url[1:-3])][0])
        else:
            assert 0 < s.end - s.start <= split_size
    assert covered == {f.url: f.size for f in expected}
    assert list(dict.fromkeys(s.url for s in splits)) == [f.url for f in expected]
    byte_sizes = task_bytes(tasks)
    if fixed:  # within the size, unless one file's share is alone (a whole file, or not worth cutting)
        assert all(b <= bin_size or len({s.url for s in t}) == 1 for b, t in zip(byte_sizes, tasks, strict=True))
    if fixed or not expected:
        return
    largest_whole = max([f.size for f in expected if f.url.endswith(".gz")], default=0)
    # each boundary moves by at most half a whole file or a piece under MIN_PIECE
    assert max(byte_sizes) - min(byte_sizes) <= 4 * max(largest_whole / 2, min(MIN_PIECE, split_size))
    wanted = -(-sum(byte_sizes) // bin_size)
    rounded = -(-wanted // workers) * workers
    if wanted > 1 and not largest_whole and sum(byte_sizes) / rounded >= 3 * min(MIN_PIECE, split_size):
        assert len(tasks) == rounded  # the planner's count, rounded up to a multiple of the workers


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(1, 10**7), min_size=1, max_size=60), count=st.integers(1, 12))
def test_files_that_cannot_be_cut_go_to_the_task_their_middle_falls_in(sizes, count):
    """The rule of ``_balanced`` for whole files (what 20,000 small gzip logs are planned by, in a pass of
    bisections): file i is in the task numbered by how many boundaries ``k * total // count`` lie at or
    before its middle; empty tasks are left out, the order is kept."""
    from corral.planner import _balanced

    sized = [(f"f{i}.gz", size, False) for i, size in enumerate(sizes)]
    total = sum(sizes)
    bounds = [total * k // count for k in range(1, count)]
    position, task_of = 0, []
    for size in sizes:
        task_of.append(sum(1 for b in bounds if b <= position + size / 2))
        position += size
    expected = [[(f"f{i}.gz", 0, sizes[i], False) for i in range(len(sizes)) if task_of[i] == t]
                for t in sorted(set(task_of))]
    assert _balanced(sized, count, MIN_PIECE) == expected


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 10**6), min_size=1, max_size=60), bin_size=st.integers(1, 4 * 10**6),
       workers=st.integers(1, 4))
def test_the_planner_plans_whole_files_by_the_rule_of_balanced(sizes, bin_size, workers):
    """plan_map_tasks makes whole files' splits straight from the bisected boundaries: the same tasks as
    ``_balanced``'s pieces for the count the planner chooses (a multiple of the workers, at most a file each)."""
    from corral.planner import _balanced

    files = [FileInfo(f"f{i}.gz", size) for i, size in enumerate(sizes)]
    count = max(1, -(-sum(sizes) // bin_size))
    if count > 1:
        count = min(-(-count // workers) * workers, len(sizes))
        if count >= workers:
            count -= count % workers
    count = min(count, len(sizes))
    pieces = _balanced([(f.url, f.size, False) for f in files], count, MIN_PIECE)
    planned = plan_map_tasks(files, MiB, bin_size, workers)
    assert planned == [[Split(url, start, end) for url, start, end, _ in task] for task in pieces]


def test_task_sizes_and_reducer_choice():
    mib = 1 << 20
    # not set: small enough to give each of 4 workers a task, never below 1 MiB
    assert task_sizes(400 * mib, 64 * mib, 64 * mib, set(), 4) == (64 * mib, 64 * mib)
    assert task_sizes(400 * mib, 8 * mib, 64 * mib, {"split_size"}, 4) == (8 * mib, 64 * mib)
    assert task_sizes(40 * mib, 8 * mib, 64 * mib, {"split_size"}, 4) == (8 * mib, 10 * mib)
    assert task_sizes(10 * mib, 64 * mib, 64 * mib, set(), 4) == (mib * 5 // 2, mib * 5 // 2)
    assert task_sizes(1000, 64 * mib, 64 * mib, set(), 4) == (mib, mib)
    # set by the user: kept
    assert task_sizes(1000, 100, 300, {"split_size", "map_bin_size"}, 4) == (100, 300)
    # local cores and files: a task takes up to 4 times its memory budget of input (1 GB for 2 workers:
    # 2 tasks of 512 MB at the default budget, not 16 of 64 MB), never more than a worker's share
    gib = 1 << 30
    assert task_sizes(gib, 64 * mib, 64 * mib, set(), 2, local_budget=256 * mib) == (64 * mib, 512 * mib)
    assert task_sizes(10 * gib, 64 * mib, 64 * mib, set(), 2, local_budget=256 * mib) == (64 * mib, gib)
    assert task_sizes(gib, 64 * mib, 64 * mib, set(), 2) == (64 * mib, 64 * mib)
    assert task_sizes(gib, 64 * mib, 64 * mib, set(), 2, local_budget=64 * mib) == (64 * mib, 256 * mib)
    assert task_sizes(300 * mib, 64 * mib, 64 * mib, set(), 2, local_budget=256 * mib) == (64 * mib, 150 * mib)
    assert task_sizes(100 * mib, 64 * mib, 64 * mib, set(), 2, local_budget=256 * mib) == (50 * mib, 50 * mib)
    assert task_sizes(gib, 64 * mib, 32 * mib, {"map_bin_size"}, 2, local_budget=256 * mib) == (64 * mib, 32 * mib)
    assert choose_reducers(1000, 3, 5, 100, False, 2) == 5
    assert choose_reducers(1000, 3, None, 100, True, 2) == 10
    assert choose_reducers(1000, 1, None, 10_000, False, 8) == 1
    assert choose_reducers(1000, 5, None, 10_000, False, 8) == 5


@pytest.fixture
def small_files(tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    text = ""
    for i in range(40):
        content = f"file{i:02d} word{i % 7} shared\n" * 3
        (folder / f"f{i:02d}.txt").write_text(content)
        text += content
    return folder, text


def test_many_small_files_share_one_map_task(small_files, tmp_path):
    folder, text = small_files
    run(jobs.WordCount, folder, tmp_path / "out")
    stage = manifest(tmp_path / "out")["stages"][0]
    assert stage["map_tasks"] == 1
    assert len(stage["plan"][0]) == 40
    assert counts(tmp_path / "out") == word_counter(text)


def test_map_bin_size_packs_small_files(small_files, tmp_path):
    folder, text = small_files
    size = (folder / "f00.txt").stat().st_size  # every file has the same size (< 100 bytes)
    run(jobs.WordCount, folder, tmp_path / "out", map_bin_size=str(size * 6))
    stage = manifest(tmp_path / "out")["stages"][0]
    assert [len(b) for b in stage["plan"]] == [5, 6, 6, 5, 6, 6, 6]  # balanced, none over 6 files
    assert stage["map_tasks"] == 7
    assert counts(tmp_path / "out") == word_counter(text)


@pytest.mark.parametrize("reducers", [1, 3, 8])
def test_reducers_gives_that_many_part_files(small_files, tmp_path, reducers):
    folder, text = small_files
    run(jobs.WordCount, folder, tmp_path / "out", reducers=reducers)
    assert len(parts(tmp_path / "out")) == reducers
    assert manifest(tmp_path / "out")["stages"][0]["reduce_tasks"] == reducers
    assert counts(tmp_path / "out") == word_counter(text)


def test_more_reducers_than_keys_leaves_empty_part_files(tmp_path):
    (tmp_path / "in.txt").write_text("only\n")
    run(jobs.WordCount, tmp_path / "in.txt", tmp_path / "out", reducers=4)
    assert sorted(map(len, part_lines(tmp_path / "out"))) == [0, 0, 0, 1]


def test_reduce_bin_size_sets_the_number_of_reducers(small_files, tmp_path):
    folder, text = small_files
    total = sum(p.stat().st_size for p in folder.iterdir())
    run(jobs.WordCount, folder, tmp_path / "out", reduce_bin_size="1KB")
    assert len(parts(tmp_path / "out")) == -(-total // 1024) == manifest(tmp_path / "out")["stages"][0]["reduce_tasks"]
    assert counts(tmp_path / "out") == word_counter(text)


def test_split_size_cuts_one_file_into_many_map_splits(tmp_path):
    text = "".join(f"w{i % 13} " * 5 + "\n" for i in range(2000))
    (tmp_path / "in.txt").write_text(text)
    run(jobs.WordCount, tmp_path / "in.txt", tmp_path / "out", split_size="2KB", map_bin_size="8KB")
    stage = manifest(tmp_path / "out")["stages"][0]
    size, url = len(text), str(tmp_path / "in.txt")
    tasks = -(-size // 8192)  # 5 tasks of the same size, each in splits of 2 KB from its start
    bounds = [size * k // tasks for k in range(tasks + 1)]
    assert stage["plan"] == [
        [[url, s, min(s + 2048, end)] for s in range(start, end, 2048)] for start, end in pairwise(bounds)
    ]
    assert counts(tmp_path / "out") == word_counter(text)


def test_empty_input_folder_gives_empty_output(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.txt").write_text("")
    result = run(jobs.WordCount, tmp_path / "in", tmp_path / "out")
    assert result["status"] == "succeeded"
    assert part_lines(tmp_path / "out") == [[]]
    assert (tmp_path / "out" / "_SUCCESS").exists()
