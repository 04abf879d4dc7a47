"""``corral.testing.run_job``: a real run in this process (planner, map tasks, shuffle, combiner,
partitioner, reducers, commit), its output pairs in part-file order and its counters; two map tasks and
two reducers by default, so that a job that only works as one task shows it."""

from __future__ import annotations

import os

import pytest

from corral import Job, JobFailed, Step, UsageError
from corral.testing import SharedStateError, run_job


class WordCount(Job):
    def map(self, key, line):
        for word in line.split():
            self.increment_counter("words", "seen")
            yield word, 1

    def combine(self, key, values):
        self.increment_counter("words", "combined keys")
        yield key, sum(values)

    def reduce(self, key, values):
        yield key, sum(values)


def test_word_count_output_and_counters():
    result = run_job(WordCount, ["the cat", "the dog the end"])
    assert sorted(result.output) == [("cat", 1), ("dog", 1), ("end", 1), ("the", 3)]
    assert result.counters["words"]["seen"] == 6
    # the combiner ran in each of the two map tasks: "the" is combined in both
    assert result.counter("words", "combined keys") == 5
    stage = result.manifest["stages"][0]
    assert (stage["map_tasks"], stage["reduce_tasks"]) == (2, 2)
    assert result.manifest["backend"] == "threads"


def test_pairs_come_in_part_file_order_as_the_partitioner_sends_them():
    class ToPartition(WordCount):
        def partition(self, key, partitions):
            return 0 if key < "m" else 1

    result = run_job(ToPartition, ["zebra apple", "mango banana apple"])
    assert result.parts == [[("apple", 2), ("banana", 1)], [("mango", 1), ("zebra", 1)]]
    assert result.output == [("apple", 2), ("banana", 1), ("mango", 1), ("zebra", 1)]
    assert run_job(ToPartition, ["zebra apple"], reducers=3).parts == [[("apple", 1)], [("zebra", 1)], []]


class LineCount(Job):
    """Counts lines in map_init/map/map_final: right only when the whole input is one task."""

    def map_init(self):
        self.lines = 0

    def map(self, key, line):
        self.lines += 1
        return ()

    def map_final(self):
        yield "lines", self.lines


def test_state_kept_in_map_init_shows_up_with_two_map_tasks():
    assert run_job(LineCount, ["a", "b", "c", "d"]).output == [("lines", 2), ("lines", 2)]
    assert run_job(LineCount, ["a", "b", "c", "d"], map_tasks=1).output == [("lines", 4)]
    assert run_job(LineCount, ["a", "b", "c", "d", "e"], map_tasks=3).output == [
        ("lines", 1), ("lines", 2), ("lines", 2)]


class Dedupe(Job):
    """Keeps the words it has seen in a class attribute: every task of a worker process shares it."""

    seen: set = set()

    def map(self, key, line):
        for word in line.split():
            if word not in self.seen:
                self.seen.add(word)
                yield word, 1


def test_a_job_keeping_state_in_a_class_attribute_is_caught():
    Dedupe.seen = set()
    with pytest.raises(SharedStateError) as caught:
        run_job(Dedupe, ["a b", "b c"])
    message = str(caught.value)
    assert message.startswith("the job changed class attribute while it ran: Dedupe.seen (was set(), now {")
    assert "Keep a task's state on self (set it in map_init or reduce_init)" in message
    # a counter bumped through type(self), and an attribute the run creates
    class Tally(Job):
        calls = 0

        def map(self, key, line):
            type(self).calls += 1
            type(self).last = line
            yield line, 1

    with pytest.raises(SharedStateError, match=r"Tally\.calls \(was 0, now 2\); Tally\.last \(set by the run\)"):
        run_job(Tally, ["x", "y"])


def test_check_class_state_can_be_turned_off_for_a_cache():
    class Cached(Job):
        table: dict = {}

        def map(self, key, line):
            if not self.table:
                type(self).table = {"a": 1, "b": 2}  # the same for every task: a cache
            yield line, self.table.get(line, 0)

    assert sorted(run_job(Cached, ["a", "b"], check_class_state=False).output) == [("a", 1), ("b", 2)]


class TwoStages(Job):
    def steps(self):
        return [Step(map=self.words, reduce=self.count), Step(map=self.invert, reduce=self.top)]

    def words(self, key, line):
        for word in line.split():
            yield word, 1

    def count(self, key, values):
        yield key, sum(values)

    def invert(self, word, count):
        yield "top", [count, word]

    def top(self, key, values):
        yield key, max(values)


def test_a_later_stage_on_pairs():
    assert run_job(TwoStages, ["b a b", "c b a"]).output == [("top", [3, "b"])]
    result = run_job(TwoStages, [("x", 7), ("y", 9), ("z", 1)], from_stage=2)
    assert result.output == [("top", [9, "y"])]
    assert result.manifest["stages"][0]["map_tasks"] == 2 and result.manifest["stages"][0]["stage"] == 1
    with pytest.raises(UsageError, match="TwoStages has 2 stages: there is no stage 3 to start from"):
        run_job(TwoStages, [("x", 1)], from_stage=3)


def test_bad_input_is_refused_naming_the_item():
    with pytest.raises(TypeError, match=r"input\[1\] is tuple, not a line \(str\) \(\(key, value\) pairs are the "
                                        r"input of a later stage: from_stage=2\)"):
        run_job(WordCount, ["a", ("k", "v")])
    with pytest.raises(ValueError, match=r"input\[0\] holds a line break"):
        run_job(WordCount, ["a\nb"])
    with pytest.raises(TypeError, match="not one string"):
        run_job(WordCount, "a b")
    with pytest.raises(TypeError, match=r"input\[0\] is not a \(key, value\) pair"):
        run_job(TwoStages, ["a"], from_stage=2)
    with pytest.raises(UsageError, match="run_job reads the pairs a job writes; output_format"):
        run_job(WordCount, ["a"], output_format="csv")


class Parse(Job):
    def map(self, key, line):
        word, number = line.split()
        yield word, int(number)


def test_a_failure_names_the_input_line_and_the_users_traceback():
    lines = ["a 1", "b 2", "c 3", "d four", "e 5"]
    with pytest.raises(JobFailed) as caught:
        run_job(Parse, lines)
    message = str(caught.value)
    first_line, where, *traceback = message.splitlines()
    assert first_line == "task map-0001 attempt 1: ValueError: invalid literal for int() with base 10: 'four'"
    # the second task's file holds input[2:] ("input-000002.txt"): its line 2 is input[3]
    assert where.startswith("  while reading ") and where.endswith(
        "/input/input-000002.txt bytes 0 to 15, line 2: 'd four'")
    assert '    yield word, int(number)' in traceback


def test_args_and_settings_reach_the_run(monkeypatch, tmp_path):
    class Greet(Job):
        def map(self, key, line):
            yield line, self.args["greeting"]

    # neither the environment nor a corral.toml where the tests run changes the run
    monkeypatch.setenv("CORRAL_BACKEND", "no-such-backend")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corral.toml").write_text('reducers = 7\nbackend = "nowhere"\n')
    assert run_job(Greet, ["ann", "bob"], args={"greeting": "hi"}).output == [("ann", "hi"), ("bob", "hi")]
    # a tiny memory budget makes every map task spill and merge: the output is the same
    lines = [f"w{n % 50} w{n % 7}" for n in range(3000)]
    expected = sorted(run_job(WordCount, lines).output)
    assert sorted(run_job(WordCount, lines, memory_budget="16KB").output) == expected
    assert sum(count for _, count in expected) == 6000
    assert os.environ["CORRAL_BACKEND"] == "no-such-backend"


def test_the_readme_example_passes_under_pytest(tmp_path):
    """The README's "Testing your job" example, as its user runs it: a test file next to wordcount.py."""
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    section = root.joinpath("README.md").read_text().split("## Testing your job", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert example.startswith("# test_wordcount.py, next to wordcount.py")
    shutil.copy(root / "examples" / "wordcount.py", tmp_path / "wordcount.py")
    (tmp_path / "test_wordcount.py").write_text(example)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_wordcount.py"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
