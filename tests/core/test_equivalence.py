"""The same job gives the same output whatever the executor, split size, map bin size, memory budget
and number of reducers."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import jobs
from .util import lines, part_lines, run

words = st.sampled_from(["a", "b", "é", "日本", "🐍", "x" * 30, "Ab", "a-b", "42"])
text_lines = st.lists(words, max_size=8).map(" ".join) | st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=15
)


@st.composite
def inputs(draw):
    """1 to 3 files of lines (LF or CRLF), as {name: bytes}."""
    files = {}
    for n in range(draw(st.integers(1, 3))):
        body = draw(st.lists(text_lines, max_size=60))
        ending = draw(st.sampled_from(["\n", "\r\n"]))
        files[f"f{n}.txt"] = "".join(line + ending for line in body).encode("utf-8")
    return files


def expected_lines(job, files) -> Counter:
    text = b"".join(files.values()).decode("utf-8").replace("\r\n", "\n")
    if job is jobs.WordCount:
        counter = Counter(text.split())
    else:
        counter = Counter(text.split("\n")[:-1] if text else [])
    return Counter(f"{key}\t{n}" for key, n in counter.items())


def keys(part: list[str]) -> list[str]:
    return [line.rpartition("\t")[0] for line in part]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    files=inputs(),
    job=st.sampled_from([jobs.WordCount, jobs.LineCount]),
    backend=st.sampled_from(["threads", "processes"]),
    split_size=st.sampled_from(["1", "37", "200", "64MB"]),
    map_bin_size=st.sampled_from(["100", "500", "64MB"]),
    memory_budget=st.sampled_from(["1", "2KB", "256MB"]),
    reducers=st.integers(1, 4),
)
def test_output_is_the_same_whatever_the_execution(
    tmp_path_factory, files, job, backend, split_size, map_bin_size, memory_budget, reducers
):
    folder = tmp_path_factory.mktemp("equivalence")
    for name, data in files.items():
        (folder / "in" / name).parent.mkdir(exist_ok=True)
        (folder / "in" / name).write_bytes(data)
    run(job, folder / "in", folder / "reference", reducers=reducers)
    run(
        job, folder / "in", folder / "out", backend=backend, reducers=reducers,
        split_size=split_size, map_bin_size=map_bin_size, memory_budget=memory_budget,
    )
    got = part_lines(folder / "out")
    assert Counter(lines(folder / "out")) == expected_lines(job, files)  # as a multiset of lines
    assert len(got) == reducers
    assert [sorted(p) for p in got] == [sorted(p) for p in part_lines(folder / "reference")]  # part by part
    assert got == part_lines(folder / "reference")  # each part in key order, so even the order is the same
    assert all(keys(p) == sorted(keys(p)) for p in got)


JOBS_AND_INPUTS = {
    "wordcount": (jobs.WordCount, {}),
    "secondary-sort": (jobs.SecondarySort, {}),
    "multi-stage": (jobs.MultiStage, {}),
    "map-only": (jobs.Cat, {}),
    "in-mapper": (jobs.InMapperWordCount, {}),
    "tsv": (jobs.TsvRecords, {}),
}


@pytest.fixture(scope="module")
def mixed_input(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed") / "in"
    folder.mkdir()
    for n in range(5):
        (folder / f"part{n}.txt").write_text(
            "".join(f"k{(i * (n + 3)) % 17} {i * 7 % 101}\r\n" for i in range(400)), newline=""
        )
    return folder


@pytest.mark.parametrize("name", sorted(JOBS_AND_INPUTS))
def test_threads_and_processes_write_identical_part_files(mixed_input, tmp_path, name):
    job, extra = JOBS_AND_INPUTS[name]
    outputs = []
    for backend in ("threads", "processes"):
        out = tmp_path / backend
        run(job, mixed_input, out, backend=backend, reducers=3, split_size="1KB", map_bin_size="3KB", **extra)
        outputs.append([p.read_bytes() for p in sorted(out.glob("part-*"))])
    assert outputs[0] == outputs[1]
    assert any(outputs[0])
