"""Full garbage collections held back while a task runs and while the driver lists and plans its input
(``corral.collector``): the driver's planning of 20,000 files walked everything the listing left alive
at every full collection."""

from __future__ import annotations

import gc
import json
import os

import pytest

import corral.driver
from corral import collector
from corral.split import Split
from corral.tasks import MapSpec
from corral.worker import job_ref, run_task

from . import jobs
from .util import counts, run

TEXT = "one two three\ntwo three\nthree\n"


@pytest.fixture(autouse=True)
def _default_thresholds():
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


def test_nested_holders_let_go_when_the_last_one_ends():
    with collector.full_collections_held():
        assert gc.get_threshold() == (700, 10, 1 << 30)
        with collector.full_collections_held(collect=False):
            assert collector.holding()
        assert gc.get_threshold() == (700, 10, 1 << 30)
    assert not collector.holding()
    assert gc.get_threshold() == (700, 10, 10)


def test_a_holder_without_collect_leaves_the_held_back_collection_to_the_collector(monkeypatch):
    collected = []
    monkeypatch.setattr(gc, "get_count", lambda: (0, 0, 99))  # a full collection long due
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(a))
    with collector.full_collections_held(collect=False):
        pass
    assert collected == []
    with collector.full_collections_held():
        pass
    assert collected == [()]


def test_a_process_forked_while_holding_holds_nothing():
    with collector.full_collections_held():
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: what its own tasks would hold from
            os.write(write, json.dumps([collector.holding(), gc.get_threshold()]).encode())
            os._exit(0)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        seen = json.loads(os.read(read, 1000))
        os.close(read)
    assert status == 0
    assert seen == [False, [700, 10, 10]]


def test_a_task_holds_full_collections_and_lets_go(tmp_path, monkeypatch):
    (tmp_path / "in.txt").write_text(TEXT)
    seen = []
    original = jobs.Cat.map

    def watching(self, key, line):
        seen.append(gc.get_threshold())
        yield from original(self, key, line)

    monkeypatch.setattr(jobs.Cat, "map", watching)
    spec = MapSpec(job=job_ref(jobs.Cat), stage=0, task="map-0000", attempt=1, output=str(tmp_path / "out"),
                   output_kind="text", splits=(Split(str(tmp_path / "in.txt"), 0, len(TEXT)),),
                   output_spec={"format": "text"})
    result = run_task(spec.to_json())
    assert result["ok"], result
    assert set(seen) == {(700, 10, 1 << 30)}
    assert gc.get_threshold() == (700, 10, 10)
    assert not collector.holding()


def test_the_driver_lists_and_plans_with_full_collections_held(tmp_path, monkeypatch):
    (tmp_path / "in.txt").write_text(TEXT)
    seen = {}
    list_inputs, plan_map_tasks = corral.driver.list_inputs, corral.driver.plan_map_tasks

    def listing(*args, **kwargs):
        seen["listing"] = gc.get_threshold()
        return list_inputs(*args, **kwargs)

    def planning(*args, **kwargs):
        seen["planning"] = gc.get_threshold()
        return plan_map_tasks(*args, **kwargs)

    monkeypatch.setattr(corral.driver, "list_inputs", listing)
    monkeypatch.setattr(corral.driver, "plan_map_tasks", planning)
    run(jobs.WordCount, tmp_path / "in.txt", tmp_path / "out")
    assert counts(tmp_path / "out") == {"one": 1, "two": 2, "three": 3}
    assert seen == {"listing": (700, 10, 1 << 30), "planning": (700, 10, 1 << 30)}
    assert gc.get_threshold() == (700, 10, 10)
    assert not collector.holding()


def test_the_driver_lets_go_while_its_tasks_run_on_threads(tmp_path, monkeypatch):
    """On the threads backend the tasks share the driver's collector: each task holds, and when it ends
    its held-back collection must run (the driver holding for the whole run would keep every reference
    cycle of hours of tasks)."""
    (tmp_path / "in.txt").write_text(TEXT)
    holders = []
    original = jobs.WordCount.map

    def watching(self, key, line):
        holders.append(collector._holders)
        yield from original(self, key, line)

    monkeypatch.setattr(jobs.WordCount, "map", watching)
    run(jobs.WordCount, tmp_path / "in.txt", tmp_path / "out", backend="threads")
    assert counts(tmp_path / "out") == {"one": 1, "two": 2, "three": 3}
    assert set(holders) == {1}  # the task's own hold, not the driver's too
    assert not collector.holding()


_SETTING_UP = """
import gc, json, os, sys
from corral import collector
collector.setting_up()
seen = {"setting_up": gc.isenabled()}
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # a worker forked while the driver sets up: collects from the start, inherits frozen
    os.write(write, json.dumps([gc.isenabled(), gc.get_freeze_count() > 0]).encode())
    os._exit(0)
os.close(write)
os.waitpid(pid, 0)
seen["forked"] = json.loads(os.read(read, 1000))
collector.tasks_starting()
seen["tasks"] = [gc.isenabled(), gc.get_freeze_count() > 0]
collector.tasks_starting()  # a later wave: nothing more to do
seen["again"] = gc.isenabled()
print(json.dumps(seen))
"""


def test_a_driver_setting_up_collects_nothing_until_its_tasks_start(tmp_path):
    """What the ``corral`` command does (``corral.cli.console_main``), in a process of its own: no collection
    while it lists and plans; from its first tasks on (and in its forked workers from their start) the
    collector runs, over what was made since the freeze."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _SETTING_UP], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == {"setting_up": False, "forked": [True, True], "tasks": [True, True],
                                       "again": True}


GC_JOB = """
import gc
import corral

class Collected(corral.Job):
    def map(self, key, line):
        yield ("enabled" if gc.isenabled() else "disabled"), 1

    def reduce(self, key, values):
        yield key, sum(values)
"""


@pytest.mark.parametrize("backend", ["processes", "threads"])
def test_the_tasks_of_the_corral_command_run_with_the_collector_on(tmp_path, backend):
    """The command holds collections back while it sets up: its tasks, in workers or on its threads, must
    not inherit that (hours of tasks without a collection would keep every reference cycle they make)."""
    from .util import run_command

    (tmp_path / "job.py").write_text(GC_JOB)
    (tmp_path / "in.txt").write_text("x\n" * 500)
    done = run_command("corral", "run", tmp_path / "job.py", tmp_path / "in.txt", "--out", tmp_path / "out",
                       "--backend", backend, "-q")
    assert done.returncode == 0, done.stderr
    assert counts(tmp_path / "out") == {"enabled": 500}
