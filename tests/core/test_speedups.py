"""corral.speedups: the C module and its Python fallback answer the same on the same batches."""

from __future__ import annotations

import subprocess
import sys
from collections import namedtuple

import pytest

from corral import speedups

from ..requirements import unavailable
from .util import clean_env, counts, run_command

Pair = namedtuple("Pair", "key value")


def _compiled():
    try:
        from corral import _speedups
    except ImportError:
        unavailable("corral._speedups is not built (pip install -e . builds it where a C compiler is)")
    return _speedups


@pytest.fixture(params=["Python", "C"])
def impl(request):
    if request.param == "Python":
        return speedups.py_are_pairs, speedups.py_count_constant
    compiled = _compiled()
    return compiled.are_pairs, compiled.count_constant


def test_the_c_module_is_what_corral_uses_where_it_was_built():
    _compiled()
    assert speedups.IMPLEMENTATION == "C" and speedups.count_constant is not speedups.py_count_constant
    code = "import corral.speedups as s; print(s.IMPLEMENTATION)"
    off = subprocess.run([sys.executable, "-c", code], env=clean_env(CORRAL_SPEEDUPS="0"),
                         capture_output=True, text=True, check=True)
    assert off.stdout == "Python\n"


@pytest.mark.parametrize(
    "batch, expected",
    [
        ([], True),
        ([("a", 1), ("b", [2])], True),
        ([Pair("a", 1)], True),  # a namedtuple is a tuple
        ([("a", 1), ["b", 1]], False),  # a list of two is made a tuple by the caller
        ([("a", 1), ("b", 1, 2)], False),
        ([("a",)], False),
        (["ab"], False),  # a str of two characters is no pair
        ([("a", 1), None], False),
    ],
)
def test_are_pairs(impl, batch, expected):
    are_pairs, _ = impl
    assert are_pairs(batch) is expected


def test_count_constant_adds_to_the_counts_when_every_value_is_the_constant(impl):
    _, count_constant = impl
    counts_ = {"a": 5}
    batch = [("a", 1), ("b", 1), ("a", 1), Pair("c", 1)] * 300
    assert count_constant(counts_, batch, 1) is True
    assert counts_ == {"a": 605, "b": 300, "c": 300}
    big = int("1000")  # equal to 1000, another object
    assert count_constant(counts_, [("a", big), ("d", 1000)], 1000) is True and counts_["a"] == 606
    assert count_constant(counts_, [("n", None)], None) is True and counts_["n"] == 1
    assert count_constant(counts_, [], 1) is True and counts_ == {"a": 606, "b": 300, "c": 300, "d": 1, "n": 1}


class Uncomparable:
    """A value whose == raises (as a numpy array's does): never asked, its type already differs."""

    def __eq__(self, other):
        raise ValueError("The truth value of an array with more than one element is ambiguous")

    __hash__ = object.__hash__


@pytest.mark.parametrize(
    "batch",
    [
        [("a", 1), ("b", True)],  # equal to 1 but a bool
        [("a", 1), ("b", 1.0)],
        [("a", 1), ("b", 2)],
        [("a", 1), ["b", 1]],
        [("a", 1), ("b", 1, 1)],
        [("a", 1), "b1"],
        [("a", 1), ("b", Uncomparable())],
    ],
)
def test_count_constant_leaves_the_counts_alone_when_a_pair_is_not_the_constant(impl, batch):
    _, count_constant = impl
    counts_ = {"a": 1}
    assert count_constant(counts_, batch, 1) is False
    assert counts_ == {"a": 1}


def test_count_constant_raises_for_a_key_that_cannot_be_hashed(impl):
    _, count_constant = impl
    with pytest.raises(TypeError, match="unhashable type: 'list'"):
        count_constant({}, [("a", 1), (["b"], 1)], 1)


@pytest.mark.parametrize("setting, implementation", [("0", "Python"), ("1", "C")])
def test_word_count_is_the_same_with_and_without_the_c_module(tmp_path, setting, implementation):
    """End to end, with values that stop the counting part way (a bool among the ints) and a bad pair."""
    if implementation == "C":
        _compiled()
    job = tmp_path / "job.py"
    job.write_text(
        "import corral, corral.speedups\n"
        "class Mixed(corral.Job):\n"
        "    def map(self, key, line):\n"
        "        yield 'implementation ' + corral.speedups.IMPLEMENTATION, 1\n"
        "        for word in line.split():\n"
        "            yield word, (True if word == 'stop' else 1)\n"
        "    def combine(self, word, counts):\n"
        "        yield word, sum(counts)\n"
        "    def reduce(self, word, counts):\n"
        "        yield word, sum(counts)\n"
    )
    data = tmp_path / "in.txt"
    data.write_text("a b a\n" * 3000 + "stop a\n" + "b c\n" * 2000)
    out = tmp_path / "out"
    done = run_command("corral", "run", job, data, "--out", out, "-q", env=clean_env(CORRAL_SPEEDUPS=setting))
    assert done.returncode == 0, done.stderr
    assert counts(out) == {"a": 6001, "b": 5000, "c": 2000, "stop": 1, f"implementation {implementation}": 5001}
    bad = tmp_path / "bad.py"
    bad.write_text(job.read_text().replace("(True if word == 'stop' else 1)", "1\n        yield 'c1'"))
    failed = run_command("corral", "run", bad, data, "--out", tmp_path / "out2", "-q",
                         env=clean_env(CORRAL_SPEEDUPS=setting))
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "map must yield (key, value) pairs, but it yielded 'c1' (of type str)" in failed.stderr


def test_count_from_counts_pairs_as_they_come_and_hands_back_the_first_other_item():
    count_from = _compiled().count_from
    counts_ = {"a": 1}
    assert count_from(counts_, iter([("a", 1), ("b", 1), Pair("a", 1)]), 1) is None  # exhausted
    assert counts_ == {"a": 3, "b": 1}
    for odd in [("c", True), ("c", 2), ["c", 1], "c1", None, ("c", 1, 1), (["c"], 1), ("c", Uncomparable())]:
        rest = iter([("a", 1), odd, ("b", 1)])
        assert count_from(counts_, rest, 1) == (odd,)  # consumed, not counted
        assert counts_ == {"a": 4, "b": 1} and list(rest) == [("b", 1)]
        counts_["a"] = 3


def test_count_from_lets_the_maps_exception_through():
    count_from = _compiled().count_from

    def pairs():
        yield "a", 1
        raise KeyError("the user's bug")

    counts_ = {}
    with pytest.raises(KeyError, match="the user's bug"):
        count_from(counts_, pairs(), 1)
    assert counts_ == {"a": 1}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_die_with_parent_sets_the_signal_a_worker_gets_when_its_driver_ends():
    """What a worker process of the processes backend sets as it starts, read back with prctl's own
    PR_GET_PDEATHSIG (through ctypes, in a process of its own)."""
    _compiled()
    script = (
        "import ctypes, signal\n"
        "from corral import _speedups\n"
        "_speedups.die_with_parent(signal.SIGUSR1)\n"
        "value = ctypes.c_int()\n"
        "assert ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0) == 0\n"  # PR_GET_PDEATHSIG
        "print(value.value == signal.SIGUSR1)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=clean_env())
    assert (done.returncode, done.stdout, done.stderr) == (0, "True\n", "")
    with pytest.raises(OverflowError):
        _compiled().die_with_parent(1 << 70)
