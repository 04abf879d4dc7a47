"""The Job API: map/combine/reduce, *_init/*_final, map-only jobs, multi-stage jobs, counters."""

from __future__ import annotations

from collections import Counter

import pytest

import corral

from . import jobs
from .util import cli, counts, lines, manifest, part_lines, parts, run, word_counter

TEXT = "the quick brown fox\njumps over the lazy dog\n\nthe end é\r\n" * 20


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text(TEXT, newline="")
    return path


def test_map_combine_reduce_generators(text_file, tmp_path):
    run(jobs.WordCount, text_file, tmp_path / "out", reducers=2)
    assert counts(tmp_path / "out") == word_counter(TEXT)


def test_map_init_and_map_final_in_mapper_combining(text_file, tmp_path):
    run(jobs.InMapperWordCount, text_file, tmp_path / "out", reducers=1, split_size="100", map_bin_size="400")
    got = counts(tmp_path / "out")
    assert got.pop("~total") == len(TEXT.split())  # reduce_init / reduce_final, one reducer
    assert got == word_counter(TEXT)
    m = manifest(tmp_path / "out")
    assert m["counters"] == {"wc": {"map_final calls": m["stages"][0]["map_tasks"]}}
    assert m["stages"][0]["map_tasks"] == -(-len(TEXT.encode()) // 400)


def test_reduce_init_and_final_run_once_per_reduce_task(text_file, tmp_path):
    run(jobs.InMapperWordCount, text_file, tmp_path / "out", reducers=3)
    finals = [line for part in part_lines(tmp_path / "out") for line in part if line.startswith("~total\t")]
    assert len(finals) == 3
    assert sum(int(line.split("\t")[1]) for line in finals) == len(TEXT.split())


def test_map_only_job_writes_map_output_as_part_files_in_input_order(tmp_path):
    text = "".join(f"line {i}\n" for i in range(3000))
    (tmp_path / "in.txt").write_text(text)
    run(jobs.Cat, tmp_path / "in.txt", tmp_path / "out", split_size="2KB", map_bin_size="8KB")
    m = manifest(tmp_path / "out")
    assert len(parts(tmp_path / "out")) == m["stages"][0]["map_tasks"] >= 3
    assert m["stages"][0]["reduce_tasks"] == 0
    assert lines(tmp_path / "out") == text.splitlines()


def test_map_only_job_with_map_final(tmp_path):
    (tmp_path / "in.txt").write_text("x\n" * 1000)
    run(jobs.MapFinalOnly, tmp_path / "in.txt", tmp_path / "out", split_size="500", map_bin_size="1000")
    assert part_lines(tmp_path / "out") == [["lines\t500"], ["lines\t500"]]


def test_multi_stage_job_feeds_each_stage_the_previous_output_with_types_kept(tmp_path):
    text = "a b c a b a\nd d é\n" * 7
    (tmp_path / "in.txt").write_text(text)
    run(jobs.MultiStage, tmp_path / "in.txt", tmp_path / "out", reducers=2)
    m = manifest(tmp_path / "out")
    assert [s["stage"] for s in m["stages"]] == [0, 1, 2]
    assert [s["reduce_tasks"] for s in m["stages"]] == [2, 2, 0]
    by_count: dict[int, list[str]] = {}
    for word, n in word_counter(text).items():
        by_count.setdefault(n, []).append(word)
    assert sorted(lines(tmp_path / "out")) == sorted(f"{n}x\t{' '.join(sorted(w))}" for n, w in by_count.items())
    assert not (tmp_path / "out" / "_corral" / "work").exists()


def test_multi_stage_job_with_several_map_tasks_per_stage(tmp_path):
    text = "".join(f"w{i % 41} w{i % 7}\n" for i in range(5000))
    (tmp_path / "in.txt").write_text(text)
    run(jobs.MultiStage, tmp_path / "in.txt", tmp_path / "out", reducers=3, split_size="4KB", map_bin_size="8KB")
    m = manifest(tmp_path / "out")
    assert m["stages"][0]["map_tasks"] > 3
    assert m["stages"][1]["input_bytes"] > 0 and m["stages"][1]["reduce_tasks"] == 3
    by_count: dict[int, list[str]] = {}
    for word, n in word_counter(text).items():
        by_count.setdefault(n, []).append(word)
    assert sorted(lines(tmp_path / "out")) == sorted(f"{n}x\t{' '.join(sorted(w))}" for n, w in by_count.items())


class TwoMapOnlyStages(corral.Job):
    def steps(self):
        return [corral.Step(map=self.parse), corral.Step(map=self.check)]

    def parse(self, key, line):
        yield line, {"n": len(line), "float": 0.5, "none": None, "list": [1, [2]]}

    def check(self, key, value):
        assert value == {"n": len(key), "float": 0.5, "none": None, "list": [1, [2]]}, value
        yield key, value["n"]


def test_map_only_stage_feeding_a_map_only_stage(tmp_path):
    (tmp_path / "in.txt").write_text("a\nbb\nccc\n")
    run(TwoMapOnlyStages, tmp_path / "in.txt", tmp_path / "out")
    assert lines(tmp_path / "out") == ["a\t1", "bb\t2", "ccc\t3"]


def test_a_key_the_combine_drops_never_reaches_reduce(tmp_path):
    text = "a a b c c c d\n" * 1 + "e f f\n"
    (tmp_path / "in.txt").write_text(text)
    run(jobs.DropSingletons, tmp_path / "in.txt", tmp_path / "out", retries=0)
    assert counts(tmp_path / "out") == {"a": 2, "c": 3, "f": 2}


def test_a_combine_that_drops_keys_with_spills(tmp_path):
    text = "".join(f"w{i % 50} u{i}\n" for i in range(3000))  # the u* words are all singletons
    (tmp_path / "in.txt").write_text(text)
    run(jobs.DropSingletons, tmp_path / "in.txt", tmp_path / "out", retries=0, memory_budget="1KB",
        split_size="1KB", map_bin_size="16KB", reducers=2)
    got = counts(tmp_path / "out")
    assert set(got) == {f"w{i}" for i in range(50)}


class BadCombine(jobs.WordCount):
    def combine(self, word, counts):
        yield word.upper(), sum(counts)


def test_combine_must_keep_its_key(tmp_path):
    (tmp_path / "in.txt").write_text("a\n")
    with pytest.raises(corral.JobFailed, match="combine must yield the key it was given: got 'A' for 'a'"):
        run(BadCombine, tmp_path / "in.txt", tmp_path / "out", retries=0)


class Args(corral.Job):
    def map(self, key, line):
        yield None, f"{self.args['prefix']}{line}"


def test_job_args_reach_every_task(tmp_path):
    (tmp_path / "in.txt").write_text("a\nb\n")
    run(Args, tmp_path / "in.txt", tmp_path / "out", arg=["prefix=> "])
    assert lines(tmp_path / "out") == ["> a", "> b"]


# --- counters ---------------------------------------------------------------------------------------

COUNTER_TEXT = "a b\n\nc d e\n   \nf\n" * 40
EXPECTED_COUNTERS = {
    "lines": {"empty": 80, "total": 200},
    "reduce": {"keys": 6},
    "words": {"total": 240},
}


@pytest.fixture
def counter_input(tmp_path):
    (tmp_path / "in.txt").write_text(COUNTER_TEXT)
    return tmp_path / "in.txt"


def test_counters_are_totalled_over_tasks(counter_input, tmp_path):
    result = run(jobs.CountersJob, counter_input, tmp_path / "out", split_size="100", map_bin_size="300", reducers=3)
    assert result["stages"][0]["map_tasks"] == 3
    assert result["counters"] == manifest(tmp_path / "out")["counters"] == EXPECTED_COUNTERS


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_counters_of_a_failed_attempt_are_not_counted(counter_input, tmp_path, backend):
    marker = tmp_path / "failed-once"
    result = run(
        jobs.CountersJob, counter_input, tmp_path / "out", backend=backend,
        arg=[f"fail_once={marker}"], split_size="100", map_bin_size="300", reducers=3,
    )
    assert marker.exists()
    tasks = result["stages"][0]["tasks"]
    retried = [name for name, t in tasks.items() if len(t["attempts"]) == 2]
    assert len(retried) == 1 and tasks[retried[0]]["attempts"][0]["status"] == "failed"
    assert result["counters"] == EXPECTED_COUNTERS  # exactly as if every task had run once
    assert counts(tmp_path / "out") == word_counter(COUNTER_TEXT)


def test_counters_are_printed_at_the_end(counter_input, tmp_path, capsys):
    code, out, err = cli(
        capsys, "run", f"{jobs.__file__}:CountersJob", counter_input, "--out", tmp_path / "out", "--backend", "threads"
    )
    assert code == 0, err
    assert out == ""
    assert (
        "Counters:\n"
        "  lines\n    empty: 80\n    total: 200\n"
        "  reduce\n    keys: 6\n"
        "  words\n    total: 240\n"
    ) in err
    assert "corral: job succeeded in " in err and f"output in {tmp_path / 'out'}" in err


def test_quiet_prints_nothing(counter_input, tmp_path, capsys):
    code, out, err = cli(
        capsys, "run", f"{jobs.__file__}:CountersJob", counter_input, "--out", tmp_path / "out", "--backend", "threads",
        "-q",
    )
    assert (code, out, err) == (0, "", "")


class Amounts(corral.Job):
    def map(self, key, line):
        self.increment_counter("bytes", "in", len(line))
        self.increment_counter("bytes", "negative", -1)
        return ()


def test_counter_amounts(tmp_path):
    (tmp_path / "in.txt").write_text("abc\nde\n")
    assert run(Amounts, tmp_path / "in.txt", tmp_path / "out")["counters"] == {"bytes": {"in": 5, "negative": -2}}
    assert Counter(lines(tmp_path / "out")) == Counter()


def test_a_job_class_defined_in_a_function_is_refused_clearly(tmp_path):
    class Local(corral.Job):
        pass

    (tmp_path / "in.txt").write_text("a\n")
    with pytest.raises(corral.UsageError, match=r"job class .*Local is defined inside a function"):
        run(Local, tmp_path / "in.txt", tmp_path / "out")


def test_step_reducers_and_a_failure_in_a_later_stage(tmp_path):
    (tmp_path / "ok.txt").write_text("a b\nc a\n")
    result = run(jobs.TwoStagesFailingInTheSecond, tmp_path / "ok.txt", tmp_path / "out", reducers=3)
    assert [s["reduce_tasks"] for s in result["stages"]] == [3, 2]  # Step(reducers=2) wins in stage 2
    assert len(parts(tmp_path / "out")) == 2
    assert counts(tmp_path / "out") == {"a": 2, "b": 1, "c": 1}
    assert result["counters"] == {"stage 1": {"lines": 2}}
    (tmp_path / "boom.txt").write_text("a boom\n")
    with pytest.raises(corral.JobFailed) as failed:
        run(jobs.TwoStagesFailingInTheSecond, tmp_path / "boom.txt", tmp_path / "failed", reducers=1, retries=0)
    first_line = str(failed.value).splitlines()[0]
    assert first_line.startswith("stage 2 task reduce-000")
    assert first_line.endswith(" attempt 1: ZeroDivisionError: boom in stage 2")
    assert manifest(tmp_path / "failed")["status"] == "failed"
    assert not (tmp_path / "failed" / "_SUCCESS").exists() and not parts(tmp_path / "failed")


# --- map_batch: a chunk of records per call -------------------------------------------------------


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_map_batch_gets_chunks_of_lines(text_file, tmp_path, backend):
    run(jobs.BatchWordCount, text_file, tmp_path / "out", backend=backend, reducers=2, split_size="300")
    assert counts(tmp_path / "out") == word_counter(TEXT)
    m = manifest(tmp_path / "out")
    # a call or two per split (each far below a 4 MB chunk; the last line may end past the split), not one per line
    splits = sum(len(bin_) for bin_ in m["stages"][0]["plan"])
    assert splits <= m["counters"]["batch"]["calls"] <= 2 * splits < len(TEXT.splitlines()) // 5


def test_map_batch_is_called_per_chunk_of_a_big_split(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("alpha beta\n" * 1_000_000)  # 11 MB in one split: about 3 chunks of 4 MB
    run(jobs.BatchWordCount, path, tmp_path / "out", split_size="64MB", reducers=1)
    assert counts(tmp_path / "out") == {"alpha": 1_000_000, "beta": 1_000_000}
    assert manifest(tmp_path / "out")["counters"]["batch"]["calls"] == 3


def test_map_batch_gets_key_value_tuples_for_tsv_input(tmp_path):
    (tmp_path / "in.tsv").write_text("a\t1\nno tab here\nb\t2\n")
    run(jobs.BatchTsv, tmp_path / "in.tsv", tmp_path / "out")
    assert lines(tmp_path / "out") == ['["a", "1"]', '[null, "no tab here"]', '["b", "2"]']


def test_map_batch_in_steps_gets_the_previous_stages_records(tmp_path):
    (tmp_path / "in.txt").write_text("a b a\nc a b\n")
    run(jobs.BatchStages, tmp_path / "in.txt", tmp_path / "out", reducers=1)
    assert lines(tmp_path / "out") == ['1\t["c"]', '2\t["b"]', '3\t["a"]']


def test_a_step_needs_map_or_map_batch():
    with pytest.raises(TypeError, match="a Step needs map or map_batch"):
        corral.Step()


# --- what map and reduce yield must be pairs ------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (jobs.BadMapPair, "map must yield (key, value) pairs, but it yielded 'the line'"),
        (jobs.BadReducePair, "reduce must yield (key, value) pairs, but it yielded ('line', 1, 'extra')"),
    ],
)
def test_yielding_something_else_than_pairs_fails_the_job_naming_it(tmp_path, job, message):
    (tmp_path / "in.txt").write_text("the line\n")
    with pytest.raises(corral.JobFailed) as failed:
        run(job, tmp_path / "in.txt", tmp_path / "out", retries=0)
    assert message in str(failed.value)
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_in_mapper_combining_with_a_combine(text_file, tmp_path):
    run(jobs.InMapperWithCombine, text_file, tmp_path / "out", reducers=1, split_size="300")
    got = counts(tmp_path / "out")
    assert got.pop("~total") == len(TEXT.split())
    assert got == word_counter(TEXT)


def test_map_final_may_repeat_keys_and_add_to_maps_keys(tmp_path):
    (tmp_path / "in.txt").write_text("x\ny\n")
    run(jobs.MapFinalRepeatsKeys, tmp_path / "in.txt", tmp_path / "out", reducers=1)
    assert lines(tmp_path / "out") == ["a\t[1, 2]", 'line\t["final", "x", "y"]']


@pytest.mark.parametrize("job, message", [
    ("RequirementString", "invalid value for RequirementString.requirements: 'requests' is a string, not a list of "
                          "requirement strings (write requirements = ['requests'])"),
    ("RequirementNumbers", "invalid value for RequirementNumbers.requirements: ['requests', 2] is not a list of "
                           "requirement strings"),
    ("FilesString", "invalid value for FilesString.files: 'jobs.py' is a string, not a list of paths "
                    "(write files = ['jobs.py'])"),
])
def test_list_attributes_of_a_job_must_be_lists(text_file, tmp_path, capsys, job, message):
    code, _, err = cli(capsys, "run", f"{jobs.__file__}:{job}", text_file, "--out", tmp_path / "out",
                       "--backend", "threads")
    assert (code, err) == (2, f"corral: error: {message}\n")
    assert not (tmp_path / "out").exists()
