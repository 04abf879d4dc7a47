"""The built-in executors' side of interrupts and worker deaths: cancel one attempt, cancel them all,
workers that die with the driver, and a real ``corral run`` that is killed or interrupted.

Every test uses real worker processes and real signals. Processes are found through ``/proc`` (Linux).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import corral
from corral.executors.local import ProcessExecutor, ThreadExecutor
from corral.executors.oom import OomWatch, parse_oom_kills
from corral.split import Split
from corral.worker import job_ref

from . import jobs
from .util import clean_env, run

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")

JOBS = str(Path(jobs.__file__))
CORRAL = str(Path(sys.executable).with_name("corral"))  # this environment's console script


def map_payload(job: type[corral.Job], path: Path, out: Path, **args: str) -> dict:
    """The payload of map task 0 of a map-only ``job`` over the file ``path``."""
    return {
        "kind": "map", "job": job_ref(job), "args": args, "stage": 0, "task": "map-0000", "attempt": 1,
        "splits": [Split(str(path), 0, path.stat().st_size).to_json()], "partitions": 0, "output": str(out),
        "output_kind": "text", "input_format": "lines", "input_errors": "strict", "memory_budget": 64 << 20,
    }


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that still runs (a zombie waiting to be reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (its children, theirs, …)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def worker_pids(folder: Path, count: int, timeout: float = 20) -> list[int]:
    """The pids the ``Sleeper`` tasks wrote into ``folder``, once ``count`` of them have."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = sorted({int(p.read_text()) for p in folder.glob("pid-*") if p.read_text()})
        if len(pids) >= count:
            return pids
        time.sleep(0.02)
    raise AssertionError(f"{count} tasks did not start within {timeout} s")


def gone_within(pids: set[int] | list[int], seconds: float) -> set[int]:
    """Wait up to ``seconds`` for ``pids`` to end; the ones still running."""
    deadline = time.monotonic() + seconds
    while (left := {p for p in pids if running(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.fixture
def one_line(tmp_path) -> Path:
    (tmp_path / "pids").mkdir()
    (tmp_path / "in.txt").write_text("x\n")
    return tmp_path / "in.txt"


# --- processes: cancel one attempt, cancel them all ---------------------------------------------------


def test_cancel_ends_the_running_attempt_at_once_and_the_pool_replaces_its_worker(tmp_path, one_line):
    pids = tmp_path / "pids"
    executor = ProcessExecutor(1)
    try:
        future = executor.submit(map_payload(jobs.Sleeper, one_line, tmp_path / "a", folder=str(pids), sleep="30"))
        [pid] = worker_pids(pids, 1)
        started = time.monotonic()
        executor.cancel(future)
        outcome = future.result(timeout=5)
        assert time.monotonic() - started < 3
        assert outcome.failure.kind == corral.CANCELLED and outcome.failure.message == "the attempt was cancelled"
        assert not gone_within([pid], 5)
        for p in pids.iterdir():
            p.unlink()
        again = executor.submit(map_payload(jobs.Sleeper, one_line, tmp_path / "b", folder=str(pids), sleep="0"))
        assert again.result(timeout=20).ok  # a new worker took the dead one's place
        [new_pid] = worker_pids(pids, 1)
        assert new_pid != pid
    finally:
        executor.close()


def test_cancel_of_an_attempt_still_queued_drops_it_and_leaves_the_running_one(tmp_path, one_line):
    pids = tmp_path / "pids"
    executor = ProcessExecutor(1)
    try:
        first = executor.submit(map_payload(jobs.Sleeper, one_line, tmp_path / "a", folder=str(pids), sleep="1"))
        queued = executor.submit(map_payload(jobs.Sleeper, one_line, tmp_path / "b", folder=str(pids), sleep="1"))
        executor.cancel(queued)
        assert queued.result(timeout=1).failure.kind == corral.CANCELLED
        assert first.result(timeout=20).ok
        assert len(worker_pids(pids, 1)) == 1 and not (tmp_path / "b").exists()  # the queued one never ran
    finally:
        executor.close()


def test_cancel_all_kills_every_worker_and_close_returns_at_once(tmp_path, one_line):
    pids = tmp_path / "pids"
    before = descendants(os.getpid())  # e.g. a fork server an earlier test started, shared by the process
    executor = ProcessExecutor(2)
    futures = [
        executor.submit(map_payload(jobs.Sleeper, one_line, tmp_path / f"out{n}", folder=str(pids), sleep="30"))
        for n in range(3)  # two run, one waits
    ]
    workers = worker_pids(pids, 2)
    everything = descendants(os.getpid()) - before
    started = time.monotonic()
    executor.cancel_all()
    assert [f.result(timeout=5).failure.kind for f in futures] == [corral.CANCELLED] * 3
    executor.close()
    assert time.monotonic() - started < 3
    executor.close()  # closing twice is closing once
    assert not gone_within(workers, 5)
    assert not gone_within(everything, 5)  # nor any other process the pool started
    assert executor.submit({"never": "run"}).result(timeout=1).failure.kind == corral.CANCELLED


def test_an_interrupt_leaving_the_with_block_cancels_the_attempts(tmp_path, one_line):
    pids = tmp_path / "pids"
    started = 0.0
    with pytest.raises(KeyboardInterrupt), ProcessExecutor(1) as executor:
        future = executor.submit(map_payload(jobs.Sleeper, one_line, tmp_path / "a", folder=str(pids), sleep="30"))
        worker_pids(pids, 1)
        started = time.monotonic()
        raise KeyboardInterrupt
    assert time.monotonic() - started < 3
    assert future.result(timeout=0).failure.kind == corral.CANCELLED


# --- threads: cooperative cancellation between batches --------------------------------------------------


def test_a_cancelled_thread_task_stops_at_its_next_batch_of_input(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    (tmp_path / "in.txt").write_text(("y" * (1 << 20) + "\n") * 12)  # about 3 batches of 4 lines
    executor = ThreadExecutor(1)
    try:
        future = executor.submit(map_payload(jobs.Sleeper, tmp_path / "in.txt", tmp_path / "a", folder=str(pids),
                                             sleep="0.25"))
        worker_pids(pids, 1)
        started = time.monotonic()
        executor.cancel(future)
        outcome = future.result(timeout=10)
        assert outcome.failure is not None and outcome.failure.kind == corral.CANCELLED, outcome
        assert time.monotonic() - started < 2.5
        assert len(list(pids.iterdir())) < 12  # it did not read on to the end
    finally:
        executor.close()


def test_cancel_all_on_threads_drops_waiting_tasks_and_stops_running_ones(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    (tmp_path / "in.txt").write_text(("y" * (1 << 20) + "\n") * 12)
    executor = ThreadExecutor(1)
    payloads = [map_payload(jobs.Sleeper, tmp_path / "in.txt", tmp_path / f"out{n}", folder=str(pids), sleep="0.25")
                for n in range(2)]
    futures = [executor.submit(p) for p in payloads]
    worker_pids(pids, 1)
    started = time.monotonic()
    executor.cancel_all()
    executor.close()
    assert time.monotonic() - started < 2.5
    assert [f.result(timeout=0).failure.kind for f in futures] == [corral.CANCELLED] * 2


def test_close_after_cancel_all_on_threads_does_not_wait_for_a_long_call_of_the_users_code(tmp_path, one_line):
    pids = tmp_path / "pids"
    executor = ThreadExecutor(1)
    future = executor.submit(map_payload(jobs.Sleeper, one_line, tmp_path / "a", folder=str(pids), sleep="30"))
    worker_pids(pids, 1)
    started = time.monotonic()
    executor.cancel_all()
    executor.close()
    assert time.monotonic() - started < 3
    assert not future.done()  # still inside time.sleep: it resolves when (if) that call returns


# --- a real `corral run`, killed or interrupted ---------------------------------------------------------


def start_run(tmp_path: Path, backend: str = "processes", **popen) -> subprocess.Popen:
    """``corral run`` of the Sleeper over two one-line files (two map tasks at once), as a subprocess."""
    (tmp_path / "pids").mkdir()
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        (tmp_path / "in" / f"{name}.txt").write_text(f"{name}\n")
    return subprocess.Popen(
        [CORRAL, "run", f"{JOBS}:Sleeper", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
         "--backend", backend, "--max-concurrency", "2", "--map-bin-size", "1", "--retries", "0",
         "--arg", f"folder={tmp_path / 'pids'}", "--arg", "sleep=60"],
        env=clean_env(), **popen,
    )


def read_to_end(stream, seconds: float) -> bool:
    """Whether reading ``stream`` reaches its end within ``seconds`` (every writer closed it)."""
    done = threading.Event()

    def read():
        while stream.read(1 << 16):
            pass
        done.set()

    threading.Thread(target=read, daemon=True).start()
    return done.wait(seconds)


def kill_all(driver: subprocess.Popen, pids: set[int]) -> None:
    """Leave nothing of a failed test running (by pid: these processes only)."""
    driver.kill()
    driver.wait()
    for pid in pids:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def test_workers_die_with_a_killed_driver_and_its_output_pipe_ends(tmp_path):
    driver = start_run(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # like `corral run … | tee`
    everything: set[int] = set()
    try:
        workers = worker_pids(tmp_path / "pids", 2)
        everything = descendants(driver.pid)
        assert set(workers) <= everything
        driver.kill()
        driver.wait(5)
        assert read_to_end(driver.stdout, 5), "a process of the run still holds its output open"
        assert not gone_within(everything, 5), "processes of the run outlived the killed driver"
    finally:
        kill_all(driver, everything)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_leaves_no_worker_and_no_success_marker(tmp_path, sig):
    # a session of its own, and SIGINT at its default, as a terminal's Ctrl-C would find it
    driver = start_run(tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    everything: set[int] = set()
    try:
        workers = worker_pids(tmp_path / "pids", 2)
        everything = descendants(driver.pid) | set(workers)
        driver.send_signal(sig)
        driver.wait(10)
        assert driver.returncode != 0
        assert not gone_within(everything, 5), "processes of the run outlived the interrupt"
        assert not (tmp_path / "out" / "_SUCCESS").exists()
    finally:
        kill_all(driver, everything)


def test_workers_from_the_fork_server_see_the_drivers_environment_as_it_is_now(tmp_path, monkeypatch):
    """With a thread running (a notebook, a test session with a server), workers come from the fork
    server, which started with the first run: a variable set after it (credentials, an endpoint) must
    still reach the next run's tasks, as it would reach forked ones."""
    (tmp_path / "in.txt").write_text("CORRAL_TEST_LATE_VARIABLE\n")
    monkeypatch.delenv("CORRAL_TEST_LATE_VARIABLE", raising=False)
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait, daemon=True)  # so the executor uses the fork server
    busy.start()
    try:
        corral.run(jobs.Environment, str(tmp_path / "in.txt"), str(tmp_path / "before"), backend="processes")
        monkeypatch.setenv("CORRAL_TEST_LATE_VARIABLE", "set after the first run")
        corral.run(jobs.Environment, str(tmp_path / "in.txt"), str(tmp_path / "after"), backend="processes")
    finally:
        stop.set()
    assert (tmp_path / "before" / "part-00000").read_text() == "CORRAL_TEST_LATE_VARIABLE\t<unset>\n"
    assert (tmp_path / "after" / "part-00000").read_text() == "CORRAL_TEST_LATE_VARIABLE\tset after the first run\n"


# --- how the kernel says a worker ran out of memory -----------------------------------------------------


def test_oom_kill_counts_are_read_from_cgroup_v1_and_v2_files():
    assert parse_oom_kills(b"oom_kill_disable 0\nunder_oom 0\noom_kill 7\n") == 7  # v1 memory.oom_control
    assert parse_oom_kills(b"low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n") == 2  # v2 memory.events
    assert parse_oom_kills(b"") is None


def test_the_cgroup_counter_is_found_where_a_container_mounts_its_own_cgroup_as_root(tmp_path):
    proc, mount = tmp_path / "proc", tmp_path / "cgroup" / "memory"
    proc.mkdir()
    mount.mkdir(parents=True)
    (mount / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    (mount / "memory.limit_in_bytes").write_text(str(300 << 20))
    (proc / "cgroup").write_text("4:memory:/docker/0123abcd\n0::/docker/0123abcd\n")
    (proc / "mountinfo").write_text(f"41 33 0:37 / {mount} rw,nosuid - cgroup cgroup rw,memory\n")
    watch = OomWatch(str(proc))
    try:
        assert watch.count() == 4 and watch.limit_mb() == 300
        (mount / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n")
        assert watch.killed(123456789, 4) and not watch.killed(123456789, 5)
    finally:
        watch.close()


@pytest.mark.docker
def test_a_worker_killed_by_the_oom_killer_says_so(tmp_path, docker_engine):
    """A real OOM kill: ``corral run`` on the processes backend inside a container with a 256 MB memory
    cgroup (no swap), whose map fills 600 MB on its first attempt. This checkout and the installed
    packages are mounted at their own paths; the container's Python must be the same minor version."""
    import msgpack

    image = "corral-lambda-python:3.11"
    if sys.version_info[:2] != (3, 11):
        pytest.skip(f"{image} runs Python 3.11; the installed packages are for {sys.version_info[:2]}")
    repo = Path(__file__).resolve().parents[2]
    site = str(Path(msgpack.__file__).resolve().parents[1])
    (tmp_path / "in.txt").write_text("a b a\n")
    dists = ("emulator", "backends/docker", "backends/lambda", "backends/gcf")
    paths = [str(repo), *(str(repo / d) for d in dists), site]
    logs = docker_engine.containers.run(
        image, ["python3", "-c", "import sys; from corral.cli import main; sys.exit(main())", "run",
                f"{JOBS}:EatMemoryOnce", str(tmp_path / "in.txt"), "--out", str(tmp_path / "out"),
                "--arg", f"marker={tmp_path / 'marker'}", "--arg", "mb=600", "-q"],
        mem_limit="256m", memswap_limit="256m", remove=True, stderr=True, working_dir=str(tmp_path),
        environment={"PYTHONPATH": ":".join(paths)},
        volumes={str(repo): {"bind": str(repo), "mode": "ro"}, site: {"bind": site, "mode": "ro"},
                 str(tmp_path): {"bind": str(tmp_path), "mode": "rw"}},
    )
    assert (tmp_path / "out" / "_SUCCESS").exists(), logs
    first, second = json.loads((tmp_path / "out" / "_corral" / "manifest.json").read_text())[
        "stages"][0]["tasks"]["map-0000"]["attempts"]
    assert first["failure"]["kind"] == corral.OUT_OF_MEMORY
    assert re.fullmatch(r"worker process \d+ killed: out of memory \(the kernel's OOM killer at the 256 MB "
                        r"limit of its memory cgroup\)", first["failure"]["message"]), first["failure"]
    assert second["status"] == "committed"


def test_ctrl_c_on_the_threads_backend_exits_at_once_though_its_tasks_sleep(tmp_path):
    driver = start_run(tmp_path, "threads", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        worker_pids(tmp_path / "pids", 1)  # a task is inside time.sleep(60)
        started = time.monotonic()
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=10)
        assert time.monotonic() - started < 5
        assert driver.returncode == 130 and "corral: interrupted" in err
        assert not (tmp_path / "out" / "_SUCCESS").exists()
    finally:
        kill_all(driver, set())


def test_the_cgroup_v2_counter_of_a_systemd_session_is_found(tmp_path):
    """A normal Linux box: cgroup v2 at /sys/fs/cgroup, the user's processes in a session scope."""
    proc, mount = tmp_path / "proc", tmp_path / "sys-fs-cgroup"
    scope = mount / "user.slice" / "user-1000.slice" / "session-2.scope"
    proc.mkdir()
    scope.mkdir(parents=True)
    (mount / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 9\noom_kill 9\n")  # the root's: not ours
    (scope / "memory.events").write_text("low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\noom_group_kill 0\n")
    (scope / "memory.max").write_text("max\n")
    (proc / "cgroup").write_text("0::/user.slice/user-1000.slice/session-2.scope\n")
    (proc / "mountinfo").write_text(f"35 24 0:30 / {mount} rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 "
                                    "cgroup2 rw,nsdelegate,memory_recursiveprot\n")
    watch = OomWatch(str(proc))
    try:
        assert watch.count() == 1 and watch.limit_mb() is None  # "max": no limit
    finally:
        watch.close()


def test_a_warm_workers_attempt_reports_its_own_memory_peak(tmp_path):
    """The reduce runs in the process the 200 MB map ran in: its peak is its own, not the map's (the
    process's lifetime peak, ``ru_maxrss``). Linux: VmHWM, reset before each task."""
    (tmp_path / "in.txt").write_text("a b a\n")
    m = run(jobs.BigMapSmallReduce, tmp_path / "in.txt", tmp_path / "out", backend="processes", max_concurrency=1,
            reducers=1)
    (stage,) = m["stages"]
    (map_attempt,) = stage["tasks"]["map-0000"]["attempts"]
    (reduce_attempt,) = stage["tasks"]["reduce-0000"]["attempts"]
    assert map_attempt["stats"]["worker"] == reduce_attempt["stats"]["worker"]  # the same warm process
    assert map_attempt["stats"]["peak_memory_mb"] > 200
    assert reduce_attempt["stats"]["peak_memory_mb"] < 150, reduce_attempt["stats"]


CTYPES_JOB = '''
import sys
import corral

class CtypesLoaded(corral.Job):
    def map(self, key, line):
        yield "ctypes imported by the worker", "ctypes" in sys.modules
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_worker_starts_without_importing_ctypes(tmp_path):
    """A worker sets its parent-death signal through corral._speedups: importing ctypes for it cost each
    worker ~6 ms as it started, while the driver planned."""
    from corral import speedups

    if speedups.die_with_parent is None:
        pytest.skip("corral._speedups is not built: the workers use ctypes")
    job = tmp_path / "job.py"
    job.write_text(CTYPES_JOB)
    (tmp_path / "in.txt").write_text("a\n")
    done = subprocess.run([sys.executable, "-c", "from corral.cli import console_main; console_main()", "run",
                           str(job), str(tmp_path / "in.txt"), "--out", str(tmp_path / "out"), "-q",
                           "--backend", "processes"], capture_output=True, text=True, env=clean_env())
    assert (done.returncode, done.stderr) == (0, "")
    assert (tmp_path / "out" / "part-00000").read_text() == "ctypes imported by the worker\tfalse\n"


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="rss_mb reads /proc")
def test_a_forked_worker_reports_its_own_resident_memory_not_its_parents():
    """rss_mb keeps /proc/self/statm open: a forked child must not read its parent's through the copy."""
    from corral.worker import rss_mb

    held = bytearray(300 << 20)
    held[::4096] = b"x" * len(held[::4096])  # 300 MB resident in the parent
    parent = rss_mb()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops its copy of the 300 MB
        try:
            os.close(reader)
            del held[:]
            os.write(writer, str(rss_mb()).encode())
        finally:
            os._exit(0)
    os.close(writer)
    child = float(os.read(reader, 64))
    os.close(reader)
    os.waitpid(pid, 0)
    assert parent > 300 and child < parent - 250 and rss_mb() > 300


def test_a_thread_tasks_cpu_is_its_own_not_the_drivers_process(tmp_path):
    """On the threads backend a task shares the driver's process: its cpu_seconds is its thread's CPU,
    even when it is the only task running (a process clock would count what the driver's threads did)."""
    data = tmp_path / "in.txt"
    data.write_text("one line\n")
    stop = threading.Event()

    def spin():  # another thread of this process (the driver's) busy while the task sleeps
        while not stop.is_set():
            sum(range(1000))

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        m = run(jobs.Sleeper, data, tmp_path / "out", arg=[f"folder={tmp_path}", "sleep=0.6"],
                max_concurrency=1)
    finally:
        stop.set()
        spinner.join()
    (attempt,) = m["stages"][0]["tasks"]["map-0000"]["attempts"]
    assert attempt["stats"]["seconds"] >= 0.6 and attempt["stats"]["cpu_seconds"] < 0.15


def test_a_thread_tasks_cpu_includes_its_own_start_and_end(tmp_path, monkeypatch):
    """What ``run_task`` does for an attempt before and after the job's code (reading its memory here)
    is the attempt's CPU, on its thread, not the driver's: the driver-overhead benchmark subtracts
    the attempts' CPU from the process's."""
    import corral.worker

    real_rss = corral.worker.rss_mb

    def busy_rss():
        deadline = time.thread_time() + 0.05
        while time.thread_time() < deadline:
            pass
        return real_rss()

    monkeypatch.setattr(corral.worker, "rss_mb", busy_rss)
    data = tmp_path / "in.txt"
    data.write_text("one line\n")
    m = run(jobs.Cat, data, tmp_path / "out", max_concurrency=1)
    (attempt,) = m["stages"][0]["tasks"]["map-0000"]["attempts"]
    assert attempt["stats"]["cpu_seconds"] >= 0.05
