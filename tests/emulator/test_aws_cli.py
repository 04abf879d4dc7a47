"""``corral emulator serve`` driven by the AWS CLI (awscli v1: a client nobody here wrote), command by command,
as a user of AWS would: each command's exit code and output are checked.

Nothing is mocked: a real ``serve`` process on a free port, the real ``aws`` command (dummy keys; in v1
``--payload`` is raw JSON; see ``AwsCli``), functions in Docker containers. ``pytest -s`` prints the
transcript of every command; ``CORRAL_AWS_CLI_TRANSCRIPT=FILE`` also writes it to FILE.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.requirements import need, unavailable

pytestmark = pytest.mark.docker

ROLE = "arn:aws:iam::000000000000:role/corral-cli-test"
ACCOUNT_ARN = "arn:aws:lambda:us-east-1:000000000000:function"
EVENT_RETRY_DELAY = 0.5  # seconds: ``serve --event-retry-delay`` (Lambda waits 60, then 120)
MAX_CONCURRENCY = 6

HANDLER = '''
import json, os, time

CODE = {code!r}


def cpus():
    """The CPUs this container may use, from its cgroup (v2 cpu.max, or v1 cfs quota / period)."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
    except OSError:
        quota = open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read().strip()
        period = open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read().strip()
    return None if quota in ("max", "-1") else int(quota) / int(period)


def handler(event, context):
    action = event.get("action")
    if action == "fail":
        with open(os.path.join(event["folder"], event["name"]), "a") as f:
            f.write(f"{{time.time()}}\\n")
        raise RuntimeError("failing on purpose")
    if action == "fill-tmp":
        stat = os.statvfs("/tmp")
        written = 0
        try:
            with open("/tmp/fill", "wb") as f:
                chunk = b"x" * (1 << 20)
                while written < 20000:
                    f.write(chunk)
                    f.flush()
                    written += 1
        except OSError as exc:
            return {{"tmp_mb": stat.f_blocks * stat.f_frsize >> 20, "written_mb": written, "error": str(exc)}}
        finally:
            os.remove("/tmp/fill")
        return {{"written_mb": written}}
    if action == "tmp-size":
        stat = os.statvfs("/tmp")
        return {{"tmp_mb": stat.f_blocks * stat.f_frsize >> 20}}
    if action == "cpus":
        return {{"cpus": cpus()}}
    if action == "tmp-mount":
        with open("/proc/self/mounts") as f:
            kinds = [line.split()[2] for line in f if line.split()[1] == "/tmp"]
        return {{"tmp_fs": kinds[-1] if kinds else None}}
    return {{"code": CODE, "greeting": os.environ.get("GREETING"), "version": os.environ["AWS_LAMBDA_FUNCTION_VERSION"],
            "invoked_arn": context.invoked_function_arn}}
'''


def zip_url(folder: Path, code: str) -> str:
    """A deployment package of the test handler that reports ``code``; its ``fileb://`` URL."""
    path = folder / f"{code}.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", HANDLER.format(code=code))
    path.write_bytes(buffer.getvalue())
    return f"fileb://{path}"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self):
        return json.loads(self.stdout) if self.stdout.strip() else None


class AwsCli:
    """Runs ``aws --endpoint-url URL lambda ...`` and keeps a transcript of every command and its output.

    The CLI runs in this process: ``awscli.clidriver.main``, the function the ``aws`` command calls, with
    its own environment and its output captured (a new process per command would cost a second each here,
    for nothing the test looks at). ``CORRAL_AWS_CLI=process`` runs the ``aws`` command itself instead.
    """

    def __init__(self, endpoint: str, home: Path) -> None:
        self.endpoint = endpoint
        self.home = home
        self.transcript: list[str] = []
        aws = Path(sys.executable).with_name("aws")
        self.aws = str(aws) if aws.exists() else "aws"
        self.in_process = os.environ.get("CORRAL_AWS_CLI") != "process"
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(home / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
            "AWS_PAGER": "",
        }

    def run(self, argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
        if not self.in_process:
            environment = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **env}
            done = subprocess.run([self.aws, *argv], capture_output=True, text=True, env=environment,
                                  cwd=self.home, timeout=180)
            return done.returncode, done.stdout, done.stderr
        from awscli.clidriver import create_clidriver  # (sets AWS_DATA_PATH to its own data, kept below)

        saved = {k: v for k, v in os.environ.items() if k.startswith("AWS_") and k != "AWS_DATA_PATH"}
        out, err = io.StringIO(), io.StringIO()
        try:
            for key in saved:
                del os.environ[key]
            os.environ.update(env)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = create_clidriver().main(argv)
        finally:
            for key in [k for k in os.environ if k.startswith("AWS_") and k != "AWS_DATA_PATH"]:
                del os.environ[key]
            os.environ.update(saved)
        return code, out.getvalue(), err.getvalue()

    def __call__(self, *args: str, expect: int = 0, env: dict[str, str] | None = None) -> Result:
        environment = {**self.env, **(env or {})}
        argv = ["--endpoint-url", self.endpoint, "--output", "json", "lambda", *args]
        code, stdout, stderr = self.run(argv, environment)
        shown = shlex.join(["aws", "lambda", *args]).replace(str(self.home) + "/", "")
        if env:
            shown = " ".join(f"{k}={v}" for k, v in sorted(env.items())) + " " + shown
        text = (stdout + stderr).strip()
        self.transcript.append(f"$ {shown}\n{text + chr(10) if text else ''}[exit {code}]")
        assert code == expect, self.transcript[-1]
        return Result(code, stdout, stderr)

    def invoke(self, name: str, payload: dict | None = None, *args: str, expect: int = 0) -> tuple[Result, object]:
        """``aws lambda invoke`` (raw JSON payload, as v1 takes it); (the command's result, the decoded payload)."""
        out = self.home / "out.json"
        out.unlink(missing_ok=True)
        result = self("invoke", "--function-name", name, "--payload", json.dumps(payload or {}), *args, str(out),
                      expect=expect)
        body = out.read_text() if out.exists() else ""
        if body:
            self.transcript.append(f"$ cat out.json\n{body}")
        return result, json.loads(body) if body else None


@dataclass
class Served:
    endpoint: str
    mount: Path
    stderr: Path
    process: subprocess.Popen


@pytest.fixture(scope="module")
def served(docker_engine, tmp_path_factory):
    """``corral emulator serve`` as a process on a free port, a folder mounted into every container."""
    folder = tmp_path_factory.mktemp("aws-cli")
    mount = folder / "mounted"
    mount.mkdir()
    mount.chmod(0o777)
    stderr = folder / "serve.err"
    corral = Path(sys.executable).with_name("corral")
    command = [str(corral), "emulator"] if corral.exists() else [sys.executable, "-m", "corral_emulator"]
    with open(stderr, "w") as err:
        process = subprocess.Popen(
            [*command, "serve", "--port", "0", "--mount", str(mount), "--max-concurrency", str(MAX_CONCURRENCY),
             "--event-retry-delay", str(EVENT_RETRY_DELAY), "--log-dir", str(folder / "logs")],
            stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    try:
        first = process.stdout.readline()
        match = re.search(r"Lambda API on (http://127\.0\.0\.1:\d+)", first)
        assert match, first + stderr.read_text()
        yield Served(match.group(1), mount, stderr, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def aws(served, tmp_path_factory):
    need("awscli")
    home = tmp_path_factory.mktemp("aws-home")
    cli = AwsCli(served.endpoint, home)
    if not cli.in_process and subprocess.run([cli.aws, "--version"], capture_output=True).returncode != 0:
        unavailable("the AWS CLI (aws) does not run")
    yield cli
    transcript = "\n\n".join(cli.transcript) + "\n"
    print("\n----- AWS CLI transcript -----\n" + transcript)
    if os.environ.get("CORRAL_AWS_CLI_TRANSCRIPT"):
        Path(os.environ["CORRAL_AWS_CLI_TRANSCRIPT"]).write_text(transcript)


def create(aws: AwsCli, name: str, code: str = "v1", *extra: str) -> dict:
    """``create-function`` (1769 MB: a whole vCPU, for quick cold starts, unless ``extra`` says otherwise)."""
    if "--memory-size" not in extra:
        extra = ("--memory-size", "1769", *extra)
    result = aws("create-function", "--function-name", name, "--runtime", "python3.11", "--role", ROLE,
                 "--handler", "app.handler", "--zip-file", zip_url(aws.home, code), *extra)
    aws("wait", "function-active-v2", "--function-name", name)
    return result.json


def test_versions_aliases_and_tags(aws):
    created = create(aws, "hello", "v1", "--environment", "Variables={GREETING=hi}", "--tags", "team=data")
    assert (created["FunctionArn"], created["Version"]) == (f"{ACCOUNT_ARN}:hello", "$LATEST")
    result, payload = aws.invoke("hello")
    assert result.json == {"StatusCode": 200, "ExecutedVersion": "$LATEST"}
    assert payload == {"code": "v1", "greeting": "hi", "version": "$LATEST", "invoked_arn": f"{ACCOUNT_ARN}:hello"}

    # tags: those given at creation, added, removed
    arn = f"{ACCOUNT_ARN}:hello"
    assert aws("list-tags", "--resource", arn).json == {"Tags": {"team": "data"}}
    aws("tag-resource", "--resource", arn, "--tags", "stage=test,owner=house")
    assert aws("list-tags", "--resource", arn).json == {"Tags": {"team": "data", "stage": "test", "owner": "house"}}
    aws("untag-resource", "--resource", arn, "--tag-keys", "team", "owner")
    assert aws("list-tags", "--resource", arn).json == {"Tags": {"stage": "test"}}
    assert aws("get-function", "--function-name", "hello", "--query", "Tags").json == {"stage": "test"}
    failed = aws("list-tags", "--resource", f"{ACCOUNT_ARN}:nobody", expect=255)
    assert "(ResourceNotFoundException) when calling the ListTags operation: Function not found: " \
           f"{ACCOUNT_ARN}:nobody" in failed.stderr

    # versions: each a snapshot of $LATEST's code and configuration
    first = aws("publish-version", "--function-name", "hello", "--description", "first").json
    assert (first["Version"], first["FunctionArn"], first["Description"]) == ("1", f"{arn}:1", "first")
    aws("update-function-code", "--function-name", "hello", "--zip-file", zip_url(aws.home, "v2"))
    aws("wait", "function-updated-v2", "--function-name", "hello")
    aws("update-function-configuration", "--function-name", "hello", "--environment", "Variables={GREETING=hello}",
        "--description", "second cut")
    aws("wait", "function-updated-v2", "--function-name", "hello")
    assert aws("publish-version", "--function-name", "hello").json["Version"] == "2"
    # nothing changed since version 2: publishing again gives version 2 back, as on Lambda
    assert aws("publish-version", "--function-name", "hello").json["Version"] == "2"
    listed = aws("list-versions-by-function", "--function-name", "hello",
                 "--query", "Versions[].[Version, FunctionArn, Description]").json
    # a version without a description of its own takes $LATEST's
    assert listed == [["$LATEST", f"{arn}:$LATEST", "second cut"], ["1", f"{arn}:1", "first"],
                      ["2", f"{arn}:2", "second cut"]]
    assert aws("get-function-configuration", "--function-name", "hello", "--qualifier", "1",
               "--query", "[Version, Environment.Variables.GREETING]").json == ["1", "hi"]

    result, payload = aws.invoke("hello", {}, "--qualifier", "1")
    assert result.json == {"StatusCode": 200, "ExecutedVersion": "1"}
    assert payload == {"code": "v1", "greeting": "hi", "version": "1", "invoked_arn": f"{arn}:1"}
    result, payload = aws.invoke("hello")
    assert payload == {"code": "v2", "greeting": "hello", "version": "$LATEST", "invoked_arn": arn}

    # aliases: a name for a version, moved by update-alias, with a routing weight to a second version
    alias = aws("create-alias", "--function-name", "hello", "--name", "live", "--function-version", "1",
                "--description", "what users get").json
    assert (alias["AliasArn"], alias["FunctionVersion"]) == (f"{arn}:live", "1")
    assert aws("get-alias", "--function-name", "hello", "--name", "live",
               "--query", "[Name, FunctionVersion, Description]").json == ["live", "1", "what users get"]
    aws("create-alias", "--function-name", "hello", "--name", "live", "--function-version", "2", expect=255)
    result, payload = aws.invoke("hello", {}, "--qualifier", "live")
    assert result.json == {"StatusCode": 200, "ExecutedVersion": "1"}
    assert (payload["code"], payload["invoked_arn"]) == ("v1", f"{arn}:live")
    aws("update-alias", "--function-name", "hello", "--name", "live", "--function-version", "2")
    result, payload = aws.invoke("hello", {}, "--qualifier", "live")
    assert (result.json["ExecutedVersion"], payload["code"], payload["greeting"]) == ("2", "v2", "hello")
    aws("update-alias", "--function-name", "hello", "--name", "live",
        "--routing-config", '{"AdditionalVersionWeights": {"1": 1.0}}')
    result, payload = aws.invoke("hello", {}, "--qualifier", "live")
    assert (result.json["ExecutedVersion"], payload["code"]) == ("1", "v1")
    assert aws("list-aliases", "--function-name", "hello", "--query", "Aliases[].Name").json == ["live"]

    # a version an alias points at cannot go; without the alias it can, and then it is gone
    failed = aws("delete-function", "--function-name", "hello", "--qualifier", "1", expect=255)
    assert "(ResourceConflictException) when calling the DeleteFunction operation: Unable to delete version " \
           "because the following aliases reference it: " in failed.stderr
    aws("delete-alias", "--function-name", "hello", "--name", "live")
    aws("get-alias", "--function-name", "hello", "--name", "live", expect=255)
    aws("delete-function", "--function-name", f"{arn}:1")  # a version's ARN names the version
    failed = aws("invoke", "--function-name", "hello", "--qualifier", "1", str(aws.home / "out.json"), expect=255)
    assert f"(ResourceNotFoundException) when calling the Invoke operation: Function not found: {arn}:1" \
           in failed.stderr
    assert aws("list-versions-by-function", "--function-name", "hello",
               "--query", "Versions[].Version").json == ["$LATEST", "2"]
    aws("delete-function", "--function-name", "hello")
    aws("get-function", "--function-name", "hello", expect=255)


def test_publish_with_create_function_and_update_function_code(aws):
    """``--publish`` publishes a version of the new code, and the command answers that version."""
    arn = f"{ACCOUNT_ARN}:published"
    created = create(aws, "published", "v1", "--publish")
    assert (created["Version"], created["FunctionArn"]) == ("1", f"{arn}:1")
    updated = aws("update-function-code", "--function-name", "published", "--zip-file", zip_url(aws.home, "v2"),
                  "--publish").json
    assert (updated["Version"], updated["FunctionArn"]) == ("2", f"{arn}:2")
    aws("wait", "function-updated-v2", "--function-name", "published")
    assert aws("list-versions-by-function", "--function-name", "published",
               "--query", "Versions[].Version").json == ["$LATEST", "1", "2"]
    for version, code in (("1", "v1"), ("2", "v2")):
        result, payload = aws.invoke("published", {}, "--qualifier", version)
        assert (result.json["ExecutedVersion"], payload["code"]) == (version, code)
    # without --publish, no version
    aws("update-function-code", "--function-name", "published", "--zip-file", zip_url(aws.home, "v3"))
    aws("wait", "function-updated-v2", "--function-name", "published")
    assert aws("list-versions-by-function", "--function-name", "published",
               "--query", "Versions[].Version").json == ["$LATEST", "1", "2"]
    aws("delete-function", "--function-name", "published")


def test_concurrency_and_account_settings(aws):
    create(aws, "counted")
    assert aws("get-function-concurrency", "--function-name", "counted").json is None  # none reserved: {}
    assert aws("put-function-concurrency", "--function-name", "counted",
               "--reserved-concurrent-executions", "2").json == {"ReservedConcurrentExecutions": 2}
    assert aws("get-function-concurrency", "--function-name", "counted").json == {"ReservedConcurrentExecutions": 2}
    settings = aws("get-account-settings").json
    assert settings["AccountUsage"]["TotalCodeSize"] >= settings["AccountUsage"]["FunctionCount"] * 1000
    assert settings["AccountLimit"]["ConcurrentExecutions"] == MAX_CONCURRENCY
    assert settings["AccountLimit"]["UnreservedConcurrentExecutions"] == MAX_CONCURRENCY - 2
    assert settings["AccountLimit"]["CodeSizeZipped"] == 52428800
    assert settings["AccountUsage"]["FunctionCount"] >= 1
    aws("put-function-concurrency", "--function-name", "counted", "--reserved-concurrent-executions", "0")
    # the CLI retries a 429 on its own (legacy mode: 4 retries with backoff); one attempt shows it at once
    failed = aws("invoke", "--function-name", "counted", str(aws.home / "out.json"), expect=255,
                 env={"AWS_MAX_ATTEMPTS": "1"})
    assert "(TooManyRequestsException) when calling the Invoke operation (reached max retries: 0): Rate Exceeded." \
           in failed.stderr
    aws("delete-function-concurrency", "--function-name", "counted")
    assert aws("get-function-concurrency", "--function-name", "counted").json is None
    result, payload = aws.invoke("counted")
    assert result.json["StatusCode"] == 200 and payload["code"] == "v1"
    aws("delete-function", "--function-name", "counted")


def attempts(folder: Path, name: str) -> list[float]:
    path = folder / name
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def wait_for(condition, timeout: float = 60.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    return condition()


def test_event_invokes_are_retried_twice_then_as_configured(aws, served):
    create(aws, "flaky")
    event = {"action": "fail", "folder": str(served.mount), "name": "first"}
    result, _ = aws.invoke("flaky", event, "--invocation-type", "Event")
    assert result.json == {"StatusCode": 202}
    # Lambda's default: two retries, the second after twice the first's delay
    times = wait_for(lambda: len(attempts(served.mount, "first")) == 3 and attempts(served.mount, "first"))
    assert times and len(times) == 3, attempts(served.mount, "first")
    assert times[1] - times[0] >= EVENT_RETRY_DELAY and times[2] - times[1] >= 2 * EVENT_RETRY_DELAY, times
    assert wait_for(lambda: "discarded after 3 attempts: RuntimeError on every attempt (MaximumRetryAttempts 2)"
                    in served.stderr.read_text())

    failed = aws("get-function-event-invoke-config", "--function-name", "flaky", expect=255)
    assert "(ResourceNotFoundException) when calling the GetFunctionEventInvokeConfig operation: The function " \
           f"{ACCOUNT_ARN}:flaky doesn't have an EventInvokeConfig" in failed.stderr
    config = aws("put-function-event-invoke-config", "--function-name", "flaky", "--maximum-retry-attempts", "0",
                 "--maximum-event-age-in-seconds", "60").json
    assert (config["FunctionArn"], config["MaximumRetryAttempts"], config["MaximumEventAgeInSeconds"]) == (
        f"{ACCOUNT_ARN}:flaky", 0, 60)
    aws("put-function-event-invoke-config", "--function-name", "flaky", "--maximum-retry-attempts", "3", expect=255)
    failed = aws("put-function-event-invoke-config", "--function-name", "flaky", "--maximum-event-age-in-seconds",
                 "30000", expect=255)  # (the CLI itself checks the lower bounds)
    assert "Value '30000' at 'maximumEventAgeInSeconds' failed to satisfy constraint: Member must have value " \
           "between 60 and 21600" in failed.stderr
    event["name"] = "second"
    aws.invoke("flaky", event, "--invocation-type", "Event")
    assert wait_for(lambda: "discarded after 1 attempt: RuntimeError on every attempt (MaximumRetryAttempts 0)"
                    in served.stderr.read_text())
    time.sleep(3 * EVENT_RETRY_DELAY)
    assert len(attempts(served.mount, "second")) == 1

    # update merges, put replaces (what it omits goes back to the default)
    merged = aws("update-function-event-invoke-config", "--function-name", "flaky", "--maximum-retry-attempts", "1",
                 "--query", "[MaximumRetryAttempts, MaximumEventAgeInSeconds]").json
    assert merged == [1, 60]
    event["name"] = "third"
    aws.invoke("flaky", event, "--invocation-type", "Event")
    assert wait_for(lambda: len(attempts(served.mount, "third")) == 2)
    assert aws("list-function-event-invoke-configs", "--function-name", "flaky",
               "--query", "FunctionEventInvokeConfigs[].MaximumRetryAttempts").json == [1]
    aws("delete-function-event-invoke-config", "--function-name", "flaky")
    aws("get-function-event-invoke-config", "--function-name", "flaky", expect=255)
    aws("delete-function", "--function-name", "flaky")


def test_tmp_is_capped_at_the_ephemeral_storage_size(aws):
    create(aws, "disk", "v1", "--memory-size", "1024", "--ephemeral-storage", "Size=512")
    _, payload = aws.invoke("disk", {"action": "tmp-mount"})
    assert payload == {"tmp_fs": "tmpfs"}
    _, payload = aws.invoke("disk", {"action": "fill-tmp"})
    assert payload["tmp_mb"] == 512
    assert payload["error"] == "[Errno 28] No space left on device" and 500 <= payload["written_mb"] <= 512
    aws("update-function-configuration", "--function-name", "disk", "--ephemeral-storage", "Size=700")
    aws("wait", "function-updated-v2", "--function-name", "disk")
    _, payload = aws.invoke("disk", {"action": "tmp-size"})
    assert payload == {"tmp_mb": 700}
    aws("delete-function", "--function-name", "disk")


def test_cpu_share_is_proportional_to_memory(aws):
    """By default (``serve`` without ``--no-cloud-cpu``), as Lambda: one vCPU at 1769 MB, in proportion below."""
    for memory in (1769, 256):
        name = f"cpu{memory}"
        create(aws, name, "v1", "--memory-size", str(memory))
        _, payload = aws.invoke(name, {"action": "cpus"})
        assert payload["cpus"] == pytest.approx(min(memory / 1769, os.cpu_count() or 1), abs=0.002), payload
        aws("delete-function", "--function-name", name)


def test_unsupported_operations_name_themselves(aws):
    create(aws, "plain")
    for args, operation, path in [
        (["create-function-url-config", "--function-name", "plain", "--auth-type", "NONE"],
         "CreateFunctionUrlConfig", "POST /2021-10-31/functions/plain/url"),
        (["get-policy", "--function-name", "plain"], "GetPolicy", "GET /2015-03-31/functions/plain/policy"),
        (["list-layers"], "ListLayers", "GET /2018-10-31/layers"),
    ]:
        failed = aws(*args, expect=255)
        assert failed.stderr.strip() == (
            f"An error occurred (UnsupportedOperationException) when calling the {operation} operation: "
            f"corral-emulator does not support the Lambda operation {operation} ({path}); its README lists "
            "the operations it serves")
    aws("delete-function", "--function-name", "plain")


def test_corral_tags_the_functions_it_deploys(aws, served, tmp_path):
    """``corral deploy --backend lambda`` against the served emulator: the function carries corral's tag."""
    need("corral_lambda")
    job = Path(__file__).resolve().parents[2] / "examples" / "wordcount.py"
    corral = Path(sys.executable).with_name("corral")
    deploy = subprocess.run(
        [str(corral) if corral.exists() else "corral", "deploy", str(job), "--backend", "lambda",
         "--lambda-endpoint", served.endpoint, "--lambda-role-arn", ROLE, "--function-name", "corral-tagged"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **aws.env})
    assert deploy.returncode == 0, deploy.stderr
    aws.transcript.append("$ corral deploy examples/wordcount.py --backend lambda --lambda-endpoint URL "
                          f"--lambda-role-arn {ROLE} --function-name corral-tagged\n{deploy.stderr.strip()}\n"
                          f"[exit {deploy.returncode}]")
    tags = aws("list-tags", "--resource", f"{ACCOUNT_ARN}:corral-tagged").json["Tags"]
    assert tags == {"corral:managed": "true"}
    aws("delete-function", "--function-name", "corral-tagged")


def test_without_cloud_cpu_a_container_may_use_every_cpu(make_function, call):
    """``Emulator(cloud_cpu=False)`` (``serve --no-cloud-cpu``; the docker backend's choice): no CPU quota."""
    name = make_function(HANDLER.format(code="v1"), memory=128)
    payload, _ = call(name, {"action": "cpus"})
    assert payload == {"cpus": None}


def test_without_the_tmp_cap_tmp_is_on_the_containers_disk(docker_engine, client_for, package):
    """``Emulator(tmp_cap=False)`` (``serve --no-tmp-cap``; the docker backend's choice): no tmpfs at /tmp, whose
    pages would count against the function's memory (a task spilling there was killed as out of memory)."""
    from corral_emulator import Emulator

    with Emulator(max_concurrency=1, cloud_cpu=False, tmp_cap=False) as emu:
        client = client_for(emu.endpoint)
        client.create_function(FunctionName="disk", Runtime="python3.11", Role=ROLE, Handler="app.handler",
                               Code={"ZipFile": package({"app.py": HANDLER.format(code="v1")})},
                               EphemeralStorage={"Size": 512})
        answer = client.invoke(FunctionName="disk", Payload=json.dumps({"action": "tmp-mount"}).encode())
        assert json.loads(answer["Payload"].read()) == {"tmp_fs": None}


@pytest.mark.slow
def test_an_event_older_than_its_maximum_age_is_discarded(docker_engine, client_for, package, caplog):
    """MaximumEventAgeInSeconds (at least 60): with retries 30 s and then 60 s apart, the second retry would
    come 91 s after the event arrived, past 60 s: the event is discarded after two attempts (about 32 s)."""
    import logging

    from corral_emulator import Emulator

    caplog.set_level(logging.INFO, logger="corral_emulator")
    with Emulator(max_concurrency=2, event_retry_delay=30.0, cloud_cpu=False) as emu:
        client = client_for(emu.endpoint)
        source = "def handler(event, context):\n    raise ValueError('no')\n"
        client.create_function(FunctionName="old", Runtime="python3.11", Role=ROLE, Handler="app.handler",
                               Code={"ZipFile": package({"app.py": source})})
        client.put_function_event_invoke_config(FunctionName="old", MaximumRetryAttempts=2, MaximumEventAgeInSeconds=60)
        assert client.invoke(FunctionName="old", InvocationType="Event", Payload=b"{}")["StatusCode"] == 202
        expected = "discarded after 2 attempts: older than MaximumEventAgeInSeconds (60 s) by its next attempt"
        assert wait_for(lambda: expected in caplog.text, timeout=90, every=1.0), caplog.text
        log = (emu.engine.log_dir / "old.log").read_text()
        assert log.count("START RequestId:") == 2


def test_boto3_names_an_unsupported_operation_too(lambda_client, emulator):
    import botocore.exceptions
    import requests

    with pytest.raises(botocore.exceptions.ClientError) as caught:
        lambda_client.list_layers()
    error = caught.value.response
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == (
        "UnsupportedOperationException", 501)
    assert str(caught.value) == (
        "An error occurred (UnsupportedOperationException) when calling the ListLayers operation: corral-emulator "
        "does not support the Lambda operation ListLayers (GET /2018-10-31/layers); its README lists the "
        "operations it serves")
    # a path of no Lambda operation at all: still AWS's JSON error shape, never a bare 404
    answer = requests.get(f"{emulator.endpoint}/2015-03-31/functions/x/nonsense", timeout=30)
    assert (answer.status_code, answer.headers["X-Amzn-ErrorType"]) == (501, "UnsupportedOperationException")
    assert answer.json()["message"] == (
        "corral-emulator does not support GET /2015-03-31/functions/x/nonsense, which is no operation of the "
        "Lambda API it knows; its README lists the operations it serves")
