"""Self-deploy on the emulator and moto's IAM: create, leave alone, update only what changed, undeploy
exactly what was created; a package over 50 MB through the deploy bucket; payloads by reference."""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile

import boto3
import pytest

import corral
from tests.aws.conftest import WORDCOUNT, lambda_client, parts
from tests.aws.conftest import corral as corral_cli

pytestmark = [pytest.mark.docker, pytest.mark.moto]
sys.path.insert(0, str(WORDCOUNT.parent))
from wordcount import WordCount  # noqa: E402

JOB = '''
import corral


class Lifecycle(corral.Job):
    def map(self, key, line):
        for word in line.split():
            yield word, 1

    def reduce(self, word, counts):
        yield word, sum(counts)
'''


def state(endpoint: str, name: str) -> dict:
    return lambda_client(endpoint).get_function(FunctionName=name)["Configuration"]


def test_deploy_updates_only_what_changed_and_undeploy_removes_exactly_what_it_created(emulator, s3, bucket,
                                                                                      tmp_path):
    iam = boto3.client("iam")
    iam.create_role(RoleName="unrelated", AssumeRolePolicyDocument="{}")
    job = tmp_path / "lifecycle.py"
    job.write_text(JOB)
    s3.put_object(Bucket=bucket, Key="in/a.txt", Body=b"a b a\n")
    where = [f"s3://{bucket}/in/", "--out", f"s3://{bucket}/out"]
    lam = ["--backend", "lambda", "--lambda-endpoint", emulator.endpoint, "--reducers", "1"]
    name, role = "corral-lifecycle-Lifecycle", "corral-lifecycle-Lifecycle-role"

    first = corral_cli("run", job, *where, *lam, "-v", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "create-role, create in" in first.stderr
    assert parts(s3, bucket, "out")["part-00000"] == b"a\t2\nb\t1\n"
    created = state(emulator.endpoint, name)
    assert iam.get_role(RoleName=role)["Role"]["Arn"] == created["Role"]

    second = corral_cli("run", job, *where, *lam, "-v", "--overwrite", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "function up to date" in second.stderr and "role" not in second.stderr.split("package")[-1]
    unchanged = state(emulator.endpoint, name)
    assert (unchanged["CodeSha256"], unchanged["RevisionId"], unchanged["LastModified"]) == (
        created["CodeSha256"], created["RevisionId"], created["LastModified"])

    job.write_text(JOB.replace("yield word, 1", "yield word.upper(), 1"))
    code = corral_cli("deploy", job, *where, *lam, cwd=tmp_path)
    assert code.returncode == 0, code.stderr
    assert "update-code in" in code.stderr and "update-config" not in code.stderr
    updated = state(emulator.endpoint, name)
    assert updated["CodeSha256"] != created["CodeSha256"] and updated["MemorySize"] == 512

    memory = corral_cli("deploy", job, *where, *lam, "--memory", "256", cwd=tmp_path)
    assert memory.returncode == 0, memory.stderr
    assert "update-config in" in memory.stderr and "update-code" not in memory.stderr
    resized = state(emulator.endpoint, name)
    assert resized["MemorySize"] == 256 and resized["CodeSha256"] == updated["CodeSha256"]

    gone = corral_cli("undeploy", job, "--backend", "lambda", "--lambda-endpoint", emulator.endpoint, cwd=tmp_path)
    assert gone.returncode == 0, gone.stderr
    assert "deleted the function" in gone.stderr and "deleted IAM role" in gone.stderr
    with pytest.raises(lambda_client(emulator.endpoint).exceptions.ResourceNotFoundException):
        state(emulator.endpoint, name)
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_role(RoleName=role)
    assert iam.get_role(RoleName="unrelated")["Role"]  # nothing else touched
    assert parts(s3, bucket, "out")  # nor the data
    again = corral_cli("undeploy", job, "--backend", "lambda", "--lambda-endpoint", emulator.endpoint, cwd=tmp_path)
    assert again.returncode == 0 and "does not exist" in again.stderr


def test_with_an_existing_role_corral_manages_no_iam_and_undeploy_leaves_the_role(emulator, s3, bucket, tmp_path):
    iam = boto3.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service":
                                                     "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
    arn = iam.create_role(RoleName="team-lambda", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.put_role_policy(RoleName="team-lambda", PolicyName="team", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    job = tmp_path / "teamjob.py"
    job.write_text(JOB.replace("Lifecycle", "TeamJob"))
    s3.put_object(Bucket=bucket, Key="in/a.txt", Body=b"x\n")
    done = corral_cli("run", job, f"s3://{bucket}/in/", "--out", f"s3://{bucket}/out", "--backend", "lambda",
                      "--lambda-endpoint", emulator.endpoint, "--lambda-role-arn", arn, "-v", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert state(emulator.endpoint, "corral-teamjob-TeamJob")["Role"] == arn
    roles = [r["RoleName"] for r in iam.list_roles()["Roles"]]
    assert "corral-teamjob-TeamJob-role" not in roles and "create-role" not in done.stderr
    # undeploy, even without --lambda-role-arn: the function goes, the team's role (not corral's) stays
    gone = corral_cli("undeploy", job, "--backend", "lambda", "--lambda-endpoint", emulator.endpoint, cwd=tmp_path)
    assert gone.returncode == 0, gone.stderr
    assert "team-lambda was not created by corral" in gone.stderr
    assert iam.list_role_policies(RoleName="team-lambda")["PolicyNames"] == ["team"]


def test_two_deploys_at_once_share_one_function(emulator, tmp_path):
    """Two runs of one job starting together both find no function: Lambda refuses the second create
    (ResourceConflictException), and that deploy takes the function the first one created."""
    import subprocess

    from tests.aws.conftest import CORRAL, environment

    job = tmp_path / "together.py"
    job.write_text(JOB.replace("Lifecycle", "Together"))
    role = "arn:aws:iam::123456789012:role/team-lambda"  # an existing role: no IAM calls to race on
    started = [subprocess.Popen([CORRAL, "deploy", str(job), "--backend", "lambda", "--lambda-endpoint",
                                 emulator.endpoint, "--lambda-role-arn", role, "-v"], cwd=tmp_path,
                                env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    done = [(p.wait(timeout=300), p.stderr.read()) for p in started]
    assert [code for code, _ in done] == [0, 0], done
    logs = [err for _, err in done]
    assert sum("; create in " in err for err in logs) == 1, logs
    (other,) = [err for err in logs if "; create in " not in err]
    assert "function up to date" in other, other  # refused its create, or found the function being created
    assert state(emulator.endpoint, "corral-together-Together")["State"] == "Active"


def test_the_role_policy_follows_the_job_locations(emulator, s3, bucket, monkeypatch):
    """Re-deploying for other locations rewrites the policy (and waits for IAM to apply it)."""
    from corral_lambda import executor as module
    from corral_lambda.executor import LambdaConfig, LambdaExecutor

    monkeypatch.delenv("CORRAL_LAMBDA_IAM_SETTLE", raising=False)
    slept = []
    monkeypatch.setattr(module.time, "sleep", slept.append)
    ref = {"module": "wordcount", "class": "WordCount", "path": str(WORDCOUNT)}

    def source(inputs: str) -> corral.JobSource:
        work = f"s3://{bucket}/out/_corral/work"
        return corral.JobSource(ref, (), (inputs, work), inputs=(inputs,), output=f"s3://{bucket}/out", work=work)

    executor = LambdaExecutor(1, LambdaConfig(endpoint_url=emulator.endpoint, function_name="corral-policy-test"))
    with executor:
        executor.deploy(source(f"s3://{bucket}/in/"))
        assert executor.deploy_actions == ["create-role", "create"] and slept == []
        executor.deploy(source(f"s3://{bucket}/in/"))
        assert executor.deploy_actions == []
        executor.deploy(source(f"s3://{bucket}/other/"))
        assert executor.deploy_actions == ["update-role"] and slept == [module.IAM_SETTLE_SECONDS]
        document = boto3.client("iam").get_role_policy(RoleName="corral-policy-test-role",
                                                       PolicyName="corral-job-access")["PolicyDocument"]
        assert f"arn:aws:s3:::{bucket}/other/*" in json.dumps(document)
        assert f"arn:aws:s3:::{bucket}/in/*" not in json.dumps(document)
        executor.undeploy(source(f"s3://{bucket}/other/"))
        assert executor.deploy_actions == ["delete", "delete-role"]


def test_a_package_over_50_mb_goes_through_the_deploy_bucket(emulator, s3, bucket, monkeypatch):
    from corral_lambda.executor import MAX_DIRECT_UPLOAD, LambdaExecutor, code_sha256

    from corral.packaging import make_zip

    monkeypatch.setenv("CORRAL_LAMBDA_IAM_SETTLE", "0")
    original = LambdaExecutor.build
    built = []

    def padded(self, job):  # the real package plus 51 MB of incompressible data
        package = original(self, job)
        archive = zipfile.ZipFile(io.BytesIO(package.zip_bytes))
        files = {name: archive.read(name) for name in archive.namelist()}
        files["corral_padding.bin"] = os.urandom(51 << 20)
        built.append(make_zip(files))
        return built[-1]

    monkeypatch.setattr(LambdaExecutor, "build", padded)
    s3.create_bucket(Bucket="corral-code")
    s3.put_object(Bucket=bucket, Key="in/a.txt", Body=b"big package\n")
    manifest = corral.run(WordCount, f"s3://{bucket}/in/", f"s3://{bucket}/out", backend="lambda",
                          lambda_endpoint=emulator.endpoint, deploy_bucket="corral-code", reducers=1)
    assert manifest["status"] == "succeeded"
    assert parts(s3, bucket, "out")["part-00000"] == b"big\t1\npackage\t1\n"
    config = state(emulator.endpoint, "corral-wordcount-WordCount")
    assert built[-1].size > MAX_DIRECT_UPLOAD and config["CodeSize"] == built[-1].size
    assert config["CodeSha256"] == code_sha256(built[-1])
    assert s3.list_objects_v2(Bucket="corral-code").get("KeyCount", 0) == 0  # Lambda keeps its own copy


def test_large_payloads_and_results_go_by_reference_through_s3(emulator, s3, bucket, monkeypatch):
    """With the inline limits lowered to 64 bytes, every payload and result crosses through the job's
    working folder on S3: the word count is still exact, and nothing is left behind."""
    from corral_lambda import plugin
    from corral_lambda.executor import LambdaConfig, LambdaExecutor

    from corral.remote import DEFAULT_CONCURRENCY

    monkeypatch.setenv("CORRAL_LAMBDA_IAM_SETTLE", "0")
    removed: list[str] = []
    original_remove = LambdaExecutor._remove

    def remove(self, url):
        removed.append(url)
        original_remove(self, url)

    monkeypatch.setattr(LambdaExecutor, "_remove", remove)
    monkeypatch.setattr(plugin, "create_executor", lambda settings: LambdaExecutor(
        settings.max_concurrency or DEFAULT_CONCURRENCY,
        LambdaConfig.from_settings(settings, inline_payload_limit=64, inline_result_limit=64)))
    s3.put_object(Bucket=bucket, Key="in/a.txt", Body=b"one two two\nthree three three\n" * 50)
    manifest = corral.run(WordCount, f"s3://{bucket}/in/", f"s3://{bucket}/out", backend="lambda",
                          lambda_endpoint=emulator.endpoint, reducers=2, split_size="512")
    assert manifest["status"] == "succeeded"
    lines = sorted(line for p in parts(s3, bucket, "out").values() for line in p.decode().splitlines())
    assert lines == ["one\t50", "three\t150", "two\t100"]
    tasks = sum(len(stage["tasks"]) for stage in manifest["stages"])
    payloads = [u for u in removed if "/_refs/payload-" in u]
    results = [u for u in removed if "/_refs/result-" in u]
    assert len(payloads) == tasks and len(results) == tasks, (tasks, removed)
    assert all(u.startswith(f"s3://{bucket}/out/_corral/work/_refs/") for u in removed)
    assert not s3.list_objects_v2(Bucket=bucket, Prefix="out/_corral/work/").get("Contents")
