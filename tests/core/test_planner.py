"""Planning: listing inputs (files, folders, globs, memory://), splits, map bins and reducers."""

from __future__ import annotations

import fsspec
import pytest

import corral
from corral.fs import FileInfo
from corral.planner import choose_reducers, list_inputs, make_splits, pack_bins, task_sizes
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


def test_pack_bins_fills_bins_in_order_and_a_big_split_is_alone():
    splits = [Split("a", 0, 3), Split("b", 0, 3), Split("c", 0, 5), Split("d", 0, 1), Split("e", 0, 10)]
    assert pack_bins(splits, 6) == [
        [Split("a", 0, 3), Split("b", 0, 3)], [Split("c", 0, 5), Split("d", 0, 1)], [Split("e", 0, 10)]
    ]
    assert pack_bins([], 6) == []


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
    assert [len(b) for b in stage["plan"]] == [6] * 6 + [4]
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
    size = len(text)
    assert stage["plan"] == [
        [[str(tmp_path / "in.txt"), s, min(s + 2048, size)] for s in range(b, min(b + 8192, size), 2048)]
        for b in range(0, size, 8192)
    ]
    assert counts(tmp_path / "out") == word_counter(text)


def test_empty_input_folder_gives_empty_output(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.txt").write_text("")
    result = run(jobs.WordCount, tmp_path / "in", tmp_path / "out")
    assert result["status"] == "succeeded"
    assert part_lines(tmp_path / "out") == [[]]
    assert (tmp_path / "out" / "_SUCCESS").exists()
