"""The driver's side of what remote backends rely on, with an executor plugin registered for the test:
throttled attempts never count toward --retries, cannot outlast --deadline (the job then fails, exit 1,
no _SUCCESS), and ``Executor.report()`` lands in the manifest and the printed summary."""

from __future__ import annotations

import json
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

import corral
from corral import THROTTLED, Executor, ExecutorSpec, Failure, Outcome, hookimpl
from corral.cli import main
from corral.executors.local import ThreadExecutor
from corral.plugins import get_plugin_manager

WORDCOUNT = Path(__file__).resolve().parents[2] / "examples" / "wordcount.py"


class Throttling(Executor):
    """Runs tasks on threads, but answers THROTTLED to the first ``throttles`` attempts of each task."""

    name = "throttling"

    def __init__(self, throttles: int) -> None:
        super().__init__(2)
        self.inner = ThreadExecutor(2)
        self.throttles = throttles
        self.seen: dict[str, int] = {}

    def submit(self, payload):
        count = self.seen[payload["task"]] = self.seen.get(payload["task"], 0) + 1
        if count <= self.throttles:
            future: Future[Outcome] = Future()
            future.set_result(Outcome(failure=Failure(THROTTLED, "Rate Exceeded."), stats={"throttles": 1}))
            return future
        return self.inner.submit(payload)

    def report(self):
        return {"summary": f"{sum(self.seen.values())} submissions", "submissions": sum(self.seen.values())}

    def close(self):
        self.inner.close()


class Plugin:
    throttles = 0

    @hookimpl
    def corral_executors(self):
        return [ExecutorSpec("throttling", lambda settings: Throttling(Plugin.throttles), "test")]


@pytest.fixture
def throttling(isolated):
    plugin = Plugin()
    get_plugin_manager().register(plugin, name="test-throttling")
    (isolated / "in.txt").write_text("a b a\nc\n")
    yield Plugin
    get_plugin_manager().unregister(name="test-throttling")


def test_throttles_do_not_count_toward_retries_and_the_report_reaches_the_manifest(throttling, isolated, capsys):
    throttling.throttles = 4
    code = main(["run", str(WORDCOUNT), "in.txt", "--out", "out", "--backend", "throttling", "--retries", "0",
                 "--reducers", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert (isolated / "out" / "part-00000").read_text() == "a\t2\nb\t1\nc\t1\n"
    manifest = json.loads((isolated / "out" / "_corral" / "manifest.json").read_text())
    attempts = [a for s in manifest["stages"] for t in s["tasks"].values() for a in t["attempts"]]
    assert [a["status"] for a in attempts].count("failed") == 4 * 2  # map and reduce, 4 throttles each
    assert {a["failure"]["kind"] for a in attempts if a["status"] == "failed"} == {"throttled"}
    assert manifest["report"] == {"summary": "10 submissions", "submissions": 10}
    assert "corral: 10 submissions" in err


def test_a_task_still_throttled_at_the_deadline_fails_the_job(throttling, isolated):
    throttling.throttles = 10**9
    started = time.monotonic()
    with pytest.raises(corral.JobFailed, match=r"task map-0000 attempt \d+: Rate Exceeded"):
        corral.run(corral_wordcount(), ["in.txt"], "out", backend="throttling", deadline=1)
    assert 1 <= time.monotonic() - started < 10
    assert not (isolated / "out" / "_SUCCESS").exists()
    manifest = json.loads((isolated / "out" / "_corral" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["report"]["submissions"] > 3


def corral_wordcount():
    from corral.cli import resolve_job

    return resolve_job(str(WORDCOUNT))
