"""corral.remote, the layer every serverless backend shares, on a stand-in platform.

``StandIn`` below is the only thing stood in for: a cloud whose "functions" are entries of a dict and
whose invocation runs ``corral.remote.run_remote`` in this process (what a handler does in a function).
Everything else is real: the deploy template, the invoke pool, retries (tenacity), payloads and results
through the working folder, usage and the summary line, cancel and cancel_all, and the driver (via
``corral.run``). The real platforms run the same code in tests/lambda, tests/aws, tests/docker, tests/gcf.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import corral
from corral import CANCELLED, INFRASTRUCTURE, THROTTLED, ExecutorSpec, Outcome, hookimpl, outcome_from_result
from corral.packaging import make_zip
from corral.plugins import get_plugin_manager
from corral.remote import (
    MEMORY,
    RETRY,
    Answer,
    Limits,
    RemoteConfig,
    RemoteFunctionExecutor,
    check_range,
    function_name_for,
    prepare,
    run_remote,
    unwrap,
    wrap,
)

WORDCOUNT = Path(__file__).resolve().parents[2] / "examples" / "wordcount.py"


class Throttled(Exception):
    pass


class ServerError(Exception):
    pass


class StandIn(RemoteFunctionExecutor):
    """A stand-in cloud: functions in a dict, invocations run run_remote here. ``script`` holds what the
    next invocations do before they run: an exception to raise, or a threading.Event to wait for."""

    name = "stand-in"
    limits = Limits(memory_mb=(128, 4096), timeout_s=(1, 60), max_request=64 * 1024, max_response=64 * 1024)
    platform = "the stand-in cloud"
    storage_scheme = "memory://"
    cost_name = "stand-in"
    functions: dict = {}
    code = b"v1"

    def __init__(self, max_concurrency=2, config=None, script=()):
        super().__init__(max_concurrency, config or RemoteConfig(deadline=time.time() + 30, api_attempts=3))
        self.script = list(script)
        self.script_lock = threading.Lock()
        self.bodies: list[bytes] = []

    def build(self, job):
        return make_zip({"job.py": self.code})

    def handler_files(self):
        return {}

    def wheel_platforms(self):
        return []

    def get_function(self, name):
        return self.functions.get(name)

    def is_managed(self, found):
        return found["managed"]

    def package_hash(self, package):
        return package.sha256

    def deployed_hash(self, found):
        return found["hash"]

    def desired_configuration(self, job, identity):
        return {"memory": self.config.memory, "environment": dict(self.config.environment), "identity": identity}

    def deployed_configuration(self, found):
        return dict(found["config"])

    def create_function(self, name, package, desired):
        self.uploads += 1
        self.functions[name] = {"hash": package.sha256, "config": dict(desired), "managed": True}

    def update_function(self, name, found, package, changes):
        actions = []
        if package is not None:
            self.uploads += 1
            found["hash"] = package.sha256
            actions.append("update-code")
        if changes:
            found["config"].update(changes)
            actions.append("update-config")
        return actions

    def delete_function(self, name, found):
        del self.functions[name]

    def remove_identity(self, name, found):
        return ["delete-identity"]

    def invoke_raw(self, body):
        with self.script_lock:
            step = self.script.pop(0) if self.script else None
            self.bodies.append(body)
        if isinstance(step, Exception):
            raise step
        if isinstance(step, threading.Event):
            step.wait(30)
        return Answer(json.dumps(run_remote(json.loads(body), self.config.memory)).encode())

    def error_kind(self, exc):
        return THROTTLED if isinstance(exc, Throttled) else RETRY if isinstance(exc, ServerError) else None

    def classify(self, answer, stats):
        result = json.loads(answer.body)
        stats["billed_ms"] = math.ceil(result.get("duration_ms") or 0)
        return outcome_from_result(result, stats)

    def estimate(self, usage):
        cost = usage["gb_seconds"] * 0.001 + usage["invocations"] * 0.0001
        return {"estimated_cost_usd": cost, "cost_usd": {}, "prices": {"region": "local", "read": "2026-12-01"}}


JOB = corral.JobSource({"module": "j", "class": "J", "path": None}, (), ("memory://in",), inputs=("memory://in",),
                       output="memory://out", work="memory://out/_corral/work")


@pytest.fixture(autouse=True)
def fresh_cloud():
    StandIn.functions = {}
    StandIn.code = b"v1"


# --- deploy -------------------------------------------------------------------------------------------
def test_deploy_creates_then_updates_only_what_changed_then_undeploys():
    first = StandIn()
    first.deploy(JOB)
    assert first.deploy_actions == ["create"] and first.uploads == 1
    assert first.function_name == "corral-j-J"
    again = StandIn()
    again.deploy(JOB)
    assert again.deploy_actions == [] and again.uploads == 0  # same code, same settings: nothing sent
    StandIn.code = b"v2"
    changed = StandIn()
    changed.deploy(JOB)
    assert changed.deploy_actions == ["update-code"] and changed.uploads == 1
    bigger = StandIn(config=RemoteConfig(memory=1024))
    bigger.deploy(JOB)
    assert bigger.deploy_actions == ["update-config"] and bigger.uploads == 0
    assert StandIn.functions["corral-j-J"]["config"]["memory"] == 1024
    gone = StandIn()
    gone.undeploy(JOB)
    assert gone.deploy_actions == ["delete", "delete-identity"] and StandIn.functions == {}
    gone.undeploy(JOB)
    assert gone.deploy_actions == ["delete-identity"]  # nothing left to delete: not an error


class CreatedMeanwhile(StandIn):
    """Another run of the job creates the function between this deploy's look and its create (which the
    platform then refuses: it exists); ``other`` is that run's configuration."""

    other: dict = {}

    def create_function(self, name, package, desired):
        StandIn.functions[name] = {"hash": package.sha256, "config": {**desired, **self.other}, "managed": True}
        raise FileExistsError(f"function {name} already exists")

    def exists_already(self, exc):
        return isinstance(exc, FileExistsError)


def test_two_deploys_at_once_share_the_function_the_first_one_created():
    CreatedMeanwhile.other = {}
    same = CreatedMeanwhile()
    same.deploy(JOB)  # not an error: the same job's function, up to date
    assert same.deploy_actions == [] and same.uploads == 0
    StandIn.functions.clear()
    CreatedMeanwhile.other = {"memory": 2048}  # the other run asked for more memory: this one's is applied
    resized = CreatedMeanwhile()
    resized.deploy(JOB)
    assert resized.deploy_actions == ["update-config"] and StandIn.functions["corral-j-J"]["config"]["memory"] == 512


def test_a_function_corral_did_not_create_is_left_alone():
    StandIn.functions["corral-j-J"] = {"hash": "x", "config": {}, "managed": False}
    with pytest.raises(corral.UsageError, match="corral-j-J exists but was not created by corral"):
        StandIn().deploy(JOB)
    with pytest.raises(corral.UsageError, match="corral-j-J was not created by corral: left alone"):
        StandIn().undeploy(JOB)
    assert StandIn.functions["corral-j-J"]["hash"] == "x"


def test_local_paths_are_refused_naming_the_path_and_the_way_out():
    job = corral.JobSource(JOB.ref, (), ("/data/in", "memory://out"), inputs=("/data/in",), output="memory://out")
    with pytest.raises(corral.UsageError) as info:
        StandIn().deploy(job)
    assert str(info.value) == ("the stand-in backend runs tasks on the stand-in cloud, which cannot read or write "
                               "the local path '/data/in': use memory:// URLs (or --backend docker to run the "
                               "stand-in code path locally)")


def test_function_names_fit_the_platform():
    assert function_name_for({"module": "word_count", "class": "WordCount"}) == "corral-word_count-WordCount"
    lower = function_name_for({"module": "word_count", "class": "WordCount"}, max_length=63, lowercase=True)
    assert lower == "corral-word-count-wordcount"
    long = function_name_for({"module": "m" * 80, "class": "C"}, max_length=63, lowercase=True)
    assert len(long) == 63 and long != function_name_for({"module": "m" * 81, "class": "C"}, 63, True)
    with pytest.raises(corral.UsageError, match=r"invalid value for --memory: 9000 is out of range for X "
                                                r"\(must be from 128 to 4096\)"):
        check_range(MEMORY, 9000, 128, 4096, "X")


# --- invocations ----------------------------------------------------------------------------------------
class Plugin:
    script: list = []
    made: list = []

    @hookimpl
    def corral_executors(self):
        def create(settings):
            executor = StandIn(2, RemoteConfig.from_settings(settings, inline_payload_limit=64,
                                                             inline_result_limit=64), Plugin.script)
            Plugin.made.append(executor)
            return executor

        return [ExecutorSpec("stand-in", create, "test")]


@pytest.fixture
def stand_in_backend():
    get_plugin_manager().register(Plugin(), name="test-stand-in")
    Plugin.script, Plugin.made = [], []
    yield Plugin
    get_plugin_manager().unregister(name="test-stand-in")


def write_memory(url: str, data: bytes) -> None:
    corral.get_filesystem(url).write_bytes(url, data)


def read_parts(out: str) -> Counter:
    fs = corral.get_filesystem(out)
    counts: Counter = Counter()
    for info in fs.expand(out):
        if info.url.rsplit("/", 1)[-1].startswith("part-"):
            for line in fs.read_bytes(info.url).decode().splitlines():
                word, count = line.split("\t")
                counts[word] += int(count)
    return counts


def run_wordcount(name: str, **settings):
    from corral.cli import resolve_job

    text = "one two two\nthree three three\n" * 40
    write_memory(f"memory://{name}/in/a.txt", text.encode())
    manifest = corral.run(resolve_job(str(WORDCOUNT)), f"memory://{name}/in/", f"memory://{name}/out",
                          backend="stand-in", **settings)
    return manifest, read_parts(f"memory://{name}/out")


def attempts(manifest):
    return [a for stage in manifest["stages"] for task in stage["tasks"].values() for a in task["attempts"]]


def test_payloads_and_results_through_the_working_folder_and_the_handlers_own_measurements(stand_in_backend):
    """Inline limits of 64 bytes: every payload and result crosses through the working folder, the count
    is exact, nothing is left behind, and each attempt carries what run_remote measured."""
    manifest, counts = run_wordcount("refs", reducers=2, split_size="256")
    assert counts == Counter({"three": 120, "two": 80, "one": 40})
    (executor,) = stand_in_backend.made
    assert executor.bodies and all(b"_corral_payload" in body and len(body) < 300 for body in executor.bodies)
    assert not corral.get_filesystem("memory://refs/out").exists("memory://refs/out/_corral/work")
    found = attempts(manifest)
    assert len(found) == len(executor.bodies) > 2
    for attempt in found:
        stats = attempt["stats"]
        assert stats["worker"] == found[0]["stats"]["worker"]  # one warm instance: this process
        assert stats["duration_ms"] > 0 and stats["rss_mb"] > 10
        assert stats["cold_start"] is (stats["instance_tasks"] == 1)
        assert stats["peak_memory_mb"] >= stats["rss_mb"] * 0.5 and stats["memory_size_mb"] == 512
    tasks = [a["stats"]["instance_tasks"] for a in found]
    assert len(set(tasks)) == len(tasks)  # one warm instance: each task counted once
    report = manifest["report"]
    assert report["invocations"] == len(found) and report["throttled_invokes"] == 0
    assert report["summary"].startswith(f"{len(found)} invocations, ")
    assert "GB-s billed (512 MB): estimated stand-in cost $" in report["summary"]
    assert report["summary"].endswith("at local list prices of 2026-12-01")


def test_throttling_is_backpressure_and_server_errors_are_retried(stand_in_backend, caplog):
    stand_in_backend.script = [Throttled("429 no instance"), Throttled("429 no instance"), ServerError("503")]
    with caplog.at_level("INFO", logger="corral.stand-in"):
        manifest, counts = run_wordcount("throttled", reducers=1, retries=0)
    assert counts == Counter({"three": 120, "two": 80, "one": 40})  # exact, though throttled
    first = attempts(manifest)[0]["stats"]
    assert (first["throttles"], first["invoke_attempts"]) == (2, 4)
    assert first["throttle_message"] == "Throttled: 429 no instance"  # for the live page
    assert manifest["report"]["throttled_invokes"] == 2
    assert manifest["report"]["summary"].endswith("; 2 throttled invokes retried")
    logged = [r.getMessage() for r in caplog.records]
    assert sum("invoke throttled (Throttled: 429 no instance)" in m for m in logged) == 2
    assert sum("invoke failed (ServerError: 503)" in m for m in logged) == 1


def test_still_throttled_at_the_deadline_and_server_errors_past_their_attempts():
    executor = StandIn(config=RemoteConfig(api_attempts=3), script=[Throttled("429")] * 1000)
    executor.deadline = time.time() + 0.5  # from here, not from making the executor
    started = time.monotonic()
    outcome = executor.invoke({"task": "map-0000", "attempt": 1})
    assert 0.4 < time.monotonic() - started < 5
    assert outcome.failure.kind == THROTTLED
    assert outcome.failure.message.startswith("still throttled at the job's deadline (--deadline) after ")
    assert outcome.stats["throttle_message"] == "Throttled: 429"
    broken = StandIn(script=[ServerError("503 backend")] * 5)
    outcome = broken.invoke({"task": "map-0000", "attempt": 1})
    assert outcome.failure.kind == INFRASTRUCTURE and outcome.failure.message == "ServerError: 503 backend"
    assert outcome.stats["invoke_attempts"] == 3
    other = StandIn(script=[ValueError("no such function")])
    outcome = other.invoke({"task": "map-0000", "attempt": 1})  # not retryable: at once
    assert outcome.failure.kind == INFRASTRUCTURE and outcome.stats["invoke_attempts"] == 1
    for done in (executor, broken, other):
        done.close()


def test_cancel_abandons_one_attempt_and_cancel_all_every_one_without_waiting():
    stuck = threading.Event()  # the invocations wait on it: calls the platform is still running
    executor = StandIn(max_concurrency=3, script=[stuck, stuck, stuck])
    futures = [executor.submit({"task": f"map-000{n}", "attempt": 1}) for n in range(3)]
    time.sleep(0.2)
    assert not any(f.done() for f in futures)
    executor.cancel(futures[0])
    outcome = futures[0].result(timeout=1)
    assert outcome.failure.kind == CANCELLED and "may still be running" in outcome.failure.message
    started = time.monotonic()
    executor.cancel_all()
    assert all(f.result(timeout=1).failure.kind == CANCELLED for f in futures)
    late = executor.submit({"task": "map-0009", "attempt": 1}).result(timeout=1)
    assert late.failure.kind == CANCELLED
    executor.close()  # does not wait for the calls still "running"
    assert time.monotonic() - started < 1
    stuck.set()


def test_a_cancelled_attempts_retries_stop(monkeypatch):
    """Cancelled while it waits to retry a throttled invoke: no request goes out any more (not even the
    one it was waiting to send), and the cancelled attempt's stats say how often it was throttled."""
    import tenacity

    monkeypatch.setattr(tenacity, "wait_random_exponential", lambda **_: lambda state: 1.0)  # waits of 1 s
    executor = StandIn(script=[Throttled("429")] * 1000)
    future = executor.submit({"task": "map-0000", "attempt": 1})
    deadline = time.monotonic() + 20
    while len(executor.bodies) < 2:  # two invokes, both throttled; the third is due 1 s after the second
        assert time.monotonic() < deadline
        time.sleep(0.01)
    executor.cancel(future)
    outcome = future.result(timeout=1)
    assert outcome.failure.kind == CANCELLED
    assert outcome.stats == {"throttles": 2, "invoke_attempts": 2}
    time.sleep(1.5)
    assert len(executor.bodies) == 2  # no more invocations after the cancel
    executor.close()


def test_cancel_of_a_finished_attempt_keeps_its_outcome():
    executor = StandIn()
    future = executor.submit({"task": "map-0000", "attempt": 1, "job": {"module": "x", "class": "X"}})
    outcome: Outcome = future.result(timeout=10)
    executor.cancel(future)
    assert future.result() is outcome and outcome.failure.kind == "user error"  # no such module x
    executor.close()


# --- the function side ------------------------------------------------------------------------------
def test_run_remote_caps_the_memory_budget_and_runs_the_packaged_job(tmp_path):
    event = {"memory_budget": 256 << 20, "job": {"module": "myjob", "class": "J", "path": "/host/myjob.py"}}
    prepared = prepare(event, 128, str(tmp_path))
    assert prepared["memory_budget"] == int(128 * 0.4 * (1 << 20))
    assert prepared["job"]["path"] == "/host/myjob.py"  # not packaged here: the path stays
    (tmp_path / "myjob.py").write_text("")
    assert prepare(event, 1024, str(tmp_path))["job"]["path"] is None
    assert prepare(event, 1024, str(tmp_path))["memory_budget"] == 256 << 20  # under the cap
    assert event["job"]["path"] == "/host/myjob.py"  # the caller's event is left alone


def test_large_payloads_and_results_go_by_reference(tmp_path):
    executor = StandIn(config=RemoteConfig(inline_payload_limit=1024, inline_result_limit=1024))
    executor.refs = str(tmp_path / "_refs")
    payload = {"task": "reduce-0000", "attempt": 1, "sources": [["s3://b/x", 0, n] for n in range(500)]}
    event, stored = executor._event(payload)
    assert stored and len(event) < 300 and (tmp_path / "_refs").exists()
    unwrapped, results = unwrap(json.loads(event))
    assert unwrapped == payload and results == {"url": executor.refs, "limit": 1024}
    big_result = {"ok": True, "index": [[n, n + 1] for n in range(1000)]}
    answer = wrap(big_result, results)
    assert set(answer) == {"_corral_result", "bytes"}
    assert json.loads(executor._fetch_result(json.dumps(answer).encode())) == big_result
    executor._remove(stored)
    assert list((tmp_path / "_refs").iterdir()) == []  # payload and result removed once read
    small = {"ok": True}
    assert wrap(small, results) is small
    too_big = StandIn()  # no working folder: a payload over the platform's request limit cannot go at all
    with pytest.raises(corral.CorralError, match="over the stand-in cloud's 65536 byte limit"):
        too_big._event({"data": "x" * 70000})


def test_a_payload_that_cannot_be_read_is_an_infrastructure_failure(tmp_path):
    result = run_remote({"_corral_payload": str(tmp_path / "gone.json")})
    assert result["ok"] is False and result["error"]["kind"] == "infrastructure"
    outcome = outcome_from_result(result)
    assert outcome.failure.kind == INFRASTRUCTURE
    assert outcome.failure.message.startswith("cannot read the task's payload: FileNotFoundError: ")


def test_importing_corral_remote_loads_no_sdk_and_no_retry_library():
    code = ("import sys; before = set(sys.modules); import corral.remote; "
            "print(sorted(m.split('.')[0] for m in set(sys.modules) - before "
            "if m.split('.')[0] in ('tenacity', 'boto3', 'botocore', 'google', 'requests', 'fsspec')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
