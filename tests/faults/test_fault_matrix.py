"""The fault matrix (issue 10, part 5): the awkward word-count input (unicode, CRLF, a 2 MB line, a .gz
file, dozens of small files) run under each injected fault class. Every run must give part files
byte for byte equal to a fault-free run's, the same counters, and every word counted exactly once.

Real parts throughout: worker processes that really die, Docker containers of the emulator that run
out of memory and time out for real, the emulator's throttling fault hook, moto in server mode for
S3 behind a proxy that answers ``503 SlowDown``, and real SIGKILLs of the driver. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.awkward import write_awkward_input
from tests.manifests import committed_once
from tests.moto_fixtures import bucket, moto_server, s3  # noqa: F401 - fixtures
from tests.requirements import need

JOB = f"{Path(__file__).with_name('faulty_job.py')}:FaultyWordCount"
CORRAL = str(Path(sys.executable).with_name("corral"))
#: The same plan everywhere (nothing left to the backend's concurrency), so that part files compare.
PLAN = ["--split-size", "256KB", "--map-bin-size", "512KB", "--reducers", "4", "--max-concurrency", "2"]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_LAMBDA_IAM_SETTLE"] = "0"  # moto's IAM applies a policy at once
    env.update(extra)
    return env


def corral(*args, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([CORRAL, *map(str, args)], capture_output=True, text=True, env=env or environment(),
                          timeout=timeout)


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    folder = tmp_path_factory.mktemp("matrix") / "in"
    return folder, write_awkward_input(folder)


@pytest.fixture(scope="module")
def reference(awkward, tmp_path_factory):
    """The fault-free run: its part files and counters."""
    folder, _ = awkward
    out = tmp_path_factory.mktemp("reference") / "out"
    done = corral("run", JOB, folder, "--out", out, "--backend", "processes", *PLAN, "-q")
    assert done.returncode == 0, done.stderr
    return local_parts(out), json.loads((out / "_corral" / "manifest.json").read_text())["counters"]


def local_parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*"))}


def check(parts: dict[str, bytes], counters: dict, reference, expected: Counter) -> None:
    """Identical to the fault-free run; every word once, with its exact count."""
    reference_parts, reference_counters = reference
    assert list(parts) == ["part-00000", "part-00001", "part-00002", "part-00003"]
    assert parts == reference_parts
    assert counters == reference_counters
    assert counters["input"]["words"] == sum(expected.values())
    got: Counter = Counter()
    for data in parts.values():
        for line in data.decode("utf-8").split("\n")[:-1]:
            word, _, n = line.rpartition("\t")
            assert word not in got, f"{word!r} twice"
            got[word] = int(n)
    assert got == expected


def attempts(manifest: dict) -> list[dict]:
    return [a for stage in manifest["stages"] for t in stage["tasks"].values() for a in t["attempts"]]


@dataclass
class Row:
    """What a row's runner gets: the input (folder, Counter), a folder of its own, and, for rows on S3,
    moto's client and a bucket."""

    awkward: tuple[Path, Counter]
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch
    s3: Any = None
    bucket: str = ""


# --- one row per fault class -----------------------------------------------------------------------------


def _local_row(row: Row, fault: str, *extra: str, backend: str = "processes"):
    folder, _ = row.awkward
    out = row.tmp_path / "out"
    markers = folder / f"_markers-{row.tmp_path.name}"  # in the input folder (mounted in containers), skipped as input
    done = corral("run", JOB, folder, "--out", out, "--backend", backend, *PLAN, "--arg", f"fault={fault}",
                  "--arg", f"markers={markers}", *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "_corral" / "manifest.json").read_text())
    return local_parts(out), manifest, done.stderr


def processes_user_error(row: Row):
    parts, manifest, _ = _local_row(row, "user-error")
    failed = [a for a in attempts(manifest) if a["status"] == "failed"]
    tasks = sum(len(s["tasks"]) for s in manifest["stages"])
    assert len(failed) >= tasks // 2  # most tasks failed once (tasks with the same first line share a marker)
    assert all("a failure injected into the first attempt" in a["failure"]["message"] for a in failed)
    return parts, manifest


def processes_exit(row: Row):
    parts, manifest, _ = _local_row(row, "exit")
    (failed,) = [a for a in attempts(manifest) if a["status"] == "failed"]
    assert failed["failure"]["kind"] == "infrastructure" and "exited with code 3" in failed["failure"]["message"]
    return parts, manifest


def processes_kill_worker(row: Row):
    parts, manifest, _ = _local_row(row, "kill")
    (failed,) = [a for a in attempts(manifest) if a["status"] == "failed"]
    assert "killed by signal 9" in failed["failure"]["message"]
    return parts, manifest


def processes_straggler(row: Row):
    started = time.monotonic()
    parts, manifest, err = _local_row(row, "straggle")
    assert manifest["speculative"] == {"attempts": 1, "won": 1}
    assert time.monotonic() - started < 40  # the straggler would hold its wave 60 s
    assert "1 speculative attempts, 1 won" in err
    return parts, manifest


def docker_out_of_memory(row: Row):
    parts, manifest, _ = _local_row(row, "oom", "--memory", "256", backend="docker")
    (failed,) = [a for a in attempts(manifest) if a["status"] == "failed"]
    assert failed["failure"]["kind"] == "out of memory"
    assert failed["failure"]["message"] == "ran out of memory at the 256 MB limit"
    return parts, manifest


def docker_timeout(row: Row):
    # without speculation, which would otherwise win the race against the 8 s limit with a duplicate
    parts, manifest, _ = _local_row(row, "timeout", "--timeout", "8", "--arg", "sleep=20", "--no-speculative",
                                    backend="docker")
    (failed,) = [a for a in attempts(manifest) if a["status"] == "failed"]
    assert failed["failure"]["kind"] == "timed out"
    return parts, manifest


def docker_throttling(row: Row):
    folder, _ = row.awkward
    out = row.tmp_path / "out"
    # the emulator's fault hook: it answers 429 to 30% of the invokes
    done = corral("run", JOB, folder, "--out", out, "--backend", "docker", *PLAN,
                  env=environment(CORRAL_EMULATOR_THROTTLE="0.3"))
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "_corral" / "manifest.json").read_text())
    assert sum(a["stats"].get("throttles", 0) for a in attempts(manifest)) >= 1
    committed_once(manifest)  # throttles are retried, never failures (a straggler may get a speculative twin)
    return local_parts(out), manifest


def _upload(s3_client, bucket_name: str, folder: Path) -> str:
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and not relative.startswith("_markers"):
            s3_client.put_object(Bucket=bucket_name, Key=f"awkward/{relative}", Body=path.read_bytes())
    return f"s3://{bucket_name}/awkward/"


def _s3_parts(s3_client, bucket_name: str, prefix: str) -> dict[str, bytes]:
    listing = s3_client.list_objects_v2(Bucket=bucket_name, Prefix=prefix + "/").get("Contents", [])
    keys = sorted(o["Key"] for o in listing if o["Key"].rsplit("/", 1)[-1].startswith("part-"))
    return {k.rsplit("/", 1)[-1]: s3_client.get_object(Bucket=bucket_name, Key=k)["Body"].read() for k in keys}


def _lambda_row(row: Row, out_prefix: str, env: dict[str, str], emulator_endpoint: str, upload: bool = True):
    folder, _ = row.awkward
    source = _upload(row.s3, row.bucket, folder) if upload else f"s3://{row.bucket}/awkward/"
    done = corral("run", JOB, source, "--out", f"s3://{row.bucket}/{out_prefix}", "--backend", "lambda",
                  "--lambda-endpoint", emulator_endpoint, *PLAN, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    body = row.s3.get_object(Bucket=row.bucket, Key=f"{out_prefix}/_corral/manifest.json")["Body"].read()
    return _s3_parts(row.s3, row.bucket, out_prefix), json.loads(body)


def lambda_throttling(row: Row):
    from corral_emulator import Emulator

    with Emulator(max_concurrency=4, idle_timeout=120, throttle_fraction=0.3) as emu:
        parts, manifest = _lambda_row(row, "out-throttled", environment(), emu.endpoint)
    assert manifest["report"]["throttled_invokes"] >= 1
    committed_once(manifest)
    return parts, manifest


def lambda_s3_slowdown(row: Row):
    from corral_emulator import Emulator

    from tests.s3.faulty_proxy import FaultyProxy

    _upload(row.s3, row.bucket, row.awkward[0])  # straight to moto: only the run goes through the proxy
    with FaultyProxy(os.environ["AWS_ENDPOINT_URL_S3"], every=7) as proxy:
        row.monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)  # the driver's, and the functions' (passed on)
        with Emulator(max_concurrency=4, idle_timeout=120) as emu:
            parts, manifest = _lambda_row(row, "out-slowdown", environment(AWS_ENDPOINT_URL_S3=proxy.url),
                                          emu.endpoint, upload=False)
    assert proxy.faults >= 5, f"only {proxy.faults} of {len(proxy.seen)} requests were answered 503 SlowDown"
    return parts, manifest


def _journal_commits(out: Path, phase: str) -> int:
    path = out / "_corral" / "journal.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_bytes().split(b"\n") if b'"t":"commit"' in line and
               f'"phase":"{phase}"'.encode() in line)


def _driver_killed(phase: str, row: Row):
    """SIGKILL the driver once the journal shows half of the ``phase`` wave committed, then --resume."""
    folder, _ = row.awkward
    out = row.tmp_path / "out"
    argv = [CORRAL, "run", JOB, str(folder), "--out", str(out), "--backend", "processes", *PLAN,
            # that wave's tasks longer than a commit can wait to be journaled (the 2 s flush and the
            # keeper's 0.5 s tick): at 2.0 s, two waves' commits could land in one flush, none left to do
            "--arg", f"{phase}_slow=3.5"]
    process = subprocess.Popen(argv, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while True:
            plan = [json.loads(line) for line in (out / "_corral" / "journal.jsonl").read_text().splitlines()
                    if '"t":"stage"' in line] if (out / "_corral" / "journal.jsonl").exists() else []
            if plan:
                maps, reduces = plan[0]["map_tasks"], plan[0]["reduce_tasks"]
                done_maps, done_reduces = _journal_commits(out, "map"), _journal_commits(out, "reduce")
                if {"map": done_maps * 2 >= maps, "reduce": done_reduces * 2 >= reduces}[phase]:
                    break
            assert process.poll() is None, f"the run ended before it was killed: {process.communicate()}"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    committed = _journal_commits(out, "map") + _journal_commits(out, "reduce")
    assert committed < (maps if phase == "map" else maps + reduces)  # killed with work left in that wave
    done = subprocess.run([*argv, "--resume"], env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "_corral" / "manifest.json").read_text())
    line = next(line for line in done.stderr.splitlines() if line.startswith("corral: resuming run "))
    assert line == (f"corral: resuming run {manifest['run_id']}: {committed} of {maps + reduces} tasks already "
                    "committed")
    print(f"\nresumed run's stderr ({phase} wave):\n{done.stderr}")
    return local_parts(out), manifest


def driver_killed_in_the_map_wave(row: Row):
    return _driver_killed("map", row)


def driver_killed_in_the_reduce_wave(row: Row):
    return _driver_killed("reduce", row)


#: Every row runs in the default run (CI's): about a minute in all, the straggler's 5 s speculation floor
#: and the driver's 2 s journal flush being the longest waits.
DOCKER, MOTO = pytest.mark.docker, pytest.mark.moto
ROWS = {
    "processes: a user exception once per task": (processes_user_error, ()),
    "processes: os._exit once": (processes_exit, ()),
    "processes: SIGKILL of a worker": (processes_kill_worker, ()),
    "processes: a straggler": (processes_straggler, ()),
    "docker: out of memory once": (docker_out_of_memory, (DOCKER,)),
    "docker: a timeout once": (docker_timeout, (DOCKER,)),
    "docker: throttling": (docker_throttling, (DOCKER,)),
    "lambda on moto + emulator: throttling": (lambda_throttling, (DOCKER, MOTO)),
    "lambda on moto + emulator: S3 503 SlowDown": (lambda_s3_slowdown, (DOCKER, MOTO)),
    "driver SIGKILL at 50% of the map wave, then --resume": (driver_killed_in_the_map_wave, ()),
    "driver SIGKILL at 50% of the reduce wave, then --resume": (driver_killed_in_the_reduce_wave, ()),
}


@pytest.mark.parametrize("name", [pytest.param(name, marks=marks, id=name) for name, (_, marks) in ROWS.items()])
def test_word_count_is_exact_under_each_fault(name, awkward, reference, tmp_path, monkeypatch, request):
    runner, marks = ROWS[name]
    row = Row(awkward, tmp_path, monkeypatch)
    if any(m.name == "docker" for m in marks):
        request.getfixturevalue("docker_engine")
        need("corral_docker", "corral_lambda", "corral_emulator", "boto3")
    if any(m.name == "moto" for m in marks):
        row.s3, row.bucket = request.getfixturevalue("s3"), request.getfixturevalue("bucket")
    parts, manifest = runner(row)
    assert manifest["status"] == "succeeded"
    check(parts, manifest["counters"], reference, awkward[1])
