"""Jobs the core tests run. Only corral and the standard library are imported here, so that worker
processes (the ``processes`` backend) can import this file on its own."""

from __future__ import annotations

import heapq
import os
import time
from collections import Counter

import corral


def _first_time(marker: str) -> bool:
    """True exactly once per marker path, across threads and processes (atomic create)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class Cat(corral.Job):
    """Map-only pass-through: the output is the input's lines."""


class Environment(corral.Job):
    """Map-only: each input line is the name of an environment variable; yields its value in the task."""

    def map(self, key, name):
        yield name, os.environ.get(name, "<unset>")


class Records(corral.Job):
    """Map-only: every input record as the JSON list [key, value]."""

    def map(self, key, value):
        yield None, [key, value]


class TsvRecords(Records):
    input_format = "tsv"


class ReplaceErrors(Records):
    input_errors = "replace"


class SurrogateCat(corral.Job):
    """Map-only pass-through of undecodable bytes (kept as lone surrogates)."""

    input_errors = "surrogateescape"


class SurrogateLineCount(corral.Job):
    """Lines with undecodable bytes as keys, through the shuffle and a second stage."""

    input_errors = "surrogateescape"

    def steps(self):
        return [corral.Step(map=self.line, reduce=self.count), corral.Step(map=self.again, reduce=self.count)]

    def line(self, key, line):
        yield line, 1

    def count(self, line, counts):
        yield line, sum(counts)

    def again(self, line, count):
        yield line, count


class WordCount(corral.Job):
    def map(self, key, line):
        for word in line.split():
            yield word, 1

    def combine(self, word, counts):
        yield word, sum(counts)

    def reduce(self, word, counts):
        yield word, sum(counts)


class DropSingletons(corral.Job):
    """A combine that drops words seen once (yielding nothing for them); reduce takes the max, which
    fails on an empty values iterator."""

    def map(self, key, line):
        for word in line.split():
            yield word, 1

    def combine(self, word, counts):
        n = sum(counts)
        if n > 1:
            yield word, n

    def reduce(self, word, counts):
        yield word, max(counts)


class WordCountNoCombine(corral.Job):
    def map(self, key, line):
        for word in line.split():
            yield word, 1

    def reduce(self, word, counts):
        yield word, sum(counts)


class LineCount(corral.Job):
    """Each distinct line and how often it occurs (keys are whole lines, CRLF/unicode included)."""

    def map(self, key, line):
        yield line, 1

    def combine(self, line, counts):
        yield line, sum(counts)

    def reduce(self, line, counts):
        yield line, sum(counts)


class Grouped(corral.Job):
    """``KEY VALUE`` lines -> for each key, its values as a list (in the order reduce sees them)."""

    def map(self, key, line):
        k, v = line.split(" ")
        yield k, int(v)

    def reduce(self, key, values):
        yield key, list(values)


class SecondarySort(Grouped):
    sort_values = True


class SecondarySortByKey(Grouped):
    """Values are [name, number] pairs, sorted by their number, largest first."""

    sort_values = True

    def map(self, key, line):
        k, v = line.split(" ")
        yield k, [f"n{v}", int(v)]

    def value_key(self, value):
        return -value[1]


class SecondarySortTopCombine(SecondarySort):
    """A combine that keeps the 5 largest values, yielded largest first (not in sort order)."""

    def combine(self, key, values):
        for value in heapq.nlargest(5, values):
            yield key, value

    def reduce(self, key, values):
        yield key, list(values)


class KeysSeen(corral.Job):
    """Reduce records the order in which keys arrive (reduce_final yields it), per partition."""

    def map(self, key, line):
        for word in line.split():
            yield word, 1

    def reduce_init(self):
        self.keys = []

    def reduce(self, key, values):
        self.keys.append(key)
        return ()

    def reduce_final(self):
        yield "keys", self.keys


class FirstLetterPartition(WordCount):
    """Words go to the reducer numbered by their first letter (a -> 0, b -> 1, …, modulo n)."""

    def partition(self, key, n):
        return (ord(key[0]) - ord("a")) % n


class Typed(corral.Job):
    """Map-only: one output line per value type."""

    def map(self, key, line):
        yield "str", line
        yield "int", 42
        yield "negative", -7
        yield "float", 2.5
        yield "true", True
        yield "false", False
        yield "none", None
        yield "list", [1, "two", None, 3.5]
        yield "dict", {"a": 1, "b": [True, None]}
        yield "unicode", "héllo wörld ✓ 🐍"
        yield "unicode-list", ["é", "✓"]


class TypedReduce(Typed):
    """The same values through a shuffle and reduce."""

    def reduce(self, key, values):
        for value in values:
            yield key, value


class InMapperWordCount(corral.Job):
    """In-mapper combining: map_init / map_final; map itself yields nothing."""

    def map_init(self):
        self.counts = Counter()

    def map(self, key, line):
        self.counts.update(line.split())
        return ()

    def map_final(self):
        self.increment_counter("wc", "map_final calls")
        yield from self.counts.items()

    def reduce_init(self):
        self.total = 0

    def reduce(self, word, counts):
        n = sum(counts)
        self.total += n
        yield word, n

    def reduce_final(self):
        yield "~total", self.total


class MapFinalOnly(corral.Job):
    """Map-only job whose map_final yields (written as part files too)."""

    def map_init(self):
        self.lines = 0

    def map(self, key, line):
        self.lines += 1
        return ()

    def map_final(self):
        yield "lines", self.lines


class MultiStage(corral.Job):
    """Stage 1 counts words; stage 2 groups words by count (typed values cross stages); stage 3
    (map-only) formats each group."""

    def steps(self):
        return [
            corral.Step(map=self.words, combine=self.total, reduce=self.total),
            corral.Step(map=self.by_count, reduce=self.collect),
            corral.Step(map=self.describe),
        ]

    def words(self, key, line):
        for word in line.split():
            yield word, 1

    def total(self, word, counts):
        yield word, sum(counts)

    def by_count(self, word, count):
        if not isinstance(count, int):
            raise TypeError(f"stage 2 got {count!r}, not an int")
        yield f"{count:04d}", {"word": word, "count": count}

    def collect(self, count, entries):
        entries = sorted(entries, key=lambda e: e["word"])
        yield count, [e["word"] for e in entries]

    def describe(self, count, words):
        if not isinstance(words, list):
            raise TypeError(f"stage 3 got {words!r}, not a list")
        yield f"{int(count)}x", " ".join(words)


class TwoStagesFailingInTheSecond(corral.Job):
    """Stage 1 counts words (counting lines); stage 2 (two reducers) fails on the word "boom"."""

    def steps(self):
        return [
            corral.Step(map=self.words, reduce=self.total),
            corral.Step(map=self.identity, reduce=self.check, reducers=2),
        ]

    def words(self, key, line):
        self.increment_counter("stage 1", "lines")
        for word in line.split():
            yield word, 1

    def total(self, word, counts):
        yield word, sum(counts)

    def identity(self, word, count):
        yield word, count

    def check(self, word, counts):
        if word == "boom":
            raise ZeroDivisionError("boom in stage 2")
        yield word, sum(counts)


class CountersJob(corral.Job):
    """Counts lines and words in counters; fails its first attempt (after counting) when
    ``--arg fail_once=MARKER`` is given, in ``map_final`` so that every record was counted."""

    def map(self, key, line):
        self.increment_counter("lines", "total")
        if not line.strip():
            self.increment_counter("lines", "empty")
        for word in line.split():
            self.increment_counter("words", "total", 1)
            yield word, 1

    def map_final(self):
        marker = self.args.get("fail_once")
        if marker and _first_time(marker):
            raise RuntimeError("failing the first attempt on purpose")
        return ()

    def reduce(self, word, counts):
        self.increment_counter("reduce", "keys")
        yield word, sum(counts)


class FailOnce(WordCount):
    """WordCount whose map fails on its first attempt (``--arg marker=PATH``)."""

    def map(self, key, line):
        if _first_time(self.args["marker"]):
            raise ValueError("transient failure")
        yield from super().map(key, line)


class FailReduceOnce(WordCount):
    def reduce(self, word, counts):
        if _first_time(self.args["marker"]):
            raise ValueError("transient reduce failure")
        yield word, sum(counts)


class AlwaysFails(WordCount):
    def map(self, key, line):
        raise ValueError(f"cannot parse {line!r}")  # the user's line


class DieOnce(WordCount):
    """The worker process dies (SIGKILL, or os._exit with ``--arg how=exit``) on the first attempt."""

    def map(self, key, line):
        if _first_time(self.args["marker"]):
            if self.args.get("how") == "exit":
                os._exit(3)
            os.kill(os.getpid(), 9)
        yield from super().map(key, line)


class DieBesideSlow(WordCount):
    """Two map tasks at once: the one reading ``die`` exits (first attempt only) while the one reading
    ``slow`` is still running (``--arg folder=PATH`` holds the markers)."""

    def map(self, key, line):
        folder = self.args["folder"]
        if line == "slow":
            open(os.path.join(folder, "slow-started"), "w").close()
            time.sleep(1.0)
        elif line == "die" and _first_time(os.path.join(folder, "died")):
            deadline = time.time() + 10
            while not os.path.exists(os.path.join(folder, "slow-started")) and time.time() < deadline:
                time.sleep(0.01)
            os._exit(3)
        yield from super().map(key, line)


class EatMemoryOnce(WordCount):
    """WordCount whose map fills ``--arg mb=N`` megabytes on its first attempt (for the OOM killer)."""

    def map(self, key, line):
        if _first_time(self.args["marker"]):
            hog = [b"x" * (1 << 20) for _ in range(int(self.args["mb"]))]  # written, so resident
            del hog
        yield from super().map(key, line)


class Sleeper(corral.Job):
    """Map-only: writes its process id to ``--arg folder=PATH``, then sleeps ``--arg sleep=S`` per line
    (a task to cancel, or a driver to kill while its workers run)."""

    def map(self, key, line):
        folder = self.args["folder"]
        with open(os.path.join(folder, f"pid-{os.getpid()}-{time.monotonic_ns()}"), "w") as f:
            f.write(str(os.getpid()))
        time.sleep(float(self.args.get("sleep", "30")))
        yield None, line


class Slow(WordCount):
    """WordCount whose map sleeps a moment per line (to keep tasks running concurrently)."""

    def map(self, key, line):
        time.sleep(float(self.args.get("sleep", "0.01")))
        yield from super().map(key, line)


class Timed(corral.Job):
    """Map-only: each map task sleeps per line and yields when it started and ended."""

    def map_init(self):
        self.started = time.time()

    def map(self, key, line):
        time.sleep(0.02)
        return ()

    def map_final(self):
        yield "span", [self.started, time.time()]


class SumReduce(corral.Job):
    """Only its reduce is used (the reduce memory test feeds it hand-made map outputs)."""

    def reduce(self, key, values):
        yield key, sum(values)


class CountValues(corral.Job):
    """Reduce counts the values of each key, checking they arrive sorted when ``sort_values`` is set."""

    def reduce(self, key, values):
        n, last = 0, None
        for value in values:
            if self.sort_values and last is not None and value < last:
                raise ValueError(f"{value} after {last}")
            n, last = n + 1, value
        yield key, n


class SecondarySortCount(CountValues):
    sort_values = True


class BatchWordCount(corral.Job):
    """In-mapper combining over whole chunks: map_batch gets lists of lines."""

    def map_init(self):
        self.counts = Counter()
        self.batches = 0

    def map_batch(self, lines):
        if not all(isinstance(line, str) for line in lines):
            raise TypeError(f"map_batch got {lines[:3]!r}, not lines")
        self.batches += 1
        self.counts.update(" ".join(lines).split())
        return ()

    def map_final(self):
        self.increment_counter("batch", "calls", self.batches)
        yield from self.counts.items()

    def reduce(self, word, counts):
        yield word, sum(counts)


class BatchTsv(corral.Job):
    """map_batch over tsv input (key, value) tuples, map-only: one output line per record."""

    input_format = "tsv"

    def map_batch(self, records):
        for key, value in records:
            yield None, [key, value]


class BatchStages(corral.Job):
    """Stage 1 counts words with map_batch; stage 2's map_batch gets the (word, count) records."""

    def steps(self):
        return [
            corral.Step(map_batch=self.words, combine=self.total, reduce=self.total),
            corral.Step(map_batch=self.by_count, reduce=self.collect),
        ]

    def words(self, lines):
        for line in lines:
            for word in line.split():
                yield word, 1

    def total(self, word, counts):
        yield word, sum(counts)

    def by_count(self, records):
        for word, count in records:
            yield str(count), word

    def collect(self, count, words):
        yield count, sorted(words)


class BadMapPair(corral.Job):
    """Map-only job whose map yields something that is not a (key, value) pair."""

    def map(self, key, line):
        yield line


class BadReducePair(WordCount):
    """A reduce that yields a 3-tuple."""

    def reduce(self, word, counts):
        yield word, sum(counts), "extra"


SPECIAL_VALUES = {"w00000": True, "w00001": None, "w00002": 1.5, "w00003": "text", "w00004": [1, "a"], "w00005": False}


class SpecialValues(corral.Job):
    """Counts words; a few keys get a value of another type, and "w00006" a None key (value alone)."""

    def map(self, key, line):
        for word in line.split():
            yield word, 1

    def reduce(self, word, counts):
        total = sum(counts)
        if word == "w00006":
            yield None, f"alone {total}"
        else:
            yield word, SPECIAL_VALUES.get(word, total)


class InMapperWithCombine(InMapperWordCount):
    """In-mapper combining plus a combine: the combine sees each key's one value."""

    def combine(self, word, counts):
        counts = list(counts)
        if len(counts) != 1:
            raise ValueError(f"combine got {counts!r} for {word!r}: one value per task expected")
        yield word, counts[0]


class MapFinalRepeatsKeys(corral.Job):
    """map yields one pair per line; map_final yields keys more than once (and some map's keys too)."""

    def map(self, key, line):
        yield "line", line

    def map_final(self):
        yield "a", 1
        yield "a", 2
        yield "line", "final"

    def reduce(self, key, values):
        yield key, sorted(values)


class HotKey(corral.Job):
    """Every line is a value of one key, ``hot`` (or, with ``--arg keys=N``, of one of N keys by its
    last digits); reduce counts them (a task's memory must follow its budget, not its keys)."""

    def map(self, key, line):
        keys = self.args.get("keys")
        yield ("hot" if keys is None else f"k{int(line[-6:]) % int(keys)}"), line

    def reduce(self, key, values):
        n = 0
        for _ in values:
            n += 1
        yield key, n


class HotKeySortedValues(HotKey):
    """HotKey whose values reach reduce sorted (checked there)."""

    sort_values = True

    def reduce(self, key, values):
        n, last = 0, None
        for value in values:
            if last is not None and value < last:
                raise ValueError(f"{value!r} after {last!r}")
            n, last = n + 1, value
        yield key, n


class HotKeySorted(HotKeySortedValues):
    """HotKeySortedValues through a combine that keeps every value and streams them out of sort order
    (each pair swapped): the worst case for a task's memory."""

    def combine(self, key, values):
        values = iter(values)
        for value in values:
            following = next(values, None)
            if following is not None:
                yield key, following
            yield key, value


# --- resume, speculation, interrupts -------------------------------------------------------------------


class Straggler(WordCount):
    """WordCount where the task reading the line ``straggle`` is slow on its first attempt: it waits
    ``--arg wait=SECONDS`` (default 30), or until a later attempt of that task has finished (which
    then creates ``MARKER.released``). Every line also sleeps ``--arg sleep=SECONDS``."""

    def map_init(self):
        self.finished_straggler = False

    def map(self, key, line):
        marker = self.args["marker"]
        if line == "straggle":
            if _first_time(marker):
                deadline = time.time() + float(self.args.get("wait", "30"))
                while time.time() < deadline and not os.path.exists(marker + ".released"):
                    time.sleep(0.01)
            else:
                self.finished_straggler = True
        time.sleep(float(self.args.get("sleep", "0")))
        yield from super().map(key, line)

    def map_final(self):
        if self.finished_straggler:
            open(self.args["marker"] + ".released", "w").close()
        return ()


class SlowCounted(WordCount):
    """WordCount with counters whose map sleeps ``--arg sleep=S`` per line and whose reduce tasks sleep
    ``--arg rsleep=S`` once each: waves long enough to interrupt half-way."""

    def map(self, key, line):
        time.sleep(float(self.args.get("sleep", "0")))
        self.increment_counter("lines", "total")
        for word in line.split():
            self.increment_counter("words", "total")
            yield word, 1

    def reduce_init(self):
        time.sleep(float(self.args.get("rsleep", "0")))

    def reduce(self, word, counts):
        self.increment_counter("reduce", "keys")
        yield word, sum(counts)


class FailReduceWhile(SlowCounted):
    """SlowCounted whose reduce fails while the file ``--arg fail=PATH`` exists."""

    def reduce(self, word, counts):
        if os.path.exists(self.args["fail"]):
            raise ValueError("reduce failing on purpose")
        yield from super().reduce(word, counts)


class SleepingWordCount(WordCount):
    """WordCount whose map sleeps ``--arg sleep=S`` seconds in one call (not cooperative: a task on a
    thread cannot be stopped before it wakes), having made the file ``--arg started=PATH`` if given."""

    def map(self, key, line):
        if "started" in self.args:
            open(self.args["started"], "a").close()
        time.sleep(float(self.args.get("sleep", "60")))
        yield from super().map(key, line)


class TotalOrderSort(corral.Job):
    """Sort lines ``KEY<TAB>REST`` by KEY into key-ranged part files (``total_order``); ``--arg fail=PATH``
    fails the reduce while PATH exists, ``--arg bad_map=1`` fails the map on a line starting with "bad"."""

    total_order = True

    def map(self, key, line):
        if self.args.get("bad_map") and line.startswith("bad"):
            raise ValueError(f"cannot map {line!r}")
        sort_key, _, rest = line.partition("\t")
        yield sort_key, rest

    def reduce(self, key, rests):
        if self.args.get("fail") and os.path.exists(self.args["fail"]):
            raise ValueError("reduce failing on purpose")
        for rest in rests:
            yield key, rest


class TotalOrderWithPartition(TotalOrderSort):
    def partition(self, key, num_partitions):
        return 0


class TotalOrderMapOnly(corral.Job):
    total_order = True


class TotalOrderInMapper(corral.Job):
    """Word count with in-mapper combining (keys come from map_final only), totally ordered."""

    total_order = True

    def map_init(self):
        self.words = Counter()

    def map(self, key, line):
        self.words.update(line.split())
        return ()

    def map_final(self):
        return self.words.items()

    def reduce(self, word, counts):
        yield word, sum(counts)


class TwoStageTotalOrder(corral.Job):
    """Stage 1 counts words; stage 2 orders the words by their count (zero-padded), key-ranged."""

    def steps(self):
        return [
            corral.Step(map=self.words, combine=self.add, reduce=self.add),
            corral.Step(map=self.by_count, reduce=self.names, total_order=True),
        ]

    def words(self, key, line):
        for word in line.split():
            yield word, 1

    def add(self, word, counts):
        yield word, sum(counts)

    def by_count(self, word, count):
        yield f"{count:08d}", word

    def names(self, count, words):
        yield count, sorted(words)


class Kilobytes(corral.Job):
    """Every line becomes a record of 1 KB: the output (and the spills) outgrow a small disk."""

    def map(self, key, line):
        yield line.strip(), "x" * 1000

    def reduce(self, key, values):
        for value in values:
            yield key, value


class RequirementString(WordCount):
    requirements = "requests"  # a str, not a list: was split into characters


class RequirementNumbers(WordCount):
    requirements = ["requests", 2]


class FilesString(WordCount):
    files = "jobs.py"


class BigMapSmallReduce(WordCount):
    """A map that touches 200 MB (then frees it) and a reduce that holds nearly nothing."""

    def map(self, key, line):
        block = bytearray(200 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        del block
        yield from super().map(key, line)


class NonFinite(corral.Job):
    """Map-only: the line "nan" yields float("nan"), "inf" a list holding -inf, any other line 1.5."""

    def map(self, key, line):
        word = line.strip()
        if word == "nan":
            yield word, float("nan")
        elif word == "inf":
            yield word, {"scores": [1.0, float("-inf")]}
        else:
            yield word, 1.5
