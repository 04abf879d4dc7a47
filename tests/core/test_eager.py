"""A generator ``map`` whose yields run at most once per call runs as a function that appends its pairs
(``corral.eager``): the same pairs in the same order, the same errors, tracebacks and failure context,
and the generator as written wherever a rewrite could behave differently."""

from __future__ import annotations

import importlib
import inspect
import linecache
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from corral import Job
from corral.eager import RECORDS_PER_LIST, eager_map, eager_pairs
from corral.testing import run_job


def generator_pairs(method, batch, keyed=False):
    return [pair for record in batch for pair in (method(*record) if keyed else method(None, record))]


def eager_list(method, batch, keyed=False):
    eager = eager_map(method)
    assert eager is not None, f"{method} was not rewritten"
    return [pair for pairs in eager_pairs(eager, batch, keyed) for pair in pairs]


class Statuses(Job):
    def map(self, key, line):
        if line.startswith("#"):
            return
        fields = line.split(",")
        if fields[1] == "200":
            yield fields[0], 1
        elif fields[1] == "206":
            yield fields[0], 1
            yield "partial bytes", int(fields[2])
        else:
            return "ignored"  # a generator's return value goes nowhere


LOG = ["#header", "a,200,5", "b,404,1", "c,206,7", "a,206,3", "d,500,0", "b,200,2"]


def test_a_filter_map_gives_the_generators_pairs_in_order():
    job = Statuses()
    expected = [("a", 1), ("c", 1), ("partial bytes", 7), ("a", 1), ("partial bytes", 3), ("b", 1)]
    assert generator_pairs(job.map, LOG) == expected
    assert eager_list(job.map, LOG) == expected


class HowCalled(Job):
    def map(self, key, line):
        generator = sys._getframe().f_code.co_flags & inspect.CO_GENERATOR
        yield line, "as a generator" if generator else "as a function"


def test_a_run_calls_the_rewritten_map():
    assert sorted(run_job(HowCalled, ["a", "b"], reducers=None).output) == [("a", "as a function"),
                                                                          ("b", "as a function")]


HOW_CALLED = """
import inspect
import sys

from corral import Job


class HowCalled(Job):
    def map(self, key, line):
        generator = sys._getframe().f_code.co_flags & inspect.CO_GENERATOR
        yield line, "as a generator" if generator else "as a function"
"""


def test_the_processes_backend_calls_the_rewritten_map(tmp_path):
    (tmp_path / "how_called.py").write_text(HOW_CALLED)
    (tmp_path / "in.txt").write_text("x\ny\n")
    corral = str(Path(sys.executable).with_name("corral"))
    done = subprocess.run([corral, "run", "how_called.py", "in.txt", "-o", "out", "--backend", "processes", "-q"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    parts = sorted((tmp_path / "out").glob("part-*"))
    assert sorted(line for part in parts for line in part.read_text().splitlines()) == ["x\tas a function",
                                                                                        "y\tas a function"]


class Keyed(Job):
    input_format = "tsv"

    def map(self, word, count):
        if count != "0":
            yield word.upper(), int(count)


def test_keyed_records():
    records = [("a", "1"), ("b", "0"), ("c", "3")]
    assert eager_list(Keyed().map, records, keyed=True) == generator_pairs(Keyed().map, records, keyed=True)
    assert eager_list(Keyed().map, records, keyed=True) == [("A", 1), ("C", 3)]


class _Mangled(Job):
    def map_init(self):
        self.__seen = set()

    def map(self, key, line):
        if line in self.__seen:  # self._Mangled__seen, as in the class
            return
        self.__seen.add(line)
        yield line, len(self.__seen)


def test_private_names_are_mangled_as_in_the_class():
    job = _Mangled()
    job.map_init()
    assert eager_list(job.map, ["a", "b", "a", "c"]) == [("a", 1), ("b", 2), ("c", 3)]


class Unset(Job):
    def map(self, key, line):
        if line == "set":
            value = 1
        yield line, value  # unset for any other line


def test_every_call_has_fresh_locals():
    """A name set by an earlier record is not seen by the next: it raises as the generator does."""
    with pytest.raises(UnboundLocalError):
        generator_pairs(Unset().map, ["set", "other"])
    with pytest.raises(UnboundLocalError):
        eager_list(Unset().map, ["set", "other"])


class Closures(Job):
    def map(self, key, line):
        def letters():
            yield from line

        yield line, ("".join(letters()), lambda: line)


def test_nested_functions_keep_their_own_yields_and_their_calls_values():
    pairs = eager_list(Closures().map, ["ab", "cd"])
    assert [(key, joined, later()) for key, (joined, later) in pairs] == [("ab", "ab", "ab"), ("cd", "cd", "cd")]


class Stops(Job):
    def map(self, key, line):
        yield line, next(iter(()))


def test_a_stop_iteration_in_map_fails_as_in_a_generator():
    with pytest.raises(RuntimeError, match=r"^generator raised StopIteration$"):
        generator_pairs(Stops().map, ["a"])
    with pytest.raises(RuntimeError, match=r"^generator raised StopIteration$"):
        eager_list(Stops().map, ["a"])


class Divides(Job):
    def map(self, key, line):
        yield line, 1 // int(line)


def test_a_traceback_names_the_users_file_and_line():
    lines, first = inspect.getsourcelines(Divides.map)
    yield_line = first + next(i for i, text in enumerate(lines) if "yield" in text)
    with pytest.raises(ZeroDivisionError) as raised:
        eager_list(Divides().map, ["1", "0"])
    last = traceback.extract_tb(raised.value.__traceback__)[-1]
    assert (last.filename, last.lineno, last.name, last.line) == (__file__, yield_line, "map",
                                                                   "yield line, 1 // int(line)")


class Twice(Job):
    def map(self, key, line):
        yield line, 1
        yield line, 2


def test_the_pairs_of_a_large_batch_come_in_bounded_lists():
    batch = [str(i) for i in range(10_000)]
    lists = list(eager_pairs(eager_map(Twice().map), batch, False))
    assert [len(pairs) for pairs in lists] == [2 * RECORDS_PER_LIST, 2 * RECORDS_PER_LIST,
                                               2 * (10_000 - 2 * RECORDS_PER_LIST)]
    assert [pair for pairs in lists for pair in pairs] == generator_pairs(Twice().map, batch)


# --- maps that stay generators -------------------------------------------------------------------


def same(function):
    return function


def closure_class():
    suffix = "!"

    class Closure(Job):
        def map(self, key, line):
            yield line + suffix, 1

    return Closure


class Base(Job):
    def prefix(self):
        return ">"


class Super(Base):
    def map(self, key, line):
        yield super().prefix() + line, 1


class InALoop(Job):
    def map(self, key, line):
        for word in line.split():
            yield word, 1


class YieldFrom(Job):
    def map(self, key, line):
        yield from [(line, 1)]


class YieldValueUsed(Job):
    def map(self, key, line):
        sent = yield line, 1
        if sent is not None:
            yield "sent", 1


class Decorated(Job):
    @same
    def map(self, key, line):
        yield line, 1


class Defaults(Job):
    def map(self, key, line, suffix="?"):
        yield line + suffix, 1


class YieldInADefault(Job):
    def map(self, key, line):
        def inner(value=(yield line, 1)):
            return value

        inner()


class ReturnsAList(Job):
    def map(self, key, line):
        return [(line, 1)]


STAY_GENERATORS = [closure_class(), Super, InALoop, YieldFrom, YieldValueUsed, Decorated, Defaults, YieldInADefault]


@pytest.mark.parametrize("job_class", STAY_GENERATORS, ids=lambda c: c.__name__)
def test_maps_that_could_differ_stay_generators_and_still_run(job_class):
    job = job_class()
    assert eager_map(job.map) is None
    pairs = generator_pairs(job.map, ["a b", "c"])
    assert pairs and sorted(run_job(job_class, ["a b", "c"], reducers=None).output) == sorted(pairs)


def test_a_map_that_is_not_a_generator_is_left_alone():
    assert eager_map(ReturnsAList().map) is None
    assert eager_map(lambda key, line: [(line, 1)]) is None


def test_a_map_without_source_stays_a_generator():
    namespace = {}
    exec("from corral import Job\nclass FromString(Job):\n    def map(self, key, line):\n        yield line, 1\n",
         namespace)
    assert eager_map(namespace["FromString"]().map) is None


def test_a_job_file_edited_since_its_import_keeps_the_code_that_runs(tmp_path, monkeypatch):
    """The rewrite compiles the file as it is now; when that is not the code imported, it is not used."""
    source = "from corral import Job\n\n\nclass Edited(Job):\n    def map(self, key, line):\n"
    source += "        yield line, 'imported'\n"
    path = tmp_path / "edited_job.py"
    path.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("edited_job")
    try:
        path.write_text(source.replace("'imported'", "'edited'"))
        linecache.checkcache(str(path))
        job = module.Edited()
        assert eager_map(job.map) is None
        assert generator_pairs(job.map, ["x"]) == [("x", "imported")]
    finally:
        sys.modules.pop("edited_job", None)


def test_a_source_the_rewrite_cannot_handle_keeps_the_generator(monkeypatch):
    """ast's recursion limit (a deeply nested file) must not fail a task that runs as written."""
    import corral.eager

    class Deep(Job):
        def map(self, key, line):
            yield line, 1

    def too_deep(function):
        raise RecursionError("maximum recursion depth exceeded during ast construction")

    monkeypatch.setattr(corral.eager, "_rewrite", too_deep)
    assert eager_map(Deep().map) is None
    assert run_job(Deep, ["a"], reducers=None).output == [("a", 1)]
