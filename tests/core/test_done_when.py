"""The issue's "done when": word count over an awkward input folder equals collections.Counter over
``line.split()`` of the same data, on both executors, with default and tiny split sizes."""

from __future__ import annotations

import pytest

from tests.awkward import write_awkward_input

from .util import EXAMPLES, clean_env, cli, counts, manifest, run_command


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    """An input folder with unicode, CRLF, empty files and empty lines, a 2 MB line, a .gz file and
    dozens of small files; returns (folder, the Counter of its words)."""
    folder = tmp_path_factory.mktemp("awkward") / "in"
    return folder, write_awkward_input(folder)


@pytest.mark.parametrize("backend", ["threads", "processes"])
@pytest.mark.parametrize("split_size", [None, "3KB"])
@pytest.mark.parametrize("example", ["wordcount.py", "wordcount_fast.py"])
def test_wordcount_equals_counter(awkward, tmp_path, capsys, backend, split_size, example):
    folder, expected = awkward
    argv = ["run", EXAMPLES / example, folder, "--out", tmp_path / "out", "--backend", backend, "-q"]
    if split_size:
        argv += ["--split-size", split_size]
    code, out, err = cli(capsys, *argv)
    assert (code, out, err) == (0, "", "")
    assert counts(tmp_path / "out") == expected
    stage = manifest(tmp_path / "out")["stages"][0]
    if split_size:
        assert sum(len(b) for b in stage["plan"]) > 700


def test_wordcount_as_a_command_on_the_awkward_folder(awkward, tmp_path):
    folder, expected = awkward
    done = run_command("corral", "run", EXAMPLES / "wordcount.py", folder, "--out", tmp_path / "out",
                       "--split-size", "3KB", "-q")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert counts(tmp_path / "out") == expected


FAILING = """\
import corral


class Fails(corral.Job):
    def map(self, key, line):
        if "Straße" in line:
            raise KeyError(f"no street in {len(line)} chars")
        yield line, 1

    def reduce(self, key, values):
        yield key, sum(values)
"""


def test_a_failing_map_exits_1_with_the_users_exception(awkward, tmp_path):
    folder, _ = awkward
    (tmp_path / "failing.py").write_text(FAILING)
    done = run_command("corral", "run", tmp_path / "failing.py", folder, "--out", tmp_path / "out", "--retries", "1")
    assert done.returncode == 1
    assert "corral: job failed: task map-" in done.stderr and " attempt 2: KeyError: 'no street in " in done.stderr
    assert f'File "{tmp_path / "failing.py"}", line 7, in map' in done.stderr
    assert 'raise KeyError(f"no street in {len(line)} chars")' in done.stderr
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_a_missing_input_exits_2_naming_the_path(awkward, tmp_path):
    folder, _ = awkward
    missing = tmp_path / "no" / "such" / "input"
    done = run_command("corral", "run", EXAMPLES / "wordcount.py", folder, missing, "--out", tmp_path / "out",
                       env=clean_env())
    assert done.returncode == 2
    assert done.stderr == f"corral: error: input not found: {missing}\n"
    assert not (tmp_path / "out").exists()
