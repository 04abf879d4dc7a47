"""What map, map_final, map_batch and reduce yield is checked where it is yielded: a message names the
method and the value (issue 10, defect 6: ``yield "ab"`` became the key ``a`` and the value ``b``;
``yield 5`` was a bare unpacking TypeError; map-only jobs took non-str keys; bytes and sets failed only
when the reducer wrote them, with codec frames instead of the user's line); text with a lone surrogate,
which has no UTF-8 bytes, is named as well, not left to the codec's error."""

from __future__ import annotations

import pytest

import corral

from .util import run


class YieldsAString(corral.Job):
    def map(self, key, line):
        yield "ab"

    def reduce(self, key, values):
        yield key, list(values)


class YieldsANumber(YieldsAString):
    def map(self, key, line):
        yield 5


class MapOnlyIntKey(corral.Job):
    def map(self, key, line):
        yield len(line), line


class MapOnlyString(corral.Job):
    def map(self, key, line):
        yield "ab"


class BytesValue(corral.Job):
    def map(self, key, line):
        yield line, line.encode()

    def reduce(self, key, values):
        yield key, list(values)


class SetValue(BytesValue):
    def map(self, key, line):
        yield line, 1

    def reduce(self, key, values):
        yield key, {sum(values)}


class SetInsideAList(BytesValue):
    def map(self, key, line):
        yield line, [1, [2, {3}]]


class IntDictKey(BytesValue):
    def map(self, key, line):
        yield line, {1: "one"}


class IntKeyInANestedDict(BytesValue):
    def map(self, key, line):
        yield line, [{"a": {(1, 2): "x"}}]


class UnhashableKey(BytesValue):
    def map(self, key, line):
        yield [line], 1


class ObjectFromMapFinal(BytesValue):
    def map(self, key, line):
        return ()

    def map_final(self):
        yield "total", object.__new__(Opaque)


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


class BatchYieldsAString(BytesValue):
    def map_batch(self, lines):
        yield "ab"


class SetIntoTheNextStage(corral.Job):
    def steps(self):
        return [corral.Step(map=self.first), corral.Step(map=self.second)]

    def first(self, key, line):
        yield line, frozenset({1})

    def second(self, key, value):
        yield key, value


class CombineYieldsASet(BytesValue):
    def map(self, key, line):
        yield line, 1

    def combine(self, key, values):
        yield key, {sum(values)}


class SurrogateKey(BytesValue):
    """A lone surrogate (as a JSON "\\ud800" escape gives) has no UTF-8 bytes: into the shuffle."""

    def map(self, key, line):
        yield "k\ud800", 1


class SurrogateInTheOutput(corral.Job):
    def map(self, key, line):
        yield line, ["ok", "v\ud800"]


class SurrogateIntoTheNextStage(corral.Job):
    def steps(self):
        return [corral.Step(map=self.first), corral.Step(map=self.second)]

    def first(self, key, line):
        yield line, {"n\ud83d": 1}

    def second(self, key, value):
        yield key, value


RULE = "values must be str, int, float, bool, None, or lists and dicts (with str keys) of those"


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (YieldsAString, "map must yield (key, value) pairs, but it yielded 'ab' (of type str)"),
        (YieldsANumber, "map must yield (key, value) pairs, but it yielded 5 (of type int)"),
        (MapOnlyString, "map must yield (key, value) pairs, but it yielded 'ab' (of type str)"),
        (MapOnlyIntKey, "map yielded the key 4 (of type int) with the value 'word': keys must be str (or None, to "
                        "write the value alone)"),
        (BytesValue, f"map yielded a value corral cannot store for the key 'word': the value b'word' (of type "
                     f"bytes); {RULE}"),
        (SetValue, f"reduce yielded a value corral cannot store for the key 'word': the value {{1}} (of type set); "
                   f"{RULE}"),
        (SetInsideAList, f"map yielded a value corral cannot store for the key 'word': {{3}} (of type set) in the "
                         f"value [1, [2, {{3}}]]; {RULE}"),
        (IntDictKey, f"map yielded a value corral cannot store for the key 'word': the dict key 1 (of type int) in "
                     f"the value {{1: 'one'}}; {RULE}"),
        (IntKeyInANestedDict, f"map yielded a value corral cannot store for the key 'word': the dict key (1, 2) (of "
                              f"type tuple) in the value [{{'a': {{(1, 2): 'x'}}}}]; {RULE}"),
        (UnhashableKey, "map yielded the key ['word'] (of type list) with the value 1: keys must be str"),
        (ObjectFromMapFinal, f"map yielded a value corral cannot store for the key 'total': the value <Opaque> (of "
                             f"type Opaque); {RULE}"),
        (BatchYieldsAString, "map_batch must yield (key, value) pairs, but it yielded 'ab' (of type str)"),
        (SetIntoTheNextStage, f"map yielded a value corral cannot store for the key 'word': the value "
                              f"frozenset({{1}}) (of type frozenset); {RULE}"),
        (SurrogateKey, "map yielded text corral cannot write for the key 'k\\ud800': 'k\\ud800' (of type str) holds "
                       "the lone surrogate '\\ud800' at position 1, which UTF-8 cannot encode"),
        (SurrogateInTheOutput, "map yielded text corral cannot write for the key 'word': 'v\\ud800' (of type str) "
                               "holds the lone surrogate '\\ud800' at position 1, which UTF-8 cannot encode"),
        (SurrogateIntoTheNextStage, "map yielded text corral cannot write for the key 'word': 'n\\ud83d' (of type "
                                    "str) holds the lone surrogate '\\ud83d' at position 1, which UTF-8 cannot "
                                    "encode"),
        (CombineYieldsASet, f"map (or combine) yielded a value corral cannot store for the key 'word': the value "
                            f"{{1}} (of type set); {RULE}"),
    ],
)
@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_a_bad_pair_fails_the_task_naming_the_method_and_the_value(tmp_path, job, message, backend):
    (tmp_path / "in.txt").write_text("word\n")
    with pytest.raises(corral.JobFailed) as failed:
        run(job, tmp_path / "in.txt", tmp_path / "out", retries=0, backend=backend)
    task = "reduce-0000" if job is SetValue else "map-0000"
    assert str(failed.value).splitlines()[0] == f"task {task} attempt 1: TypeError: {message}"
    assert not (tmp_path / "out" / "_SUCCESS").exists()


class ListPairs(corral.Job):
    """Pairs as two-item lists, tuple values, None keys in the output and scalar subclasses are fine."""

    def map(self, key, line):
        yield [line, (1, "x")]

    def reduce(self, key, values):
        yield None, [key, *values]
        yield key, True


def test_lists_of_two_tuples_and_none_keys_are_pairs(tmp_path):
    (tmp_path / "in.txt").write_text("b\na\n")
    run(ListPairs, tmp_path / "in.txt", tmp_path / "out", reducers=1)
    assert (tmp_path / "out" / "part-00000").read_text() == (
        '["a", [1, "x"]]\na\ttrue\n["b", [1, "x"]]\nb\ttrue\n'
    )


class HugeInteger(BytesValue):
    def map(self, key, line):
        yield line, {"n": [1, 2**70]}


class CombineSumsPastSixtyFourBits(CombineYieldsASet):
    def map(self, key, line):
        yield line, 2**63
        yield line, 2**63

    def combine(self, key, values):
        yield key, sum(values)


class HugeIntegerIntoTheNextStage(SetIntoTheNextStage):
    def first(self, key, line):
        yield line, -(2**64)


@pytest.mark.parametrize(("job", "task", "source", "number"), [
    (HugeInteger, "map-0000", "map", 2**70),
    (CombineSumsPastSixtyFourBits, "map-0000", "map (or combine)", 2**64),
    (HugeIntegerIntoTheNextStage, "map-0000", "map", -(2**64)),
])
def test_an_integer_past_64_bits_fails_naming_the_method_key_and_number(tmp_path, job, task, source, number):
    """msgpack (the shuffle, records between stages) stores 64-bit integers: a bigger one is named,
    not msgpack's bare ``OverflowError: Integer value out of range`` and its frames."""
    (tmp_path / "in.txt").write_text("word\n")
    with pytest.raises(corral.JobFailed) as failed:
        run(job, tmp_path / "in.txt", tmp_path / "out", retries=0)
    assert str(failed.value).splitlines()[0] == (
        f"task {task} attempt 1: ValueError: {source} yielded a value corral cannot store for the key 'word': the "
        f"integer {number} does not fit in 64 bits; integers passed on to reduce or to the next stage must be from "
        "-2**63 to 2**64-1"
    )


class LargestIntegers(BytesValue):
    def map(self, key, line):
        yield line, [2**64 - 1, -(2**63)]


def test_integers_at_the_64_bit_limits_go_through(tmp_path):
    (tmp_path / "in.txt").write_text("word\n")
    run(LargestIntegers, tmp_path / "in.txt", tmp_path / "out", reducers=1)
    assert (tmp_path / "out" / "part-00000").read_text() == f"word\t[[{2**64 - 1}, {-(2**63)}]]\n"
