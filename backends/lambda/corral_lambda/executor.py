"""The ``lambda`` executor: deploy the job as a Lambda function, run each task as one synchronous Invoke.

``deploy`` builds the package (``corral.build_package``, wheels for the runtime and architecture), checks
Lambda's size limits, creates or updates the function's execution role (``corral_lambda.iam``; not with
``--lambda-role-arn``), then brings the function up to date, touching only what changed: CreateFunction
when it is missing, UpdateFunctionCode only when the CodeSha256 (or the architecture) differs,
UpdateFunctionConfiguration only when a setting differs, waiting until it is Active / Successful.
A zip over 50 MB goes through S3 (``--deploy-bucket``): PutObject, then ``Code.S3Bucket/S3Key``, then
the object is deleted (Lambda keeps its own copy).

``submit`` invokes it (RequestResponse, LogType=Tail) on a bounded thread pool and turns the answer into
an Outcome with the measurements (billed duration, max memory used, cold start, throttled invokes).

Retries of the Invoke call itself, with exponential backoff and full jitter (tenacity), each logged
(``-v``):

- throttling (429 ``TooManyRequestsException``, whatever its reason, e.g.
  ``ConcurrentInvocationLimitExceeded``) is backpressure: retried without limit until the job's
  deadline (``--deadline``), never counted as a failure. At the deadline the attempt fails as
  ``throttled``, and the driver fails the job (exit 1). ``stats["throttles"]`` counts them per attempt.
- server errors (5xx) and failures to connect (the request never ran) are retried ``api_attempts`` times,
  then the attempt fails as ``infrastructure``, which counts toward ``--retries``.
- a connection lost *during* an invocation is not retried here (the function may still be running): it
  fails the attempt as ``infrastructure`` and the driver retries the task under a new attempt name.

Function errors (the user's exception, out of memory, timeouts) are failures of the attempt, counted
toward ``--retries`` by the driver. Nothing is dropped: every attempt comes back as an Outcome.

Payloads stay far below Lambda's 6 MB limits: a payload over ``inline_payload_limit`` bytes is written
to the job's working folder and passed by reference, and so is a large result (see ``handler``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from corral import (
    INFRASTRUCTURE,
    THROTTLED,
    CorralError,
    Executor,
    Failure,
    JobSource,
    MemorySizing,
    Outcome,
    Package,
    Settings,
    UsageError,
    build_package,
    get_filesystem,
)
from corral_lambda import iam
from corral_lambda.handler import PAYLOAD_KEY, RESULT_KEY, RESULTS_KEY
from corral_lambda.options import (
    ARCHITECTURE,
    DEPLOY_BUCKET,
    ENVIRONMENT,
    EPHEMERAL_STORAGE,
    FUNCTION_NAME_OPTION,
    LAMBDA_ENDPOINT,
    MEMORY,
    ROLE_ARN_OPTION,
    RUNTIME,
    TIMEOUT,
)
from corral_lambda.options import REGION as REGION_OPTION
from corral_lambda.pricing import PRICES_READ, REGION, estimate, gb_seconds, sizing
from corral_lambda.results import invoke_stats, outcome_from_invoke
from corral_lambda.runtime import host_runtime, platform_tags, python_version

log = logging.getLogger("corral.lambda")
T = TypeVar("T")

HANDLER = "corral_lambda.handler.handler"
DEFAULT_CONCURRENCY = 100
DEFAULT_DEADLINE = 6 * 3600.0
MAX_DIRECT_UPLOAD = 50 * 1024 * 1024  # Lambda's limit for Code.ZipFile
MAX_UNZIPPED = 262_144_000  # Lambda's limit for the unzipped package (250 MB), however it is uploaded
MAX_PAYLOAD = 6 * 1024 * 1024  # Lambda's limit for a synchronous request (and response)
INLINE_PAYLOAD_LIMIT = 256 * 1024  # larger payloads go by reference through the working folder
INLINE_RESULT_LIMIT = 1024 * 1024  # larger results come back by reference
MAX_BACKOFF = 10.0  # seconds: the cap of one wait between Invoke retries
#: After the policy of an existing role changed, wait this long before the first invoke (IAM is
#: eventually consistent: a task started at once could be denied what the new policy grants).
#: ``CORRAL_LAMBDA_IAM_SETTLE`` (seconds) overrides it, e.g. 0 against an IAM that applies changes at once.
IAM_SETTLE_SECONDS = 10.0
DEPLOY_PREFIX = "corral-deploy"
EMULATOR_ROLE = "arn:aws:iam::000000000000:role/corral-lambda"
MANAGED_TAG = "corral:managed"
THROTTLE_CODES = frozenset(
    {"TooManyRequestsException", "ThrottlingException", "Throttling", "RequestLimitExceeded",
     "ConcurrentInvocationLimitExceeded"}
)
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
IAM_OPERATIONS = frozenset({"GetCallerIdentity", "GetRole", "CreateRole", "ListRoleTags", "GetRolePolicy",
                            "PutRolePolicy", "UpdateAssumeRolePolicy"})


@dataclass(frozen=True)
class LambdaConfig:
    """How the function is deployed and reached (the resolved ``--memory``, ``--timeout``, …)."""

    memory: int = 512
    timeout: int = 60
    ephemeral_storage: int = 512
    function_name: str | None = None  # default: function_name_for(job)
    role_arn: str | None = None  # an existing role: corral manages no IAM
    manage_iam: bool = True  # create/update corral's role when no role_arn (False: a backend without IAM)
    region: str | None = None
    endpoint_url: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    runtime: str = field(default_factory=host_runtime)
    architecture: str = "x86_64"
    platforms: tuple[str, ...] | None = None  # the wheels' platform tags (default: for runtime + architecture)
    deploy_bucket: str | None = None
    credentials: tuple[str, str] | None = None  # (key id, secret) instead of boto3's own lookup
    deadline: float | None = None  # time.time() after which throttled invokes are no longer retried
    api_attempts: int = 5  # attempts of a call failing with 5xx or connection errors
    inline_payload_limit: int = INLINE_PAYLOAD_LIMIT
    inline_result_limit: int = INLINE_RESULT_LIMIT

    @property
    def python_version(self) -> str:
        return python_version(self.runtime)

    @property
    def wheel_platforms(self) -> tuple[str, ...]:
        return self.platforms or tuple(platform_tags(self.runtime, self.architecture))

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> LambdaConfig:
        values: dict[str, Any] = {
            "memory": settings.value(MEMORY),
            "timeout": settings.value(TIMEOUT),
            "ephemeral_storage": settings.value(EPHEMERAL_STORAGE),
            "function_name": settings.value(FUNCTION_NAME_OPTION),
            "role_arn": settings.value(ROLE_ARN_OPTION),
            "region": settings.value(REGION_OPTION),
            "endpoint_url": settings.value(LAMBDA_ENDPOINT) or os.environ.get("AWS_ENDPOINT_URL_LAMBDA"),
            "environment": dict(settings.value(ENVIRONMENT) or {}),
            "runtime": settings.value(RUNTIME) or host_runtime(),
            "architecture": settings.value(ARCHITECTURE),
            "deploy_bucket": settings.value(DEPLOY_BUCKET),
            "deadline": time.time() + float(settings.deadline),
        }
        values.update(overrides)
        return cls(**values)


def iam_settle_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("CORRAL_LAMBDA_IAM_SETTLE", IAM_SETTLE_SECONDS)))
    except ValueError:
        return IAM_SETTLE_SECONDS


def function_name_for(ref: Mapping[str, Any]) -> str:
    """``corral-<module>-<class>``, made a valid function name (at most 64 characters)."""
    raw = f"corral-{ref['module']}-{ref['class']}"
    name = _NAME_CHARS.sub("-", raw).strip("-")
    if len(name) > 64:
        digest = hashlib.sha1(raw.encode()).hexdigest()[:8]
        name = name[:55].rstrip("-") + "-" + digest
    return name


def handler_files() -> dict[str, bytes]:
    """The files the package needs besides corral and the job: this handler (with a bare package)."""
    here = Path(__file__).resolve().parent
    return {
        "corral_lambda/__init__.py": b"",
        "corral_lambda/handler.py": (here / "handler.py").read_bytes(),
    }


def _error_code(exc: BaseException | None) -> str | None:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "")
    return None


def _status(exc: BaseException | None) -> int:
    if isinstance(exc, botocore.exceptions.ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 0


def is_throttle(exc: BaseException | None) -> bool:
    return _error_code(exc) in THROTTLE_CODES or _status(exc) == 429


def is_retryable(exc: BaseException) -> bool:
    """Throttles, server errors and failures to connect (the request never ran)."""
    if is_throttle(exc) or _status(exc) >= 500:
        return True
    return isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError))


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        reason = exc.response.get("Reason") or error.get("Reason")
        text = f"{error.get('Code')}: {error.get('Message') or ''}".rstrip(": ")
        return f"{text} ({reason})" if reason else text
    return f"{type(exc).__name__}: {exc}"


class LambdaExecutor(Executor):
    """Runs tasks as invocations of one Lambda function (on AWS, or any endpoint speaking its API)."""

    name = "lambda"

    def __init__(self, max_concurrency: int, config: LambdaConfig, client: Any = None,
                 clients: Mapping[str, Any] | None = None) -> None:
        super().__init__(max_concurrency)
        self.config = config
        self._client = client
        self._clients: dict[str, Any] = dict(clients or {})  # iam, sts, s3 (tests may pass their own)
        self._client_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix=f"corral-{self.name}")
        self.function_name: str | None = config.function_name
        self.package: Package | None = None
        self.deadline = config.deadline if config.deadline is not None else time.time() + DEFAULT_DEADLINE
        #: Where large payloads and results go (the job's working root), once deployed.
        self.refs: str | None = None
        #: What the last ``deploy`` / ``undeploy`` did: "create-role", "update-role", "create",
        #: "update-code", "update-config", "delete", "delete-role" (none: all up to date).
        self.deploy_actions: list[str] = []
        self.uploads = 0  # code uploads (ZipFile or S3) by the last deploy
        self._usage_lock = threading.Lock()
        self._usage = {"invocations": 0, "throttles": 0, "billed_ms": 0.0, "gb_seconds": 0.0,
                       "ephemeral_gb_seconds": 0.0, "unmeasured": 0}

    # --- clients ------------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self.make_client()
            return self._client

    @property
    def region(self) -> str:
        return (self.config.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                or boto3.session.Session().region_name or "us-east-1")

    def make_client(self) -> Any:
        config = self.config
        session = boto3.session.Session()
        credentials: dict[str, str] = {}
        if config.credentials:
            credentials = {"aws_access_key_id": config.credentials[0],
                           "aws_secret_access_key": config.credentials[1]}
        elif config.endpoint_url and session.get_credentials() is None:
            credentials = {"aws_access_key_id": "corral", "aws_secret_access_key": "corral"}  # an emulator
        return session.client(
            "lambda",
            region_name=self.region,
            endpoint_url=config.endpoint_url,
            config=botocore.config.Config(
                retries={"total_max_attempts": 1},  # retried by _call, with corral's policy
                connect_timeout=10,
                read_timeout=config.timeout + 60,
                max_pool_connections=self.max_concurrency + 4,
                tcp_keepalive=True,
            ),
            **credentials,
        )

    def aws(self, service: str) -> Any:
        """A client of another service (iam, sts, s3): credentials and endpoints from the standard chain
        (``AWS_ENDPOINT_URL_IAM`` etc.), botocore's standard retries."""
        with self._client_lock:
            if service not in self._clients:
                self._clients[service] = boto3.session.Session().client(
                    service, region_name=self.region,
                    config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 8}),
                )
            return self._clients[service]

    # --- calls, retried -----------------------------------------------------------------------------
    def _call(self, fn: Callable[..., T], label: str = "", counts: dict[str, int] | None = None,
              **kwargs: Any) -> T:
        """``fn(**kwargs)`` retried as the module says; ``counts`` gets attempts, throttles, errors."""
        counts = counts if counts is not None else {}
        for key in ("attempts", "throttles", "errors"):
            counts.setdefault(key, 0)
        operation = getattr(fn, "__name__", "call")
        backoff = wait_random_exponential(multiplier=0.1, max=MAX_BACKOFF)

        def attempt() -> T:
            counts["attempts"] += 1
            return fn(**kwargs)

        def stop(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            if is_throttle(exc):
                counts["throttles"] += 1
                return time.time() >= self.deadline
            counts["errors"] += 1
            return counts["errors"] >= self.config.api_attempts

        def wait(state: RetryCallState) -> float:
            return max(0.0, min(backoff(state), self.deadline - time.time()))

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            what = "throttled" if is_throttle(exc) else "failed"
            log.info("%s: %s %s (%s); retry %d in %.2f s", label or operation, operation, what, _describe(exc),
                     state.attempt_number, state.next_action.sleep if state.next_action else 0.0)

        retrying = Retrying(retry=retry_if_exception(is_retryable), stop=stop, wait=wait, reraise=True,
                            before_sleep=before_sleep)
        return retrying(attempt)

    # --- deploy -------------------------------------------------------------------------------------
    def check_locations(self, job: JobSource) -> None:
        """Functions on AWS cannot see this machine's files: only URLs (s3://…) make sense there."""
        if self.config.endpoint_url:
            return  # an emulator may mount them
        local = [loc for loc in job.locations if "://" not in loc or loc.startswith("file://")]
        if local:
            raise UsageError(
                f"the {self.name} backend runs tasks on AWS, which cannot read or write the local path "
                f"{local[0]!r}: use s3:// URLs (or --backend docker to run the Lambda code path locally)"
            )

    def build(self, job: JobSource) -> Package:
        return build_package(job, handler_files(), platform=list(self.config.wheel_platforms),
                             python_version=self.config.python_version)

    def check_size(self, package: Package) -> None:
        """Lambda's limits, before anything is uploaded: 250 MB unzipped; 50 MB zipped unless through S3."""
        unzipped = package.unzipped_size
        if unzipped > MAX_UNZIPPED:
            largest = ", ".join(f"{name} {size / 2**20:.1f} MB" for name, size in package.largest(5))
            raise UsageError(
                f"the deployment package is {unzipped / 2**20:.1f} MB unzipped, over Lambda's 250 MB limit "
                f"({MAX_UNZIPPED} bytes); its largest parts: {largest}. Trim the job's requirements"
            )
        if package.size > MAX_DIRECT_UPLOAD and not self.config.deploy_bucket:
            raise UsageError(
                f"the deployment package is {package.size / 2**20:.1f} MB zipped, over Lambda's "
                f"{MAX_DIRECT_UPLOAD // 2**20} MB limit for a direct upload: pass --deploy-bucket BUCKET "
                "to upload it through S3"
            )

    def deploy(self, job: JobSource) -> None:
        self.check_locations(job)
        name = self.function_name = self.config.function_name or function_name_for(job.ref)
        self.refs = f"{job.work.rstrip('/')}/_refs" if job.work else None
        started = time.perf_counter()
        package = self.package = self.build(job)
        self.check_size(package)
        built = time.perf_counter()
        self.deploy_actions = []
        self.uploads = 0
        try:
            role = self.ensure_role(job)
            self.deploy_actions += self.ensure_function(package, job, role)
        except botocore.exceptions.NoCredentialsError:
            raise UsageError("no AWS credentials found (environment, ~/.aws, SSO or an instance role)") from None
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            hint = ""
            if _error_code(exc) in ("AccessDenied", "AccessDeniedException") and getattr(
                    exc, "operation_name", "") in IAM_OPERATIONS:
                hint = (" (corral creates the function's role: allow your identity the IAM actions the README "
                        "lists, or pass --lambda-role-arn to run as an existing role)")
            raise CorralError(f"cannot deploy the function {name}: {_describe(exc)}{hint}") from None
        log.info("%s: package %s (%.1f MB, built in %.2f s); %s in %.2f s", name, package.sha256[:12],
                 package.size / 2**20, built - started, ", ".join(self.deploy_actions) or "function up to date",
                 time.perf_counter() - built)

    def ensure_role(self, job: JobSource) -> str:
        """The role the function runs as: ``--lambda-role-arn``, else corral's own, created or updated
        with the job's least-privilege policy (waiting for IAM when an existing policy changed)."""
        if self.config.role_arn:
            return self.config.role_arn
        if not self.config.manage_iam:
            return EMULATOR_ROLE
        assert self.function_name is not None
        account, partition = iam.caller_identity(self.aws("sts"))
        policy = iam.job_policy(self.function_name, job.inputs, [job.work] if job.work else [], self.region,
                                account, partition)
        try:
            arn, created, changed = iam.ensure_role(self.aws("iam"), self.function_name, policy)
        except iam.RoleNotManaged as exc:
            raise UsageError(str(exc)) from None
        if created:
            self.deploy_actions.append("create-role")
        elif changed:
            self.deploy_actions.append("update-role")
            settle = iam_settle_seconds()
            if settle > 0:
                log.info("waiting %.0f s for IAM to apply the new policy everywhere", settle)
                time.sleep(settle)
        return arn

    def desired_configuration(self, job: JobSource, role: str) -> dict[str, Any]:
        config = self.config
        return {
            "Runtime": config.runtime,
            "Handler": HANDLER,
            "MemorySize": config.memory,
            "Timeout": config.timeout,
            "EphemeralStorage": {"Size": config.ephemeral_storage},
            "Environment": {"Variables": dict(config.environment)},
            "Description": f"corral job {job.ref['module']}:{job.ref['class']}",
            "Role": role,
        }

    def _code(self, package: Package) -> tuple[dict[str, Any], Callable[[], None]]:
        """How to send the code: ``{"ZipFile": …}``, or through S3 over 50 MB (and how to clean that up)."""
        self.uploads += 1
        if package.size <= MAX_DIRECT_UPLOAD:
            return {"ZipFile": package.zip_bytes}, lambda: None
        bucket = self.config.deploy_bucket
        key = f"{DEPLOY_PREFIX}/{self.function_name}/{package.sha256}.zip"
        s3 = self.aws("s3")
        log.info("uploading the %.1f MB package to s3://%s/%s", package.size / 2**20, bucket, key)
        s3.put_object(Bucket=bucket, Key=key, Body=package.zip_bytes)

        def cleanup() -> None:  # Lambda copied the code: the object is no longer needed
            try:
                s3.delete_object(Bucket=bucket, Key=key)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                log.warning("could not delete s3://%s/%s: %s", bucket, key, _describe(exc))

        return {"S3Bucket": bucket, "S3Key": key}, cleanup

    def _get_function(self, name: str) -> dict[str, Any] | None:
        try:
            return self._call(self.client.get_function, FunctionName=name)
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) != "ResourceNotFoundException":
                raise
            return None

    def ensure_function(self, package: Package, job: JobSource, role: str) -> list[str]:
        """Create or update the function so that it runs ``package`` as configured; say what was done."""
        name = self.function_name
        assert name is not None
        desired = self.desired_configuration(job, role)
        architectures = [self.config.architecture]
        found = self._get_function(name)
        if found is None:
            code, cleanup = self._code(package)
            try:
                iam.while_role_propagates(lambda: self._call(
                    self.client.create_function, FunctionName=name, PackageType="Zip", Code=code,
                    Architectures=architectures, Tags={MANAGED_TAG: "true"}, **desired,
                ))
            finally:
                cleanup()
            self._wait("function_active_v2", name)
            return ["create"]
        if (found.get("Tags") or {}).get(MANAGED_TAG) != "true":
            raise UsageError(f"the function {name} exists but was not created by corral (no {MANAGED_TAG} tag): "
                             "corral leaves it alone; choose another --function-name")
        current = found["Configuration"]
        actions = []
        if current.get("State") == "Pending" or current.get("LastUpdateStatus") == "InProgress":
            self._wait("function_updated_v2", name)
        # the architecture is a parameter of UpdateFunctionCode (not of UpdateFunctionConfiguration)
        moved = current.get("Architectures", ["x86_64"]) != architectures
        if current.get("CodeSha256") != package.code_sha256 or moved:
            code, cleanup = self._code(package)
            try:
                self._call(self.client.update_function_code, FunctionName=name, Architectures=architectures,
                           **code)
            finally:
                cleanup()
            self._wait("function_updated_v2", name)
            actions.append("update-code")
        changed = {key: value for key, value in desired.items() if _differs(current, key, value)}
        if changed:
            iam.while_role_propagates(lambda: self._call(
                self.client.update_function_configuration, FunctionName=name, **changed))
            self._wait("function_updated_v2", name)
            actions.append("update-config")
        return actions

    def _wait(self, waiter: str, name: str | None) -> None:
        self.client.get_waiter(waiter).wait(FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 600})

    # --- undeploy -----------------------------------------------------------------------------------
    def undeploy(self, job: JobSource) -> None:
        """Delete the function, then its role and policy if corral created them (tagged); nothing else."""
        name = self.function_name = self.config.function_name or function_name_for(job.ref)
        self.deploy_actions = []
        try:
            found = self._get_function(name)
            roles = [iam.role_name(name)]
            if found is not None:
                if (found.get("Tags") or {}).get(MANAGED_TAG) != "true":
                    raise UsageError(f"the function {name} was not created by corral (no {MANAGED_TAG} tag): "
                                     "left alone")
                in_use = str(found["Configuration"].get("Role") or "").rsplit("/", 1)[-1]
                roles = list(dict.fromkeys([in_use, *roles])) if in_use else roles
                self._call(self.client.delete_function, FunctionName=name)
                self.deploy_actions.append("delete")
                log.info("deleted the function %s", name)
            else:
                log.info("the function %s does not exist", name)
            if self.config.manage_iam and not self.config.role_arn:
                client = self.aws("iam")
                for role in roles:
                    if iam.delete_role(client, role, name):
                        self.deploy_actions.append("delete-role")
        except botocore.exceptions.NoCredentialsError:
            raise UsageError("no AWS credentials found (environment, ~/.aws, SSO or an instance role)") from None
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise CorralError(f"cannot undeploy the function {name}: {_describe(exc)}") from None

    # --- tasks --------------------------------------------------------------------------------------
    def submit(self, payload: dict[str, Any]) -> Future[Outcome]:
        future: Future[Outcome] = Future()

        def run() -> None:
            try:
                outcome = self.invoke(payload)
            except BaseException as exc:  # never lose an attempt: report it
                outcome = Outcome(failure=Failure(INFRASTRUCTURE, f"{type(exc).__name__}: {exc}"))
            future.set_result(outcome)

        self._pool.submit(run)
        return future

    def _event(self, payload: dict[str, Any]) -> tuple[bytes, str | None]:
        """The Invoke body for ``payload`` (and the URL it was stored at, when passed by reference)."""
        extra = {RESULTS_KEY: {"url": self.refs, "limit": self.config.inline_result_limit}} if self.refs else {}
        body = json.dumps({**payload, **extra}, separators=(",", ":")).encode("utf-8")
        if len(body) <= self.config.inline_payload_limit or (not self.refs and len(body) <= MAX_PAYLOAD):
            return body, None
        if not self.refs:
            raise CorralError(f"a payload of {len(body)} bytes is over Lambda's {MAX_PAYLOAD} byte limit, and "
                              "the job has no working folder to pass it through")
        url = f"{self.refs}/payload-{uuid.uuid4().hex}.json"
        get_filesystem(url).write_bytes(url, json.dumps(payload, separators=(",", ":")).encode("utf-8"))
        return json.dumps({PAYLOAD_KEY: url, **extra}, separators=(",", ":")).encode("utf-8"), url

    def _remove(self, url: str | None) -> None:
        if url:
            try:
                get_filesystem(url).remove(url)
            except OSError as exc:
                log.debug("could not remove %s: %s", url, exc)

    def invoke(self, payload: dict[str, Any]) -> Outcome:
        """One synchronous invocation of the function with ``payload``; never raises for API errors."""
        started = time.perf_counter()
        label = f"{payload['task']} attempt {payload.get('attempt')}" if "task" in payload else "invoke"
        counts: dict[str, int] = {}
        body, stored = self._event(payload)
        try:
            response = self._call(self.client.invoke, label=label, counts=counts, FunctionName=self.function_name,
                                  InvocationType="RequestResponse", LogType="Tail", Payload=body)
            data = response["Payload"].read()
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            self._remove(stored)
            self._count(counts, {})
            stats = {"seconds": round(time.perf_counter() - started, 6), "throttles": counts.get("throttles", 0),
                     "invoke_attempts": counts.get("attempts", 1)}
            if is_throttle(exc):
                message = (f"still throttled at the job's deadline (--deadline) after {counts.get('throttles')} "
                           f"throttled invokes: {_describe(exc)}")
                return Outcome(failure=Failure(THROTTLED, message), stats=stats)
            return Outcome(failure=Failure(INFRASTRUCTURE, _describe(exc)), stats=stats)
        self._remove(stored)
        seconds = round(time.perf_counter() - started, 6)
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        tail = response.get("LogResult")
        log_text = base64.b64decode(tail).decode("utf-8", "replace") if tail else ""
        stats = {"seconds": seconds, **invoke_stats(headers, log_text)}
        stats.setdefault("memory_size_mb", self.config.memory)
        stats["throttles"] = counts.get("throttles", 0)
        stats["invoke_attempts"] = counts.get("attempts", 1)
        self._count(counts, stats)
        if not response.get("FunctionError"):
            data = self._fetch_result(data)
        return outcome_from_invoke(data, response.get("FunctionError"), stats, self.config.memory,
                                   self.config.timeout)

    def _fetch_result(self, data: bytes) -> bytes:
        """The result itself when the function returned a reference to it (a large result)."""
        if RESULT_KEY.encode() not in data[:200]:
            return data
        try:
            url = json.loads(data)[RESULT_KEY]
            result = get_filesystem(url).read_bytes(url)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            return json.dumps({"ok": False, "error": {"type": "ResultUnavailable", "message": str(exc)}}).encode()
        self._remove(url)
        return result

    # --- the run's figures --------------------------------------------------------------------------
    def _count(self, counts: Mapping[str, int], stats: Mapping[str, Any]) -> None:
        with self._usage_lock:
            usage = self._usage
            usage["throttles"] += counts.get("throttles", 0)
            if not stats:
                return  # the function never ran: nothing billed
            usage["invocations"] += 1
            billed = stats.get("billed_ms")
            if billed is None:
                usage["unmeasured"] += 1
                return
            memory = stats.get("memory_size_mb") or self.config.memory
            usage["billed_ms"] += billed
            usage["gb_seconds"] += gb_seconds(billed, memory)
            extra = max(0, self.config.ephemeral_storage - 512)
            usage["ephemeral_gb_seconds"] += gb_seconds(billed, extra)

    def sizing(self) -> MemorySizing:
        """Lambda's memory settings and list prices at this run's memory and architecture."""
        return sizing(self.config.architecture, self.config.memory)

    def report(self) -> dict[str, Any]:
        """Invocations, throttles, billed GB-seconds and the estimated cost at Lambda's list prices."""
        with self._usage_lock:
            usage = dict(self._usage)
        if not usage["invocations"] and not usage["throttles"]:
            return {}
        cost = estimate(self.config.architecture, usage["invocations"], usage["gb_seconds"],
                        usage["ephemeral_gb_seconds"])
        summary = (f"{usage['invocations']} invocations, {usage['gb_seconds']:.3f} GB-s billed "
                   f"({self.config.architecture}, {self.config.memory} MB): estimated Lambda cost "
                   f"${cost['estimated_cost_usd']:.6f} at {REGION} list prices of {PRICES_READ}")
        if usage["throttles"]:
            summary += f"; {usage['throttles']} throttled invokes retried"
        return {
            "summary": summary,
            "function": self.function_name,
            "architecture": self.config.architecture,
            "memory_mb": self.config.memory,
            "ephemeral_storage_mb": self.config.ephemeral_storage,
            "invocations": usage["invocations"],
            "throttled_invokes": usage["throttles"],
            "unmeasured_invocations": usage["unmeasured"],
            "billed_ms": usage["billed_ms"],
            "gb_seconds": round(usage["gb_seconds"], 6),
            "ephemeral_gb_seconds": round(usage["ephemeral_gb_seconds"], 6),
            **cost,
        }

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._client is not None and hasattr(self._client, "close"):
            self._client.close()


def _differs(current: Mapping[str, Any], key: str, value: Any) -> bool:
    if key == "Environment":
        return (current.get("Environment") or {}).get("Variables", {}) != value.get("Variables", {})
    if key == "EphemeralStorage":
        return (current.get("EphemeralStorage") or {}).get("Size", 512) != value.get("Size", 512)
    if key == "Description":
        return (current.get(key) or "") != value
    return current.get(key) != value
