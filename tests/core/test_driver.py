"""The driver: retries, failures with the user's traceback, dead workers, duplicate attempts."""

from __future__ import annotations

import itertools
import json
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

import corral
from corral.plugins import get_plugin_manager

from . import jobs
from .util import cli, counts, lines, manifest, parts, run, run_command, word_counter

TEXT = "one two three\ntwo three\nthree\n"
EXPECTED = {"one": 1, "two": 2, "three": 3}


@pytest.fixture
def text_file(tmp_path):
    (tmp_path / "in.txt").write_text(TEXT)
    return tmp_path / "in.txt"


# --- retries -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_a_task_failing_once_is_retried_and_the_output_is_exact(text_file, tmp_path, backend):
    marker = tmp_path / "marker"
    result = run(jobs.FailOnce, text_file, tmp_path / "out", backend=backend, arg=[f"marker={marker}"])
    assert counts(tmp_path / "out") == EXPECTED
    task = result["stages"][0]["tasks"]["map-0000"]
    assert task["committed_attempt"] == 2
    first, second = task["attempts"]
    assert (first["attempt"], first["status"], second["attempt"], second["status"]) == (1, "failed", 2, "committed")
    assert first["failure"]["kind"] == corral.USER_ERROR
    assert first["failure"]["message"] == "ValueError: transient failure"
    assert 'raise ValueError("transient failure")' in first["failure"]["traceback"]
    assert first["output"] != second["output"]
    assert result["stages"][0]["tasks"]["reduce-0000"]["committed_attempt"] == 1


def test_a_reduce_task_failing_once_is_retried(text_file, tmp_path):
    marker = tmp_path / "marker"
    result = run(jobs.FailReduceOnce, text_file, tmp_path / "out", arg=[f"marker={marker}"], reducers=1)
    assert counts(tmp_path / "out") == EXPECTED
    assert [a["status"] for a in result["stages"][0]["tasks"]["reduce-0000"]["attempts"]] == ["failed", "committed"]


def test_retries_zero_fails_on_the_first_failure(text_file, tmp_path):
    with pytest.raises(corral.JobFailed, match=r"^task map-0000 attempt 1: ValueError: transient failure\n"):
        run(jobs.FailOnce, text_file, tmp_path / "out", arg=[f"marker={tmp_path / 'm'}"], retries=0)


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_a_task_always_failing_fails_the_job_after_its_retries(text_file, tmp_path, capsys, retries):
    code, _, err = cli(
        capsys, "run", f"{jobs.__file__}:AlwaysFails", text_file, "--out", tmp_path / "out",
        "--backend", "threads", "--retries", retries,
    )
    assert code == 1
    assert f"corral: job failed: task map-0000 attempt {retries + 1}: ValueError: cannot parse 'one two three'\n" in err
    m = manifest(tmp_path / "out")
    assert m["status"] == "failed"
    assert len(m["stages"][0]["tasks"]["map-0000"]["attempts"]) == retries + 1
    assert not (tmp_path / "out" / "_SUCCESS").exists() and not parts(tmp_path / "out")


def test_a_failing_job_as_a_command_shows_the_users_traceback(text_file, tmp_path):
    done = run_command("corral", "run", f"{jobs.__file__}:AlwaysFails", text_file, "--out", tmp_path / "out")
    assert done.returncode == 1
    assert done.stdout == ""
    err = done.stderr
    assert "corral: job failed: task map-0000 attempt 4: ValueError: cannot parse 'one two three'\n" in err
    assert "Traceback (most recent call last):" in err
    assert f'File "{jobs.__file__}", line ' in err and ", in map\n" in err
    assert 'raise ValueError(f"cannot parse {line!r}")  # the user\'s line' in err
    assert err.rstrip().endswith("ValueError: cannot parse 'one two three'")
    assert "corral/" not in err.replace(jobs.__file__, "")  # no frames of corral itself
    assert not (tmp_path / "out" / "_SUCCESS").exists() and not parts(tmp_path / "out")


def test_verbose_logs_retries(text_file, tmp_path):
    done = run_command(
        "corral", "run", f"{jobs.__file__}:FailOnce", text_file, "--out", tmp_path / "out", "-v",
        "--arg", f"marker={tmp_path / 'marker'}", "--backend", "threads",
    )
    assert done.returncode == 0, done.stderr
    assert "corral: retrying map-0000 (attempt 1 user error: ValueError: transient failure) in " in done.stderr


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_max_concurrency_one_runs_one_task_at_a_time(tmp_path, backend):
    (tmp_path / "in.txt").write_text("x\n" * 12)
    run(jobs.Timed, tmp_path / "in.txt", tmp_path / "out", backend=backend, max_concurrency=1, split_size="6",
        map_bin_size="6")
    spans = sorted(json.loads(line.split("\t")[1]) for line in lines(tmp_path / "out"))
    assert len(spans) == 4
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))


def test_the_retries_setting_default_is_three(text_file, tmp_path):
    with pytest.raises(corral.JobFailed) as failure:
        run(jobs.AlwaysFails, text_file, tmp_path / "out")
    assert str(failure.value).startswith("task map-0000 attempt 4: ")


# --- dead workers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("how", "said"), [("kill", r"killed by signal 9 \(SIGKILL\)"), ("exit", "exited with code 3")])
def test_a_worker_process_that_dies_is_retried_and_says_how_it_died(text_file, tmp_path, how, said):
    marker = tmp_path / "marker"
    result = run(jobs.DieOnce, text_file, tmp_path / "out", backend="processes", arg=[f"marker={marker}", f"how={how}"])
    assert marker.exists()
    assert counts(tmp_path / "out") == EXPECTED
    first, second = result["stages"][0]["tasks"]["map-0000"]["attempts"]
    assert first["status"] == "failed" and first["failure"]["kind"] == corral.INFRASTRUCTURE
    assert re.fullmatch(rf"worker process \d+ {said}", first["failure"]["message"]), first["failure"]["message"]
    assert second["status"] == "committed"


def test_a_dying_worker_among_many_running_tasks(tmp_path):
    text = "".join(f"w{i % 37} x{i % 5}\n" for i in range(4000))
    (tmp_path / "in.txt").write_text(text)
    marker = tmp_path / "marker"
    result = run(
        jobs.DieOnce, tmp_path / "in.txt", tmp_path / "out", backend="processes", arg=[f"marker={marker}"],
        split_size="4KB", map_bin_size="4KB", reducers=3,
    )
    assert counts(tmp_path / "out") == word_counter(text)
    failed = [a for t in result["stages"][0]["tasks"].values() for a in t["attempts"] if a["status"] == "failed"]
    assert len(failed) == 1  # the dead one only: the task running beside it is not charged a retry


def test_a_dead_worker_charges_only_its_own_task_not_the_one_running_beside_it(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("die\n")
    (tmp_path / "in" / "b.txt").write_text("slow\n")
    result = run(jobs.DieBesideSlow, tmp_path / "in", tmp_path / "out", backend="processes", max_concurrency=2,
                 map_bin_size="1", arg=[f"folder={tmp_path}"])
    assert counts(tmp_path / "out") == {"die": 1, "slow": 1}
    tasks = result["stages"][0]["tasks"]
    attempts = {name: t["attempts"] for name, t in tasks.items() if name.startswith("map")}
    assert sorted([a["status"] for a in t] for t in attempts.values()) == [["committed"], ["failed", "committed"]]
    failure = next(t[0]["failure"] for t in attempts.values() if len(t) == 2)
    assert re.fullmatch(r"worker process \d+ exited with code 3", failure["message"]), failure


# --- duplicate attempts ------------------------------------------------------------------------------


class LossyExecutor(corral.Executor):
    """Runs every task for real, but the first attempt of each task is reported as failed:
    ``lost``: after it finished and wrote its output (its answer was lost);
    ``straggler``: at once, while it is still running and will write its output later."""

    def __init__(self, mode: str, max_concurrency: int = 2) -> None:
        super().__init__(max_concurrency)
        self.mode = mode
        self.pool = ThreadPoolExecutor(8)
        self.stragglers: list[Future] = []
        self.release = threading.Event()

    def submit(self, payload):
        result: Future = Future()
        first = payload["attempt"] == 1
        if first and self.mode == "straggler":
            def late():
                self.release.wait(10)
                corral.run_task(payload)

            self.stragglers.append(self.pool.submit(late))
            result.set_result(corral.Outcome(failure=corral.Failure(corral.TIMEOUT, "no answer", limit=0.01)))
            return result

        def work():
            answer = corral.run_task(payload)
            if first:
                return corral.Outcome(failure=corral.Failure(corral.INFRASTRUCTURE, "the answer was lost"))
            return corral.outcome_from_result(answer)

        return self.pool.submit(work)

    def close(self):
        self.release.set()
        for f in self.stragglers:
            f.result()
        self.pool.shutdown()


class LossyPlugin:
    def __init__(self):
        self.created: list[LossyExecutor] = []

    @corral.hookimpl
    def corral_executors(self):
        def make(mode):
            def create(settings):
                executor = LossyExecutor(mode)
                self.created.append(executor)
                return executor

            return create

        return [
            corral.ExecutorSpec("test-lost", make("lost"), "first attempts lose their answer"),
            corral.ExecutorSpec("test-straggler", make("straggler"), "first attempts time out and go on"),
        ]


@pytest.fixture
def lossy_executors():
    plugin = LossyPlugin()
    pm = get_plugin_manager()
    pm.register(plugin, name="core-test-executors")
    try:
        yield plugin
    finally:
        pm.unregister(name="core-test-executors")


@pytest.mark.parametrize("backend", ["test-lost", "test-straggler"])
def test_duplicate_attempts_never_duplicate_records(tmp_path, lossy_executors, backend):
    text = "".join(f"w{i % 23} v{i % 3}\n" for i in range(3000))
    (tmp_path / "in.txt").write_text(text)
    result = run(
        jobs.WordCount, tmp_path / "in.txt", tmp_path / "out", backend=backend,
        split_size="4KB", map_bin_size="8KB", reducers=3, keep_intermediate=True,
    )
    assert counts(tmp_path / "out") == word_counter(text)
    stage = result["stages"][0]
    assert stage["map_tasks"] >= 3
    for task in stage["tasks"].values():
        assert [a["status"] for a in task["attempts"]] == ["failed", "committed"]
        assert task["committed_attempt"] == 2
    # whatever the first attempts left behind is never read: the commit names the attempt
    kept = {p.name for p in (tmp_path / "out" / "_corral" / "work").rglob("*.bin")}
    committed = {t["attempts"][1]["output"].rsplit("/", 1)[1] for t in stage["tasks"].values() if t["phase"] == "map"}
    assert committed <= kept


class ThrottlingExecutor(corral.Executor):
    """Answers "throttled" to the first five attempts of every task, then runs them."""

    def __init__(self):
        super().__init__(2)
        self.pool = ThreadPoolExecutor(2)

    def submit(self, payload):
        if payload["attempt"] <= 5:
            done: Future = Future()
            done.set_result(corral.Outcome(failure=corral.Failure(corral.THROTTLED, "slow down")))
            return done
        return self.pool.submit(lambda: corral.outcome_from_result(corral.run_task(payload)))

    def close(self):
        self.pool.shutdown()


class ThrottlingPlugin:
    @corral.hookimpl
    def corral_executors(self):
        return [corral.ExecutorSpec("test-throttled", lambda settings: ThrottlingExecutor())]


def test_throttling_does_not_count_toward_the_retries(text_file, tmp_path):
    pm = get_plugin_manager()
    pm.register(ThrottlingPlugin(), name="core-test-throttling")
    try:
        result = run(jobs.WordCount, text_file, tmp_path / "out", backend="test-throttled", retries=0)
    finally:
        pm.unregister(name="core-test-throttling")
    assert counts(tmp_path / "out") == EXPECTED
    for task in result["stages"][0]["tasks"].values():
        assert [a["status"] for a in task["attempts"]] == ["failed"] * 5 + ["committed"]
        assert task["attempts"][0]["failure"]["kind"] == corral.THROTTLED


# --- failures that retrying cannot fix ---------------------------------------------------------------


def test_bad_input_fails_at_once_without_retries(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"fine\n\xff\n")
    with pytest.raises(corral.JobFailed, match=r"^task map-0000 attempt 1: .*bad.txt: invalid UTF-8 at byte offset 5"):
        run(jobs.WordCount, tmp_path / "bad.txt", tmp_path / "out", retries=3)
    attempts = manifest(tmp_path / "out")["stages"][0]["tasks"]["map-0000"]["attempts"]
    assert [(a["status"], a["failure"]["kind"]) for a in attempts] == [("failed", corral.INPUT_ERROR)]


def test_memory_urls_with_worker_processes_are_refused_up_front(tmp_path, capsys):
    import fsspec

    fsspec.filesystem("memory").pipe("/refused/in.txt", b"a b\n")
    code, _, err = cli(capsys, "run", f"{jobs.__file__}:WordCount", "memory://refused/in.txt",
                       "--out", "memory://refused/out", "--backend", "processes")
    assert code == 2
    assert err.strip().splitlines() == [
        "corral: error: memory://refused/in.txt lives in the driver's memory, which worker processes cannot "
        "see: use --backend threads"
    ]
