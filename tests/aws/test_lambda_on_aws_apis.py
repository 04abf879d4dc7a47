"""``--backend lambda`` end to end, as on AWS: S3 input and output (moto), the execution role in IAM
(moto), the function on a Lambda endpoint (the emulator). The only difference from AWS is
``--lambda-endpoint`` and the ``AWS_ENDPOINT_URL_*`` variables."""

from __future__ import annotations

import json
import re

import pytest

from tests.aws.conftest import (
    SECRET_KEY,
    WORDCOUNT,
    attempts,
    corral,
    environment,
    lambda_client,
    manifest,
    parts,
    put_text_inputs,
)
from tests.manifests import committed_once

pytestmark = [pytest.mark.docker, pytest.mark.moto]
COMMON = ["--split-size", "16KB", "--reducers", "3", "--max-concurrency", "4"]


def test_wordcount_on_lambda_equals_the_processes_backend(emulator, s3, bucket, tmp_path):
    """Output byte for byte equal to --backend processes; the role is least privilege; per task the
    manifest has billed duration and memory, the run has GB-seconds and a cost; with -vv the secret key
    appears nowhere."""
    put_text_inputs(s3, bucket)
    local = corral("run", WORDCOUNT, f"s3://{bucket}/in/", "--out", f"s3://{bucket}/local", "--backend",
                   "processes", *COMMON, cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    done = corral("run", WORDCOUNT, f"s3://{bucket}/in/", "--out", f"s3://{bucket}/out", "--backend", "lambda",
                  "--lambda-endpoint", emulator.endpoint, "-vvv", *COMMON, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = parts(s3, bucket, "local")
    assert list(expected) == ["part-00000", "part-00001", "part-00002"]
    assert parts(s3, bucket, "out") == expected
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]]
    assert "out/_SUCCESS" in keys and not any("/_corral/work" in k for k in keys)

    m = manifest(s3, bucket, "out")
    committed = committed_once(m)  # no attempt failed (a straggler may have had a speculative twin)
    for task, attempt in committed:
        stats = attempt["stats"]
        assert stats["billed_ms"] >= 1 and 0 < stats["max_memory_used_mb"] <= 512, (task, stats)
        assert stats["memory_size_mb"] == 512 and stats["throttles"] == 0
    report = m["report"]
    billed = sum(a["stats"]["billed_ms"] for _, a in committed)
    assert report["throttled_invokes"] == 0 and report["billed_ms"] >= billed
    assert report["gb_seconds"] == pytest.approx(report["billed_ms"] / 1000 * 0.5, rel=1e-6)
    if len(committed) == len(attempts(m)):  # else a cancelled twin's call may be billed too, or not yet
        assert report["invocations"] == len(committed) and report["billed_ms"] == billed
    assert report["estimated_cost_usd"] > 0 and report["prices"]["architecture"] == "x86_64"
    assert f"${report['estimated_cost_usd']:.6f}" in done.stderr  # the summary line

    # the role corral created: trusted by Lambda only, scoped to this job's prefixes
    import boto3

    iam = boto3.client("iam")
    role = iam.get_role(RoleName="corral-wordcount-WordCount-role")["Role"]
    function = lambda_client(emulator.endpoint).get_function(FunctionName="corral-wordcount-WordCount")
    assert function["Configuration"]["Role"] == role["Arn"]
    policy = iam.get_role_policy(RoleName=role["RoleName"], PolicyName="corral-job-access")["PolicyDocument"]
    s3_arns = [r for s in policy["Statement"] for r in s["Resource"] if r.startswith("arn:aws:s3:::")]
    assert s3_arns and all(r in (f"arn:aws:s3:::{bucket}",) or r.startswith(
        (f"arn:aws:s3:::{bucket}/in/", f"arn:aws:s3:::{bucket}/out/_corral/work")) for r in s3_arns), s3_arns

    # credentials come from the standard chain and are never written out, even when -vvv logs every
    # request at debug level (botocore's own lines, signed headers included)
    assert "Making request for OperationModel(name=Invoke)" in done.stderr
    assert "Making request for OperationModel(name=GetRole)" in done.stderr
    assert SECRET_KEY not in done.stderr
    assert SECRET_KEY not in json.dumps(m)


def test_a_third_of_invokes_throttled_output_exact_and_every_retry_recorded(docker_engine, moto_server, s3,
                                                                             bucket, tmp_path):
    """The emulator answers 429 TooManyRequestsException to a third of the invokes (its fault hook, seeded):
    the output is still exact, and every throttled invoke is in the manifest and the -v log."""
    from collections import Counter

    from corral_emulator import Emulator

    put_text_inputs(s3, bucket, files=2, lines=800)
    texts = [s3.get_object(Bucket=bucket, Key=f"in/part-{i}.txt")["Body"].read().decode() for i in range(2)]
    with Emulator(max_concurrency=4, idle_timeout=60, throttle_fraction=1 / 3, throttle_seed=7) as emu:
        done = corral("run", WORDCOUNT, f"s3://{bucket}/in/", "--out", f"s3://{bucket}/out", "--backend",
                      "lambda", "--lambda-endpoint", emu.endpoint, "-v", "--retries", "0", *COMMON, cwd=tmp_path)
        injected = emu.engine.injected_throttles
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for part in parts(s3, bucket, "out").values() for line in part.decode().splitlines()]
    assert Counter({k: int(v) for k, v in (line.split("\t") for line in lines)}) == Counter(
        word for text in texts for word in text.split())
    assert len(lines) == len(set(lines))  # no key twice: nothing duplicated
    m = manifest(s3, bucket, "out")
    committed_once(m)  # throttles never cost an attempt (a straggler may have had a speculative twin)
    found = attempts(m)
    recorded = sum(a["stats"].get("throttles", 0) for _, a in found)
    logged = re.findall(r"(?m)^corral: (?:map|reduce)-\d{4} attempt \d+: invoke throttled \(TooManyRequestsException"
                        r": Rate Exceeded\. \(ConcurrentInvocationLimitExceeded\)\); retry \d+ in ", done.stderr)
    assert injected >= 3
    if any(a["status"] == "cancelled" for _, a in found):  # its last throttle may come after the cancel
        assert recorded <= injected and len(logged) <= injected and m["report"]["throttled_invokes"] <= injected
    else:
        assert recorded == injected == m["report"]["throttled_invokes"] == len(logged)
        assert f"{injected} throttled invokes retried" in done.stderr


def test_still_throttled_at_the_deadline_the_job_fails(docker_engine, moto_server, s3, bucket, tmp_path):
    from corral_emulator import Emulator

    s3.put_object(Bucket=bucket, Key="in/a.txt", Body=b"a b\n")
    with Emulator(max_concurrency=2, idle_timeout=60, throttle_fraction=0.999) as emu:
        done = corral("run", WORDCOUNT, f"s3://{bucket}/in/", "--out", f"s3://{bucket}/out", "--backend",
                      "lambda", "--lambda-endpoint", emu.endpoint, "--deadline", "8", "-v", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert re.search(r"corral: job failed: task map-0000 attempt \d+: still throttled at the job's deadline "
                     r"\(--deadline\) after \d+ throttled invokes", done.stderr), done.stderr
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/").get("Contents", [])]
    assert "out/_SUCCESS" not in keys and not any("part-" in k for k in keys)
    failed = [a for _, a in attempts(manifest(s3, bucket, "out")) if a["status"] == "failed"]
    assert failed and failed[-1]["failure"]["kind"] == "throttled" and failed[-1]["stats"]["throttles"] > 1


def test_binary_and_pure_python_requirements_run_in_the_function(emulator, s3, bucket, tmp_path):
    """markupsafe (compiled: its C speedups must load) and six (pure Python), as manylinux x86_64 wheels."""
    job = tmp_path / "escape.py"
    job.write_text(
        "import corral\nimport markupsafe\nimport six\n\n\n"
        "class Escape(corral.Job):\n"
        "    requirements = ['markupsafe', 'six']\n\n"
        "    def map(self, key, line):\n"
        "        from markupsafe import _speedups  # the compiled module, not the pure fallback\n"
        "        assert markupsafe.escape is _speedups._escape_inner or markupsafe.escape('<')\n"
        "        for word in line.split():\n"
        "            yield str(markupsafe.escape(word)), six.ensure_str('1')\n\n"
        "    def reduce(self, word, ones):\n"
        "        yield word, sum(int(o) for o in ones)\n"
    )
    s3.put_object(Bucket=bucket, Key="in/a.txt", Body=b"<b> & <b>\nplain\n")
    done = corral("run", job, f"s3://{bucket}/in/", "--out", f"s3://{bucket}/out", "--backend", "lambda",
                  "--lambda-endpoint", emulator.endpoint, "--reducers", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert parts(s3, bucket, "out")["part-00000"] == b"&amp;\t1\n&lt;b&gt;\t2\nplain\t1\n"
    code = lambda_client(emulator.endpoint).get_function(FunctionName="corral-escape-Escape")["Code"]["Location"]
    import io
    import urllib.request
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(urllib.request.urlopen(code).read())).namelist()
    assert "markupsafe/_speedups.cpython-311-x86_64-linux-gnu.so" in names and "six.py" in names


def test_environment_ephemeral_storage_and_timeout_reach_the_function(emulator, s3, bucket, tmp_path):
    s3.put_object(Bucket=bucket, Key="in/a.txt", Body=b"x\n")
    job = tmp_path / "envjob.py"
    job.write_text(
        "import os\n\nimport corral\n\n\nclass EnvJob(corral.Job):\n"
        "    def map(self, key, line):\n"
        "        yield os.environ.get('GREETING', 'missing'), 1\n"
    )
    done = corral("run", job, f"s3://{bucket}/in/", "--out", f"s3://{bucket}/out", "--backend", "lambda",
                  "--lambda-endpoint", emulator.endpoint, "--environment", "GREETING=hello world",
                  "--ephemeral-storage", "1024", "--timeout", "30", "--memory", "256", cwd=tmp_path,
                  env=environment())
    assert done.returncode == 0, done.stderr[-3000:]
    assert parts(s3, bucket, "out")["part-00000"] == b"hello world\t1\n"
    config = lambda_client(emulator.endpoint).get_function(FunctionName="corral-envjob-EnvJob")["Configuration"]
    assert config["Environment"]["Variables"] == {"GREETING": "hello world"}
    assert (config["EphemeralStorage"], config["Timeout"], config["MemorySize"]) == ({"Size": 1024}, 30, 256)
