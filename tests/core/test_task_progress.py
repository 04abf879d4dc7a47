"""``corral_task_progress``: local executors forward a running task's counter deltas while it runs."""

from __future__ import annotations

import threading
import time

import pytest

import corral
from corral.plugins import get_plugin_manager
from tests.core.util import run


class SlowCount(corral.Job):
    """One map task of 3 s that counts every line as it goes."""

    def map(self, key, line):
        time.sleep(0.01)
        self.increment_counter("lines", "seen")
        yield "n", 1


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.progress: list[tuple[float, corral.events.TaskProgress]] = []
        self.finished: list[float] = []

    @corral.hookimpl
    def corral_task_progress(self, event):
        with self.lock:
            self.progress.append((time.monotonic(), event))

    @corral.hookimpl
    def corral_task_finished(self, event):
        self.finished.append(time.monotonic())


@pytest.fixture
def recorder():
    plugin = Recorder()
    pm = get_plugin_manager()
    pm.register(plugin)
    yield plugin
    pm.unregister(plugin)


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_counter_deltas_arrive_while_the_task_runs(tmp_path, recorder, backend):
    data = tmp_path / "in.txt"
    data.write_text("x\n" * 300)
    m = run(SlowCount, data, tmp_path / "out", backend=backend)
    assert m["counters"] == {"lines": {"seen": 300}}
    (ended,) = recorder.finished  # one map task
    during = [e for t, e in recorder.progress if t < ended]
    # at least one report a second, each with the lines counted since the last one
    assert len(during) >= 2, recorder.progress
    assert all(e.task == "map-0000" and e.attempt == 1 and e.phase == "map" and e.stage == 0 for e in during)
    seen = [amount for e in during for group, name, amount in e.counters if (group, name) == ("lines", "seen")]
    assert all(amount > 0 for amount in seen) and 0 < sum(seen) < 300
    assert sum(e.cpu_seconds for e in during) >= 0
