"""One run per output: the lease on ``OUT/_corral/lock``. A second run on the same OUT is refused
naming the holder; a stale lease is taken over, saying so; a run whose lease was taken stops. Two runs
sharing a ``--work-dir`` never touch each other's data (defect 2)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

import corral
from corral.executors.local import ThreadExecutor
from corral.filesystems.local import corral_filesystem
from corral.plugins import get_plugin_manager

from . import jobs
from .util import clean_env, cli, corral_command, counts, lines, manifest, parts, run, run_command, word_counter


def _start(argv: list) -> subprocess.Popen:
    return subprocess.Popen([corral_command(), *map(str, argv)], env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 30) -> dict:
    """Until ``path`` exists; its JSON content if it is a file."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    while path.is_file():  # made first, then written: a driver held up in between leaves it empty for a while
        with contextlib.suppress(ValueError):
            return json.loads(path.read_text())
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return {}


@pytest.fixture
def slow_input(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    text = ""
    for n in range(6):
        body = "".join(f"k{(n * 5 + i) % 50:02d} z\n" for i in range(20))
        (folder / f"{n}.txt").write_text(body)
        text += body
    return folder, word_counter(text)


def test_a_second_run_on_the_same_output_is_refused_naming_the_holder(slow_input, tmp_path, capsys):
    folder, expected = slow_input
    out = tmp_path / "out"
    first = _start(["run", f"{jobs.__file__}:SlowCounted", folder, "--out", out, "--map-bin-size", "1",
                    "--backend", "threads", "--arg", "sleep=0.05", "-q"])
    try:
        lock = _wait_for(out / "_corral" / "lock", first)
        assert (lock["host"], lock["pid"]) == (socket.gethostname(), first.pid)
        code, _, err = cli(capsys, "run", f"{jobs.__file__}:WordCount", folder, "--out", out, "--overwrite")
        assert code == 2
        (line,) = err.strip().splitlines()
        assert line.startswith(f"corral: error: the output folder {out} is in use by run {lock['run_id']} on host "
                               f"{socket.gethostname()} (pid {first.pid}, last heartbeat ")
        assert line.endswith(" s ago): wait for it to end, or stop it and continue it with --resume")
        assert first.wait(60) == 0
    finally:
        first.kill()
    assert counts(out) == expected  # the refused run changed nothing
    assert not (out / "_corral" / "lock").exists()  # released at the end


def _lock(out: Path, age: float = 0, **fields) -> None:
    """A lock of another run whose last heartbeat was ``age`` seconds ago."""
    (out / "_corral").mkdir(parents=True, exist_ok=True)
    holder = {"run_id": "20260101T000000-abcdef", "host": "elsewhere", "pid": 4242, "heartbeat": time.time() - age}
    (out / "_corral" / "lock").write_text(json.dumps({**holder, **fields}))


def test_a_live_lease_of_another_host_is_respected(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("a b\n")
    _lock(tmp_path / "out", age=30)
    code, _, err = cli(capsys, "run", f"{jobs.__file__}:WordCount", tmp_path / "in.txt", "--out", tmp_path / "out",
                       "--backend", "threads")
    assert code == 2
    assert "is in use by run 20260101T000000-abcdef on host elsewhere (pid 4242, last heartbeat 30 s ago)" in err


@pytest.mark.parametrize("fields, why", [
    ({"age": 1000}, "run 20260101T000000-abcdef on host elsewhere (pid 4242): "
                                        "no heartbeat for 17 min"),
    ({"host": socket.gethostname(), "pid": 2 ** 22 + 1}, f"run 20260101T000000-abcdef on host "
                                                           f"{socket.gethostname()} (pid {2 ** 22 + 1}): "
                                                           "its process is gone"),
])
def test_a_stale_lease_is_taken_over_and_said_so(tmp_path, fields, why):
    (tmp_path / "in.txt").write_text("a b\n")
    _lock(tmp_path / "out", **fields)
    done = run_command("corral", "run", f"{jobs.__file__}:WordCount", tmp_path / "in.txt", "--out", tmp_path / "out",
                       "--backend", "threads", "-q")
    assert (done.returncode, done.stderr) == (0, f"corral: taking over the output folder's lease from {why}\n")
    assert counts(tmp_path / "out") == {"a": 1, "b": 1}


def test_the_heartbeat_is_renewed_while_the_run_goes_on(slow_input, tmp_path):
    folder, _ = slow_input
    out = tmp_path / "out"
    process = _start(["run", f"{jobs.__file__}:SlowCounted", folder, "--out", out, "--map-bin-size", "1",
                      "--backend", "threads", "--max-concurrency", "2", "--arg", "sleep=0.1", "--lease-timeout", "2",
                      "-q"])
    try:
        first = _wait_for(out / "_corral" / "lock", process)["heartbeat"]
        deadline = time.monotonic() + 30
        while (later := _wait_for(out / "_corral" / "lock", process)["heartbeat"]) <= first + 0.4:
            assert time.monotonic() < deadline, "the heartbeat was not renewed"  # every timeout / 4 = 0.5 s
            time.sleep(0.1)
        assert later > first + 0.4
        assert process.wait(60) == 0
    finally:
        process.kill()


def test_a_run_whose_lease_was_taken_stops_without_writing_more(slow_input, tmp_path):
    folder, _ = slow_input
    out = tmp_path / "out"
    process = _start(["run", f"{jobs.__file__}:SlowCounted", folder, "--out", out, "--map-bin-size", "1",
                      "--backend", "threads", "--max-concurrency", "1", "--arg", "sleep=0.05", "--lease-timeout", "2"])
    try:
        _wait_for(out / "_corral" / "lock", process)
        _lock(out, run_id="20260101T000000-thief1", host="other-host", pid=99)  # another run took it over
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 1
    assert err.strip().splitlines()[-1].startswith(
        f"corral: job failed: this run lost its lease on the output folder {out} to run 20260101T000000-thief1 "
        "on host other-host (pid 99, last heartbeat ")
    assert not (out / "_SUCCESS").exists() and not parts(out)
    assert json.loads((out / "_corral" / "lock").read_text())["run_id"] == "20260101T000000-thief1"  # left alone
    assert not (out / "_corral" / "manifest.json").exists()  # OUT is the other run's: nothing written there


def test_conditional_creation_and_swap_on_a_local_disk(tmp_path):
    fs = corral_filesystem(str(tmp_path))
    url = str(tmp_path / "lock")
    assert fs.create_new(url, b"one") is True
    assert fs.create_new(url, b"two") is False  # O_EXCL: never replaced
    data, version = fs.read_versioned(url)
    assert data == b"one"
    assert fs.replace_if(url, b"three", version) is True
    assert fs.replace_if(url, b"four", version) is False  # the version moved on
    assert fs.read_versioned(url)[0] == b"three"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".replace-")]


# --- defect 2: concurrent runs --------------------------------------------------------------------------


def test_two_runs_into_one_output_with_a_shared_work_dir_never_mix(tmp_path):
    """Two runs at once, --reducers 7 and 3, one --work-dir: exactly one succeeds; the other stops with
    exit 2, naming the first; the output is the winner's, whole, with no key twice."""
    folder = tmp_path / "in"
    folder.mkdir()
    full = ""
    for n in range(4):
        body = "".join(f"key{i:05d} key{(i * 7) % 5000:05d}\n" for i in range(n * 5000, (n + 1) * 5000))
        (folder / f"{n}.txt").write_text(body)
        full += body
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["run", f"{jobs.__file__}:SlowCounted", folder, "--out", out, "--work-dir", work, "--map-bin-size", "1",
            "--backend", "processes", "--arg", "sleep=0.00005", "--max-concurrency", "2", "-q"]
    runs = [_start([*argv, "--reducers", "7"]), _start([*argv, "--reducers", "3"])]
    results = [(p.wait(120), p.communicate()[1]) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    winner = 7 if results[0][0] == 0 else 3
    (loser_err,) = [err for code, err in results if code == 2]
    assert "is in use by run " in loser_err or "already holds output" in loser_err
    assert "Traceback" not in loser_err
    assert len(parts(out)) == winner
    assert Counter(line.rpartition("\t")[0] for line in lines(out)).most_common(1)[0][1] == 1  # no key twice
    assert counts(out) == word_counter(full)
    m = manifest(out)
    assert m["status"] == "succeeded" and m["stages"][0]["reduce_tasks"] == winner
    assert (out / "_SUCCESS").exists()
    assert not list(work.iterdir())  # the winner removed its own working folder; the loser never made one


def test_runs_sharing_a_work_dir_leave_each_others_data_alone(tmp_path, slow_input):
    """A run that ends while another still runs removes its own working folder only."""
    folder, expected = slow_input
    work = tmp_path / "work"
    slow = _start(["run", f"{jobs.__file__}:SlowCounted", folder, "--out", tmp_path / "slow", "--work-dir", work,
                   "--map-bin-size", "1", "--backend", "processes", "--arg", "sleep=0.05", "-q"])
    try:
        slow_run_id = _wait_for(tmp_path / "slow" / "_corral" / "lock", slow)["run_id"]
        _wait_for(work / slow_run_id / "stage-0", slow)  # its first tasks are writing
        run(jobs.WordCount, folder, tmp_path / "fast", work_dir=str(work))
        assert [p.name for p in work.iterdir()] == [slow_run_id]  # the fast run's folder went, not the slow one's
        assert slow.wait(60) == 0, slow.communicate()
    finally:
        if slow.poll() is None:
            slow.send_signal(signal.SIGKILL)
    assert counts(tmp_path / "slow") == counts(tmp_path / "fast") == expected
    assert not list(work.iterdir())


def test_the_default_working_root_goes_only_when_empty(tmp_path):
    """Without --work-dir, OUT/_corral/work is removed at the end only if no other run's folder is in it."""
    (tmp_path / "in.txt").write_text("a b\n")
    other = tmp_path / "out" / "_corral" / "work" / "20250101T000000-other0"
    other.mkdir(parents=True)
    (other / "data.bin").write_bytes(b"x")
    run(jobs.WordCount, tmp_path / "in.txt", tmp_path / "out")
    assert (other / "data.bin").read_bytes() == b"x"
    os.remove(other / "data.bin")
    other.rmdir()
    run(jobs.WordCount, tmp_path / "in.txt", tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out" / "_corral").iterdir()) == ["manifest.json"]


class SlowDeploy(ThreadExecutor):
    """The threads executor with a deploy that takes a while (as a first Lambda deploy does), noting the
    lease's heartbeat before and after."""

    seen: list[float] = []
    lock = ""

    def deploy(self, job):
        SlowDeploy.seen.append(json.loads(Path(SlowDeploy.lock).read_text())["heartbeat"])
        time.sleep(3.0)  # renewals every 0.25 s: 1 s of them leaves 2 s for a late heartbeat thread
        SlowDeploy.seen.append(json.loads(Path(SlowDeploy.lock).read_text())["heartbeat"])


class SlowDeployPlugin:
    @corral.hookimpl
    def corral_executors(self):
        return [corral.ExecutorSpec("test-slow-deploy", lambda settings: SlowDeploy(2))]


def test_the_heartbeat_goes_on_during_a_long_deploy(tmp_path):
    (tmp_path / "in.txt").write_text("a b\n")
    SlowDeploy.seen.clear()
    SlowDeploy.lock = str(tmp_path / "out" / "_corral" / "lock")
    get_plugin_manager().register(SlowDeployPlugin(), name="core-test-slow-deploy")
    try:
        run(jobs.WordCount, tmp_path / "in.txt", tmp_path / "out", backend="test-slow-deploy", lease_timeout=1)
    finally:
        get_plugin_manager().unregister(name="core-test-slow-deploy")
    before, after = SlowDeploy.seen
    assert after - before >= 1.0  # renewed every 0.25 s while the deploy ran
    assert counts(tmp_path / "out") == {"a": 1, "b": 1}


def _journaled_commits(out: Path) -> int:
    path = out / "_corral" / "journal.jsonl"
    text = path.read_text() if path.exists() else ""
    return text.count('"t":"commit"')


def test_resume_right_after_a_sigkill_takes_the_lease_of_the_unreaped_driver(slow_input, tmp_path):
    """The killed driver is a zombie until its parent (this test) reaps it: its pid still answers a signal
    0, but its process is gone, and --resume goes ahead at once."""
    folder, expected = slow_input
    out = tmp_path / "out"
    argv = ["run", f"{jobs.__file__}:SlowCounted", folder, "--out", out, "--map-bin-size", "1", "--backend",
            "threads", "--max-concurrency", "1", "--arg", "sleep=0.1"]
    driver = _start(argv)
    try:
        lock = _wait_for(out / "_corral" / "lock", driver)
        deadline = time.monotonic() + 60
        while _journaled_commits(out) < 1:  # something to resume
            assert driver.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(driver.pid, signal.SIGKILL)
        while Path(f"/proc/{driver.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)  # dead, not reaped: os.kill(pid, 0) still succeeds
        os.kill(driver.pid, 0)
        done = run_command("corral", *argv, "--resume", "-q")
    finally:
        driver.kill()
        driver.communicate()
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0] == (
        f"corral: taking over the output folder's lease from run {lock['run_id']} on host {socket.gethostname()} "
        f"(pid {driver.pid}): its process is gone")
    assert counts(out) == expected


def test_a_lease_whose_pid_another_process_has_now_is_taken_over(tmp_path):
    """pids are reused: a live process with the holder's pid but another start time is not the holder."""
    (tmp_path / "in.txt").write_text("a b\n")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        started = Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        _lock(tmp_path / "out", host=socket.gethostname(), pid=sleeper.pid, started=str(int(started) - 1))
        done = run_command("corral", "run", f"{jobs.__file__}:WordCount", tmp_path / "in.txt", "--out",
                           tmp_path / "out", "--backend", "threads", "-q")
        assert (done.returncode, done.stderr) == (0, (
            "corral: taking over the output folder's lease from run 20260101T000000-abcdef on host "
            f"{socket.gethostname()} (pid {sleeper.pid}): its process is gone\n"))

        _lock(tmp_path / "out", host=socket.gethostname(), pid=sleeper.pid, started=started)  # the holder itself
        done = run_command("corral", "run", f"{jobs.__file__}:WordCount", tmp_path / "in.txt", "--out",
                           tmp_path / "out", "--backend", "threads", "--overwrite", "-q")
        assert done.returncode == 2
        assert f"is in use by run 20260101T000000-abcdef on host {socket.gethostname()} (pid {sleeper.pid}, " \
               in done.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
