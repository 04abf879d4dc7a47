"""The ``lambda`` executor: deploy the job as a Lambda function, run each task as one synchronous Invoke.

``deploy`` builds the package (``corral.build_package``) and brings the function up to date, touching
only what changed: CreateFunction when it is missing, UpdateFunctionCode only when the CodeSha256
differs, UpdateFunctionConfiguration only when a setting differs, then waits until it is ready.
``submit`` invokes it (RequestResponse, LogType=Tail) on a bounded thread pool and turns the answer into
an Outcome with the measurements (billed duration, max memory used, cold start).

Throttling (429) is backpressure: retried here with exponential backoff and full jitter, for as long as
``throttle_give_up`` seconds, and never counted as a failure. Server errors (5xx) and failures to
connect are retried a few times too. A connection lost *during* an invocation is not retried here
(the function may still be running): it comes back as an infrastructure failure, and the driver
retries the task under a new attempt name.
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
    Executor,
    Failure,
    JobSource,
    Outcome,
    Package,
    UsageError,
    build_package,
)
from corral_lambda.results import invoke_stats, outcome_from_invoke

log = logging.getLogger("corral.lambda")
T = TypeVar("T")

HANDLER = "corral_lambda.handler.handler"
DEFAULT_CONCURRENCY = 100
MAX_DIRECT_UPLOAD = 50 * 1024 * 1024  # Lambda's limit for Code.ZipFile
EMULATOR_ROLE = "arn:aws:iam::000000000000:role/corral-lambda"
THROTTLE_CODES = frozenset(
    {"TooManyRequestsException", "ThrottlingException", "Throttling", "RequestLimitExceeded",
     "EC2ThrottledException"}
)
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class LambdaConfig:
    """How the function is deployed and reached (the resolved ``--memory``, ``--timeout``, …)."""

    memory: int = 512
    timeout: int = 60
    function_name: str | None = None  # default: function_name_for(job)
    role_arn: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    runtime: str = "python3.11"
    architecture: str = "x86_64"
    platform: str = "manylinux2014_x86_64"  # the wheels the package gets
    python_version: str = "3.11"
    credentials: tuple[str, str] | None = None  # (key id, secret) instead of boto3's own lookup
    throttle_give_up: float = 900.0  # seconds of continuous throttling before THROTTLED is reported
    api_attempts: int = 5  # attempts of a call failing with 5xx or connection errors

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> LambdaConfig:
        values = {
            "memory": getattr(settings, "memory", 512),
            "timeout": getattr(settings, "timeout", 60),
            "function_name": getattr(settings, "function_name", None),
            "role_arn": getattr(settings, "lambda_role_arn", None),
            "region": getattr(settings, "region", None),
            "endpoint_url": getattr(settings, "lambda_endpoint", None),
        }
        values.update(overrides)
        return cls(**values)


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


def _error_code(exc: BaseException) -> str | None:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "")
    return None


def _status(exc: BaseException) -> int:
    if isinstance(exc, botocore.exceptions.ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 0


def is_throttle(exc: BaseException) -> bool:
    return _error_code(exc) in THROTTLE_CODES or _status(exc) == 429


def is_retryable(exc: BaseException) -> bool:
    """Throttles, server errors and failures to connect (the request never ran)."""
    if is_throttle(exc) or _status(exc) >= 500:
        return True
    return isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError))


class LambdaExecutor(Executor):
    """Runs tasks as invocations of one Lambda function (on AWS, or any endpoint speaking its API)."""

    name = "lambda"

    def __init__(self, max_concurrency: int, config: LambdaConfig, client: Any = None) -> None:
        super().__init__(max_concurrency)
        self.config = config
        self._client = client
        self._client_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix=f"corral-{self.name}")
        self.function_name: str | None = config.function_name
        self.package: Package | None = None
        #: What the last ``deploy`` did: "create", "update-code", "update-config" (none: up to date).
        self.deploy_actions: list[str] = []

    # --- the client ---------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self.make_client()
            return self._client

    def make_client(self) -> Any:
        config = self.config
        session = boto3.session.Session()
        region = (config.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                  or session.region_name or "us-east-1")
        credentials: dict[str, str] = {}
        if config.credentials:
            credentials = {"aws_access_key_id": config.credentials[0],
                           "aws_secret_access_key": config.credentials[1]}
        elif config.endpoint_url and session.get_credentials() is None:
            credentials = {"aws_access_key_id": "corral", "aws_secret_access_key": "corral"}  # an emulator
        return session.client(
            "lambda",
            region_name=region,
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

    def _stop(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None and is_throttle(exc):
            return state.seconds_since_start >= self.config.throttle_give_up
        return state.attempt_number >= self.config.api_attempts

    def _call(self, fn: Callable[..., T], **kwargs: Any) -> tuple[T, int]:
        """``fn(**kwargs)`` retried as the module says; returns the answer and the attempts it took."""
        retrying = Retrying(
            retry=retry_if_exception(is_retryable),
            stop=self._stop,
            wait=wait_random_exponential(multiplier=0.1, max=10),
            reraise=True,
            before_sleep=lambda s: log.debug("retrying %s after %s", getattr(fn, "__name__", fn),
                                             s.outcome.exception() if s.outcome else None),
        )
        answer = retrying(fn, **kwargs)
        return answer, int(retrying.statistics.get("attempt_number", 1))

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
        return build_package(job, handler_files(), platform=self.config.platform,
                             python_version=self.config.python_version)

    def deploy(self, job: JobSource) -> None:
        self.check_locations(job)
        self.function_name = self.config.function_name or function_name_for(job.ref)
        started = time.perf_counter()
        package = self.package = self.build(job)
        built = time.perf_counter()
        if package.size > MAX_DIRECT_UPLOAD:
            raise UsageError(
                f"the deployment package is {package.size / 2**20:.1f} MB, over Lambda's "
                f"{MAX_DIRECT_UPLOAD // 2**20} MB limit for a direct upload: trim the job's requirements"
            )
        self.deploy_actions = self.ensure_function(package, job)
        log.info("%s: package %s (%.1f MB, built in %.2f s); %s in %.2f s", self.function_name,
                 package.sha256[:12], package.size / 2**20, built - started,
                 ", ".join(self.deploy_actions) or "function up to date", time.perf_counter() - built)

    def desired_configuration(self, job: JobSource) -> dict[str, Any]:
        config = self.config
        desired: dict[str, Any] = {
            "Runtime": config.runtime,
            "Handler": HANDLER,
            "MemorySize": config.memory,
            "Timeout": config.timeout,
            "Environment": {"Variables": dict(config.environment)},
            "Description": f"corral job {job.ref['module']}:{job.ref['class']}",
        }
        role = config.role_arn or (EMULATOR_ROLE if config.endpoint_url else None)
        if role:
            desired["Role"] = role
        return desired

    def ensure_function(self, package: Package, job: JobSource) -> list[str]:
        """Create or update the function so that it runs ``package`` as configured; say what was done."""
        name = self.function_name
        desired = self.desired_configuration(job)
        try:
            current = self._call(self.client.get_function, FunctionName=name)[0]["Configuration"]
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) != "ResourceNotFoundException":
                raise
            current = None
        if current is None:
            if "Role" not in desired:
                raise UsageError(f"function {name} does not exist yet: creating it needs --lambda-role-arn")
            self._call(
                self.client.create_function,
                FunctionName=name,
                PackageType="Zip",
                Code={"ZipFile": package.zip_bytes},
                Architectures=[self.config.architecture],
                **desired,
            )
            self._wait("function_active_v2", name)
            return ["create"]
        actions = []
        if current.get("State") == "Pending" or current.get("LastUpdateStatus") == "InProgress":
            self._wait("function_updated_v2", name)
        if current.get("CodeSha256") != package.code_sha256:
            self._call(self.client.update_function_code, FunctionName=name, ZipFile=package.zip_bytes)
            self._wait("function_updated_v2", name)
            actions.append("update-code")
        changed = {key: value for key, value in desired.items() if _differs(current, key, value)}
        if changed:
            self._call(self.client.update_function_configuration, FunctionName=name, **changed)
            self._wait("function_updated_v2", name)
            actions.append("update-config")
        return actions

    def _wait(self, waiter: str, name: str | None) -> None:
        self.client.get_waiter(waiter).wait(FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 600})

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

    def invoke(self, payload: dict[str, Any]) -> Outcome:
        """One synchronous invocation of the function with ``payload``; never raises for API errors."""
        started = time.perf_counter()
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        try:
            response, attempts = self._call(
                self.client.invoke,
                FunctionName=self.function_name,
                InvocationType="RequestResponse",
                LogType="Tail",
                Payload=body,
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            seconds = round(time.perf_counter() - started, 6)
            kind = THROTTLED if is_throttle(exc) else INFRASTRUCTURE
            return Outcome(failure=Failure(kind, f"{type(exc).__name__}: {exc}"), stats={"seconds": seconds})
        data = response["Payload"].read()
        seconds = round(time.perf_counter() - started, 6)
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        tail = response.get("LogResult")
        log_text = base64.b64decode(tail).decode("utf-8", "replace") if tail else ""
        stats = {"seconds": seconds, **invoke_stats(headers, log_text)}
        stats.setdefault("memory_size_mb", self.config.memory)
        if attempts > 1:
            stats["invoke_attempts"] = attempts
        return outcome_from_invoke(data, response.get("FunctionError"), stats, self.config.memory,
                                   self.config.timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._client is not None and hasattr(self._client, "close"):
            self._client.close()


def _differs(current: Mapping[str, Any], key: str, value: Any) -> bool:
    if key == "Environment":
        return (current.get("Environment") or {}).get("Variables", {}) != value.get("Variables", {})
    if key == "Description":
        return (current.get(key) or "") != value
    return current.get(key) != value


