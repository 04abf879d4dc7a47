"""``--backend docker``: the whole Lambda code path (package, deploy, invoke, handler) on the emulator."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import pytest

from tests.docker.conftest import REPO, clean_env, corral
from tests.manifests import committed_once

pytestmark = pytest.mark.docker
WORDCOUNT = REPO / "examples" / "wordcount.py"
#: With --lambda-endpoint the code path is AWS's, IAM included: these tests pass a role (the emulator does
#: not check it) instead of having corral create one (tests/aws does that, against moto's IAM).
ROLE = "arn:aws:iam::000000000000:role/corral-test"


def write_text_input(path: Path, lines: int = 6000) -> Path:
    rng = random.Random(7)
    words = [f"w{n}" for n in range(400)] + ["ünïcode", "naïve", "café"]
    path.write_text("\n".join(" ".join(rng.choices(words, k=12)) for _ in range(lines)) + "\n", encoding="utf-8")
    return path


def manifest(out: Path) -> dict:
    return json.loads((out / "_corral" / "manifest.json").read_text())


def attempts(m: dict) -> list[tuple[str, dict]]:
    return [(task, a) for stage in m["stages"] for task, t in stage["tasks"].items() for a in t["attempts"]]


def write_job(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_wordcount_through_the_cli_equals_the_processes_backend(workdir):
    data = write_text_input(workdir / "input.txt")
    common = ["--split-size", "48KB", "--reducers", "3", "--max-concurrency", "2"]
    local = corral("run", WORDCOUNT, data, "--out", workdir / "local", "--backend", "processes", *common,
                   cwd=workdir)
    assert local.returncode == 0, local.stderr
    # relative paths on purpose: containers see the same (absolute) paths through mounts
    docker = corral("run", WORDCOUNT, "input.txt", "--out", "out", "--backend", "docker", *common, cwd=workdir)
    assert docker.returncode == 0, docker.stderr
    local_parts = sorted((workdir / "local").glob("part-*"))
    docker_parts = sorted((workdir / "out").glob("part-*"))
    assert [p.name for p in docker_parts] == [p.name for p in local_parts] == [f"part-0000{n}" for n in range(3)]
    for a, b in zip(local_parts, docker_parts, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert (workdir / "out" / "_SUCCESS").exists()

    m = manifest(workdir / "out")
    assert m["backend"] == "docker" and m["stages"][0]["map_tasks"] >= 2  # the planner: a multiple of the 2 workers
    found = committed_once(m)  # no attempt failed (a straggler may have had a speculative twin)
    for task, attempt in found:
        stats = attempt["stats"]
        assert stats["max_memory_used_mb"] > 0 and stats["billed_ms"] >= 1, (task, stats)
        assert stats["memory_size_mb"] == 512
        assert isinstance(stats["cold_start"], bool)
    colds = [a["stats"] for _, a in found if a["stats"]["cold_start"]]
    assert 1 <= len(colds) <= 2, colds  # at most one container per slot (2), each cold once
    assert all(s["init_ms"] > 0 for s in colds)
    assert any(not a["stats"]["cold_start"] for _, a in found)


def test_out_of_memory_fails_the_job_naming_task_kind_and_limit(workdir):
    job = write_job(workdir, "hog", '''
        import corral

        class Hog(corral.Job):
            def map(self, key, line):
                hoard = b"x" * (400 << 20)  # 400 MB, touched
                yield line, len(hoard)
        ''')
    (workdir / "in.txt").write_text("one line\n")
    done = corral("run", job, workdir / "in.txt", "--out", workdir / "out", "--backend", "docker",
                  "--memory", "128", "--retries", "1", cwd=workdir)
    assert done.returncode == 1, done.stderr
    assert "task map-0000 attempt 2: ran out of memory at the 128 MB limit" in done.stderr
    assert not (workdir / "out" / "_SUCCESS").exists()
    m = manifest(workdir / "out")
    assert m["status"] == "failed"
    failed = [a for _, a in attempts(m)]
    assert [a["failure"]["kind"] for a in failed] == ["out of memory", "out of memory"]
    assert all(a["stats"]["max_memory_used_mb"] >= 120 for a in failed)


def test_timeout_fails_the_job_with_the_limit(workdir):
    job = write_job(workdir, "sleepy", '''
        import time

        import corral

        class Sleepy(corral.Job):
            def map(self, key, line):
                time.sleep(30)
                yield line, 1
        ''')
    (workdir / "in.txt").write_text("one line\n")
    done = corral("run", job, workdir / "in.txt", "--out", workdir / "out", "--backend", "docker",
                  "--timeout", "2", "--retries", "0", cwd=workdir)
    assert done.returncode == 1, done.stderr
    assert "task map-0000 attempt 1: timed out after the 2 s limit" in done.stderr
    (attempt,) = [a for _, a in attempts(manifest(workdir / "out"))]
    assert attempt["failure"]["kind"] == "timed out"
    assert 2000 <= attempt["stats"]["billed_ms"] < 4000


def test_a_task_may_write_more_to_tmp_than_its_memory_as_on_lambda(workdir):
    """Lambda's /tmp is disk: a 256 MB function may write 300 MB there (spills, downloads). The docker
    backend's containers keep /tmp on their disk (not a tmpfs, whose pages would count against the memory
    and kill the task as out of memory)."""
    job = write_job(workdir, "tmpwriter", '''
        import os

        import corral

        class TmpWriter(corral.Job):
            def map(self, key, line):
                with open("/proc/self/mounts") as f:
                    kinds = [entry.split()[2] for entry in f if entry.split()[1] == "/tmp"]
                chunk = b"x" * (1 << 20)
                with open("/tmp/big", "wb") as f:
                    for _ in range(300):
                        f.write(chunk)
                size = os.path.getsize("/tmp/big") >> 20
                os.remove("/tmp/big")
                yield line, f"{size} MB in /tmp, {kinds[-1] if kinds else 'the container disk'}"
        ''')
    (workdir / "in.txt").write_text("one line\n")
    done = corral("run", job, workdir / "in.txt", "--out", workdir / "out", "--backend", "docker",
                  "--memory", "256", "--retries", "0", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert (workdir / "out" / "part-00000").read_text() == "one line\t300 MB in /tmp, the container disk\n"


def test_user_errors_come_back_with_the_users_traceback(workdir):
    job = write_job(workdir, "buggy", '''
        import corral

        class Buggy(corral.Job):
            def map(self, key, line):
                yield line, int(line)
        ''')
    (workdir / "in.txt").write_text("not a number\n")
    done = corral("run", job, workdir / "in.txt", "--out", workdir / "out", "--backend", "docker",
                  "--retries", "0", cwd=workdir)
    assert done.returncode == 1
    assert "task map-0000 attempt 1: ValueError: invalid literal for int()" in done.stderr
    assert "buggy.py" in done.stderr and "yield line, int(line)" in done.stderr


@pytest.fixture
def emulator(workdir):
    from corral_emulator import Emulator

    with Emulator(max_concurrency=2, mounts=[str(workdir)], idle_timeout=60) as emu:
        yield emu


def function_state(endpoint: str, name: str) -> dict:
    import boto3

    client = boto3.client("lambda", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")
    return client.get_function(FunctionName=name)["Configuration"]


def test_deploy_updates_the_function_only_when_the_code_changes(workdir, emulator):
    job = write_job(workdir, "shout", '''
        import corral

        class Shout(corral.Job):
            def map(self, key, line):
                for word in line.split():
                    yield word, 1

            def reduce(self, word, counts):
                yield word, sum(counts)
        ''')
    (workdir / "in.txt").write_text("a b a\n")
    env = clean_env(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")

    def run(out: str, *extra: str):
        done = corral("run", job, "in.txt", "--out", out, "--backend", "lambda", "--lambda-endpoint",
                      emulator.endpoint, "--lambda-role-arn", ROLE, "-v", *extra, cwd=workdir, env=env)
        assert done.returncode == 0, done.stderr
        return done.stderr, function_state(emulator.endpoint, "corral-shout-Shout")

    log, first = run("out1")
    assert "create" in log
    log, second = run("out2")
    assert "function up to date" in log
    assert (second["CodeSha256"], second["LastModified"], second["RevisionId"]) == (
        first["CodeSha256"], first["LastModified"], first["RevisionId"])

    job.write_text(job.read_text().replace("yield word, 1", "yield word.upper(), 1"))
    log, third = run("out3")
    assert "update-code" in log and "update-config" not in log
    assert third["CodeSha256"] != first["CodeSha256"]
    assert (workdir / "out3" / "part-00000").read_text().split("\n")[:2] == ["A\t2", "B\t1"]

    log, fourth = run("out4", "--memory", "256")
    assert "update-config" in log and "update-code" not in log
    assert fourth["MemorySize"] == 256 and fourth["CodeSha256"] == third["CodeSha256"]


def test_throttling_is_backpressure_not_failure(workdir):
    """An emulator capped at 1 concurrent invocation, a driver sending 3 at once: 429s are retried."""
    from corral_emulator import Emulator

    job = write_job(workdir, "slow", '''
        import time

        import corral

        class Slow(corral.Job):
            def map(self, key, line):
                time.sleep(0.4)
                yield line, 1
        ''')
    inputs = workdir / "in"
    inputs.mkdir()
    for n in range(4):
        (inputs / f"f{n}.txt").write_text(f"line {n}\n")
    env = clean_env(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")
    with Emulator(max_concurrency=1, mounts=[str(workdir)], idle_timeout=60) as emu:
        done = corral("run", job, inputs, "--out", workdir / "out", "--backend", "lambda", "--lambda-endpoint",
                      emu.endpoint, "--lambda-role-arn", ROLE, "--max-concurrency", "3", "--map-bin-size", "1",
                      "--retries", "0", cwd=workdir, env=env)
    assert done.returncode == 0, done.stderr
    committed = committed_once(manifest(workdir / "out"))  # throttles never cost an attempt
    assert len([t for t, _ in committed if t.startswith("map")]) == 4
    found = attempts(manifest(workdir / "out"))
    assert any(a["stats"].get("invoke_attempts", 1) > 1 for _, a in found)


@pytest.mark.slow
def test_s3_input_and_output_through_the_containers(workdir):
    """s3:// locations: the package ships s3fs (Linux wheels) and containers reach moto's server."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        _, port = server.get_host_and_port()
        env = clean_env(AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                        AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="corral-docker")
        s3.put_object(Bucket="corral-docker", Key="in/a.txt", Body=b"x y x\n" * 1000)
        done = corral("run", WORDCOUNT, "s3://corral-docker/in/", "--out", "s3://corral-docker/out",
                      "--backend", "docker", cwd=workdir, env=env, timeout=600)
        assert done.returncode == 0, done.stderr
        body = s3.get_object(Bucket="corral-docker", Key="out/part-00000")["Body"].read()
        assert body == b"x\t2000\ny\t1000\n"
    finally:
        server.stop()
