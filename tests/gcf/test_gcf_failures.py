"""Failures on the Cloud Functions code path, each with the right kind and message, as a user sees them.

Stood in for: Google's Cloud Functions (corral-emulator: the functions run in Docker containers under
functions-framework, with Cloud Run's memory cap, request timeout, one request per instance and
max-instance throttling). Out of memory, a timeout and the user's exception run on
``--backend docker --platform gcf``; throttling on ``--backend gcf --gcf-endpoint`` against an emulator
whose instances are capped at 1, with google-auth's ID tokens.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.gcf.conftest import ACCOUNT, PROJECT, attempts, corral, environment, gcf_flags, manifest_of
from tests.manifests import committed_once

pytestmark = pytest.mark.docker


def write_job(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def run_docker_gcf(folder: Path, job: Path, *flags: str):
    (folder / "in.txt").write_text("not a number\n")
    return corral("run", job, folder / "in.txt", "--out", folder / "out", "--backend", "docker", "--platform", "gcf",
                  *flags, cwd=folder, env=environment())


def test_out_of_memory_names_the_limit(docker_engine, tmp_path):
    job = write_job(tmp_path, "hog", '''
        import corral

        class Hog(corral.Job):
            def map(self, key, line):
                hoard = b"x" * (400 << 20)  # 400 MB, touched
                yield line, len(hoard)
        ''')
    done = run_docker_gcf(tmp_path, job, "--memory", "128", "--retries", "1")
    assert done.returncode == 1, done.stderr
    assert "task map-0000 attempt 2: ran out of memory at the 128 MB limit" in done.stderr
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    failed = [a for _, a in attempts(manifest_of(tmp_path / "out"))]
    assert [a["failure"]["kind"] for a in failed] == ["out of memory", "out of memory"]
    assert all(a["failure"]["message"] == "ran out of memory at the 128 MB limit" for a in failed)
    assert all(a["stats"]["max_memory_used_mb"] >= 120 for a in failed)


def test_a_timeout_names_the_limit(docker_engine, tmp_path):
    job = write_job(tmp_path, "sleepy", '''
        import time

        import corral

        class Sleepy(corral.Job):
            def map(self, key, line):
                time.sleep(30)
                yield line, 1
        ''')
    done = run_docker_gcf(tmp_path, job, "--timeout", "2", "--retries", "0")
    assert done.returncode == 1, done.stderr
    assert "task map-0000 attempt 1: timed out after the 2 s limit" in done.stderr
    (attempt,) = [a for _, a in attempts(manifest_of(tmp_path / "out"))]
    assert attempt["failure"]["kind"] == "timed out" and attempt["stats"]["billed_ms"] >= 2000


def test_the_users_exception_comes_back_with_its_traceback(docker_engine, tmp_path):
    job = write_job(tmp_path, "buggy", '''
        import sys

        import corral

        class Buggy(corral.Job):
            def map(self, key, line):
                if self.args.get("exit"):
                    sys.exit(3)  # past corral's own handling: the entry point answers 500 "crash"
                yield line, int(line)
        ''')
    done = run_docker_gcf(tmp_path, job, "--retries", "0")
    assert done.returncode == 1, done.stderr
    assert "task map-0000 attempt 1: ValueError: invalid literal for int() with base 10: 'not a number'" in done.stderr
    assert "buggy.py" in done.stderr and "yield line, int(line)" in done.stderr
    (attempt,) = [a for _, a in attempts(manifest_of(tmp_path / "out"))]
    assert attempt["failure"]["kind"] == "user error"
    crashed = run_docker_gcf(tmp_path, job, "--retries", "0", "--arg", "exit=1", "--overwrite")
    assert crashed.returncode == 1, crashed.stderr
    assert "task map-0000 attempt 1: SystemExit: 3" in crashed.stderr and "sys.exit(3)" in crashed.stderr


@pytest.fixture
def one_instance(docker_engine, tmp_path):
    """An emulator whose functions get one instance at a time: more requests at once are answered 429."""
    from corral_emulator import Emulator

    with Emulator(max_concurrency=1, mounts=[str(tmp_path)], idle_timeout=60) as emulator:
        key = tmp_path / "key.json"
        key.write_text(json.dumps(emulator.service_account_key(project=PROJECT, email=ACCOUNT)))
        yield emulator, key


SLOW = '''
    import time

    import corral

    class Slow(corral.Job):
        def map(self, key, line):
            time.sleep(float(self.args.get("sleep", "0.4")))
            for word in line.split():
                yield word, 1

        def reduce(self, word, counts):
            yield word, sum(counts)
    '''


def run_slow(one_instance, folder: Path, lines: list[str], *flags: str):
    """The slow job on --backend gcf, one map task per line (each its own file)."""
    emulator, key = one_instance
    job = write_job(folder, "slow", SLOW)
    inputs = folder / "in"
    inputs.mkdir()
    for n, line in enumerate(lines):
        (inputs / f"f{n}.txt").write_text(line + "\n")
    return corral("run", job, inputs, "--out", folder / "out", *gcf_flags(emulator), "--map-bin-size", "1",
                  *flags, cwd=folder, env=environment(key))


def test_throttling_is_backpressure_and_the_answer_stays_exact(one_instance, tmp_path):
    done = run_slow(one_instance, tmp_path, ["w0 shared", "w1 shared", "w2 shared", "w3 shared"],
                    "--max-concurrency", "3", "--reducers", "1", "--retries", "0", "-v")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "part-00000").read_text() == "shared\t4\nw0\t1\nw1\t1\nw2\t1\nw3\t1\n"
    manifest = manifest_of(tmp_path / "out")
    committed_once(manifest)  # no attempt failed; a straggler waiting out throttling may get a speculative twin
    found = attempts(manifest)
    recorded = sum(a["stats"].get("throttles", 0) for _, a in found)
    if any(a["status"] == "cancelled" for _, a in found):  # its call may be answered 429 after the cancel
        assert 0 < recorded <= manifest["report"]["throttled_invokes"]
    else:
        assert 0 < recorded == manifest["report"]["throttled_invokes"]
    assert "invoke throttled (InvokeError: HTTP 429: Rate exceeded." in done.stderr
    assert done.stderr.rstrip().splitlines()[-2].endswith("throttled invokes retried")


def test_still_throttled_at_the_deadline_fails_the_job_as_throttled(one_instance, tmp_path):
    done = run_slow(one_instance, tmp_path, ["w0", "w1"], "--max-concurrency", "2", "--arg", "sleep=8",
                    "--deadline", "3")
    assert done.returncode == 1, done.stderr
    assert "still throttled at the job's deadline (--deadline) after " in done.stderr
    assert "throttled invokes: InvokeError: HTTP 429: Rate exceeded." in done.stderr
    kinds = [a["failure"]["kind"] for _, a in attempts(manifest_of(tmp_path / "out")) if a.get("failure")]
    assert "throttled" in kinds and not (tmp_path / "out" / "_SUCCESS").exists()


def test_ctrl_c_abandons_the_invocations_and_stops_the_runs_containers(docker_engine, tmp_path):
    """SIGINT to ``corral run --backend docker --platform gcf`` while a task runs for a minute: the driver
    cancels (cancel_all), the backend stops its emulator and the containers of this run, and the command
    exits promptly, failed, without _SUCCESS."""
    import signal
    import subprocess
    import sys
    import time

    job = write_job(tmp_path, "slow", SLOW)
    (tmp_path / "in.txt").write_text("a b\n")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("corral")), "run", str(job), "in.txt", "--out", "out", "--backend",
         "docker", "--platform", "gcf", "--arg", "sleep=60", "--timeout", "120"],
        cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    label = {"label": f"corral-emulator.pid={process.pid}"}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not docker_engine.containers.list(filters=label):
            assert process.poll() is None, process.communicate()
            time.sleep(0.5)
        assert docker_engine.containers.list(filters=label), "no container started"
        time.sleep(3)  # the task is running in its container now
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert time.monotonic() - interrupted < 15, err
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0, err
    assert docker_engine.containers.list(all=True, filters=label) == []
    assert not (tmp_path / "out" / "_SUCCESS").exists()
