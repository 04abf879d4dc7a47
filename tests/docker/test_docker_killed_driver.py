"""``kill -9`` of a ``corral run --backend docker`` driver (its emulator dies with it): its containers stop
within seconds, and the next emulator to start removes what is left of them. Only containers whose
label pid is this test's killed driver are looked at (other runs share the Docker engine)."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.docker.conftest import CORRAL, REPO, clean_env, corral
from tests.docker.test_docker_backend import write_job

pytestmark = pytest.mark.docker


def _containers(client, pid: int, running_only: bool = False) -> list:
    return client.containers.list(all=not running_only, filters={"label": f"corral-emulator.pid={pid}"})


def test_a_killed_drivers_containers_stop_and_the_next_run_removes_them(workdir, docker_engine):
    marker = workdir / "started"
    job = write_job(workdir, "sleepy", f'''
        import pathlib
        import time

        import corral

        class Sleepy(corral.Job):
            def map(self, key, line):
                pathlib.Path({str(marker)!r}).write_text("")
                time.sleep(120)
                yield line, 1
        ''')
    (workdir / "in.txt").write_text("one line\n")
    first = subprocess.Popen([CORRAL, "run", str(job), "in.txt", "--out", "out1", "--backend", "docker",
                              "--retries", "0"], cwd=workdir, env=clean_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():  # a container runs the task
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.1)
        assert len(_containers(docker_engine, first.pid, running_only=True)) == 1
        first.send_signal(signal.SIGKILL)
        first.wait(30)

        deadline = time.monotonic() + 15  # the task would sleep 120 s more
        while _containers(docker_engine, first.pid, running_only=True):
            assert time.monotonic() < deadline, "the killed driver's container runs on"
            time.sleep(0.2)
        assert len(_containers(docker_engine, first.pid)) == 1  # exited, still there

        second = corral("run", REPO / "examples" / "wordcount.py", "in.txt", "--out", "out2", "--backend", "docker",
                        cwd=workdir)
        assert second.returncode == 0, second.stderr
        assert _containers(docker_engine, first.pid) == []
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        for container in _containers(docker_engine, first.pid):  # the killed driver's only
            container.remove(force=True)
