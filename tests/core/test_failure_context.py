"""A failed task names the input it was reading: the file, the byte range and the line (mrjob's "probable
cause of failure"), or the key it was reducing; through every local backend, as ``corral run`` prints it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from corral.failure_context import Reading, describe, map_input
from corral.split import Split

JOB = '''
from corral import Job, Step


class Parse(Job):
    def map(self, key, line):
        word, number = line.split()
        yield word, int(number)

    def reduce(self, word, numbers):
        if word == "boom":
            raise RuntimeError("cannot reduce boom")
        yield word, sum(numbers)


class Batches(Parse):
    def map_batch(self, lines):
        return [(line.split()[0], int(line.split()[1])) for line in lines]


class JsonNumbers(Job):
    input_format = "jsonl"

    def map(self, key, value):
        yield "total", 1 / value


class TwoStages(Job):
    def steps(self):
        return [Step(map=self.pairs), Step(map=self.check)]

    def pairs(self, key, line):
        yield line, len(line)

    def check(self, word, length):
        if length > 3:
            raise ValueError(f"{word} is too long")
        yield word, length
'''


@pytest.fixture
def job_file(tmp_path):
    path = tmp_path / "jobs_failing.py"
    path.write_text(JOB)
    return path


def run(job_file, job, *args, cwd):
    corral_command = str(Path(sys.executable).with_name("corral"))
    return subprocess.run([corral_command, "run", f"{job_file}:{job}", *args, "--retries", "0"],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_map_failure_names_file_range_line_and_record(job_file, tmp_path, backend):
    data = tmp_path / "numbers.txt"
    data.write_text("a 1\nb 2\nc x\nd 4\n")
    done = run(job_file, "Parse", str(data), "-o", str(tmp_path / "out"), "--backend", backend, cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0] == "corral: job failed: task map-0000 attempt 1: ValueError: invalid literal for int() with " \
                       "base 10: 'x'"
    assert lines[1] == f"  while reading {data} bytes 0 to 16, line 3: 'c x'"
    assert "    yield word, int(number)" in lines


def test_a_split_in_the_middle_of_a_file_counts_its_lines(job_file, tmp_path):
    data = tmp_path / "big.txt"
    lines = [f"w{n} {n}" for n in range(30000)]
    lines[20000] = "bad x"
    data.write_text("\n".join(lines) + "\n")
    done = run(job_file, "Parse", str(data), "-o", str(tmp_path / "out"), "--backend", "threads",
               "--split-size", "64KB", "--map-bin-size", "64KB", cwd=tmp_path)
    assert done.returncode == 1
    where = done.stderr.splitlines()[1]
    assert where.startswith(f"  while reading {data} bytes ") and where.endswith(", line 20001: 'bad x'"), where
    start = int(where.split(" bytes ")[1].split()[0])
    assert start > 0 and data.read_bytes()[: start].count(b"\n") < 20000  # the split starts before the line


def test_a_split_starting_at_a_line_start_counts_from_there(tmp_path):
    """``Reading`` and ``map_input`` directly: a split whose first byte starts a line (the byte before it is
    a newline) and one that starts inside a line (that line is the previous split's)."""
    data = tmp_path / "lines.txt"
    data.write_bytes(b"aaa\nbbb\nccc\nddd\n")

    class Failed(Exception):
        pass

    def mapper(key, value):
        raise Failed(value)

    for start, batch, expected_line in [(4, ["bbb", "ccc", "ddd"], 3), (5, ["ccc", "ddd"], 3)]:
        reading = Reading()
        reading.next_batch(Split(str(data), start, 16), batch, False)
        try:
            mapper(None, batch[-2])
        except Failed as exc:
            found = map_input(reading, mapper, "lines", exc)
        assert found["line"] == expected_line, (start, found)
        assert describe(found) == f"while reading {data} bytes {start} to 16, line 3: 'ccc'"


def test_reduce_failure_names_the_key(job_file, tmp_path):
    data = tmp_path / "numbers.txt"
    data.write_text("a 1\nboom 2\n")
    done = run(job_file, "Parse", str(data), "-o", str(tmp_path / "out"), "--backend", "processes", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines()[:2] == [
        "corral: job failed: task reduce-0000 attempt 1: RuntimeError: cannot reduce boom",
        "  while reducing key 'boom'",
    ]


def test_later_stages_jsonl_and_map_batch(job_file, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("ab\nabc\nabcdef\n")
    done = run(job_file, "TwoStages", str(words), "-o", str(tmp_path / "o1"), "--backend", "threads", cwd=tmp_path)
    where = done.stderr.splitlines()[1]
    assert where.startswith("  while reading ") and where.endswith(
        " (records from the previous stage), record 3: ('abcdef', 6)"), done.stderr
    assert done.stderr.splitlines()[0] == ("corral: job failed: stage 2 task map-0000 attempt 1: ValueError: "
                                           "abcdef is too long")

    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text("4\n\n2\n0\n")  # a blank line is no record: the record number is not the line number
    done = run(job_file, "JsonNumbers", str(numbers), "-o", str(tmp_path / "o2"), "--backend", "threads",
               cwd=tmp_path)
    assert done.stderr.splitlines()[1] == f"  while reading {numbers} bytes 0 to 7, record 3 of that range: 0"

    data = tmp_path / "numbers.txt"
    data.write_text("a 1\nc x\n")
    done = run(job_file, "Batches", str(data), "-o", str(tmp_path / "o3"), "--backend", "threads", cwd=tmp_path)
    assert done.stderr.splitlines()[1] == f"  while reading {data} bytes 0 to 8"  # map_batch: the range only


@pytest.mark.docker
def test_the_lambda_code_path_names_the_input_too(docker_engine, job_file, tmp_path):
    """The worker's answer crosses the Lambda API (the docker backend's emulator) with the input in it."""
    data = tmp_path / "numbers.txt"
    data.write_text("a 1\nc x\n")
    done = run(job_file, "Parse", str(data), "-o", str(tmp_path / "out"), "--backend", "docker", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[1] == f"  while reading {data} bytes 0 to 8, line 2: 'c x'"
