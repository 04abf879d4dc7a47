"""Records out per attempt (``stats.records_out``, on the live page and in the report): a map task's
values after its combine, whether its buffer spilled or not; a reduce task's output lines."""

from __future__ import annotations

import pytest

from . import jobs
from .util import run


def committed(task):
    """The stats of a task's committed attempt (on a busy machine a speculative copy may come first)."""
    return next(a["stats"] for a in task["attempts"] if a["attempt"] == task["committed_attempt"])


@pytest.mark.parametrize("budget", ["256MB", "4KB"], ids=["in-memory", "spilled"])
@pytest.mark.parametrize("job, combined", [(jobs.WordCount, True), (jobs.WordCountNoCombine, False)])
def test_records_out_of_map_and_reduce_tasks(tmp_path, budget, job, combined):
    data = tmp_path / "in.txt"
    lines = [" ".join(f"w{(n * 7 + k) % 50}" for k in range(8)) for n in range(600)]
    data.write_text("\n".join(lines) + "\n")
    m = run(job, data, tmp_path / "out", split_size="8KB", map_bin_size="8KB", reducers=3, memory_budget=budget)
    tasks = m["stages"][0]["tasks"]
    maps = [committed(t) for name, t in tasks.items() if name.startswith("map-")]
    reduces = [committed(t) for name, t in tasks.items() if name.startswith("reduce-")]
    assert len(maps) > 1
    pairs = sum(s["records_in"] for s in maps) * 8
    if combined:  # at most one value per word and map task, fewer than the pairs the map yielded
        assert sum(s["records_out"] for s in maps) <= 50 * len(maps) < pairs
    else:
        assert sum(s["records_out"] for s in maps) == pairs == 4800
    assert sum(s["records_out"] for s in reduces) == 50  # one line per word
    output = sum(1 for p in (tmp_path / "out").glob("part-*") for _ in p.open())
    assert output == 50
