"""The ``lambda`` executor: what is AWS Lambda's on top of ``corral.remote.RemoteFunctionExecutor``.

The shared layer builds the package, decides what to create or update, runs the invocations (retries,
throttling until ``--deadline``, payloads by reference, usage and cost) and cancels them. This module
adds Lambda's side: boto3's calls (GetFunction, CreateFunction, UpdateFunctionCode,
UpdateFunctionConfiguration, DeleteFunction, a RequestResponse Invoke with LogType=Tail), the
function's execution role (``corral_lambda.iam``; not with ``--lambda-role-arn``), Lambda's limits
(250 MB unzipped; a zip over 50 MB goes through S3 with ``--deploy-bucket``), its error codes, its
REPORT line (``corral_lambda.results``) and its prices (``corral_lambda.pricing``).

Lambda records code by ``CodeSha256`` (base64 of the zip's sha256), and takes a new architecture with
UpdateFunctionCode only (not UpdateFunctionConfiguration): a changed architecture re-sends the code.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import boto3
import botocore.config
import botocore.exceptions

from corral import THROTTLED, CorralError, JobSource, MemorySizing, Outcome, Package, Settings, UsageError
from corral.remote import (
    FUNCTION_NAME,
    MEMORY,
    RETRY,
    TIMEOUT,
    Answer,
    Limits,
    RemoteConfig,
    RemoteFunctionExecutor,
    Source,
    check_environment,
    check_range,
    flag,
    gb_seconds,
    invalid,
)
from corral_lambda import iam
from corral_lambda.options import ARCHITECTURE, DEPLOY_BUCKET, EPHEMERAL_STORAGE, LAMBDA_ENDPOINT, ROLE_ARN
from corral_lambda.pricing import PRICES_READ, REGION, estimate, sizing
from corral_lambda.results import invoke_stats, outcome_from_invoke
from corral_lambda.runtime import platform_tags

log = logging.getLogger("corral.lambda")

HANDLER = "corral_lambda.handler.handler"
MAX_DIRECT_UPLOAD = 50 * 1024 * 1024  # Lambda's limit for Code.ZipFile
MAX_UNZIPPED = 262_144_000  # Lambda's limit for the unzipped package (250 MB), however it is uploaded
MAX_PAYLOAD = 6 * 1024 * 1024  # Lambda's limit for a synchronous request (and response)
LIMITS = Limits(memory_mb=(128, 10240), timeout_s=(1, 900), max_request=MAX_PAYLOAD, max_response=MAX_PAYLOAD)
#: After the policy of an existing role changed, wait this long before the first invoke (IAM is
#: eventually consistent: a task started at once could be denied what the new policy grants).
#: ``CORRAL_LAMBDA_IAM_SETTLE`` (seconds) overrides it, e.g. 0 against an IAM that applies changes at once.
IAM_SETTLE_SECONDS = 10.0
DEPLOY_PREFIX = "corral-deploy"
MANAGED_TAG = "corral:managed"
THROTTLE_CODES = frozenset(
    {"TooManyRequestsException", "ThrottlingException", "Throttling", "RequestLimitExceeded",
     "ConcurrentInvocationLimitExceeded"}
)
IAM_OPERATIONS = frozenset({"GetCallerIdentity", "GetRole", "CreateRole", "ListRoleTags", "GetRolePolicy",
                            "PutRolePolicy", "UpdateAssumeRolePolicy"})
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Variables Lambda sets itself and refuses in a function's configuration.
RESERVED_ENV = frozenset({
    "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
})
MAX_ENV_BYTES = 4096


@dataclass(frozen=True)
class LambdaConfig(RemoteConfig):
    """How the function is deployed and reached: the shared settings, and Lambda's own."""

    ephemeral_storage: int = 512
    role_arn: str | None = None  # an existing role: corral manages no IAM
    endpoint_url: str | None = None
    architecture: str = "x86_64"
    platforms: tuple[str, ...] | None = None  # the wheels' platform tags (default: for runtime + architecture)
    deploy_bucket: str | None = None

    @property
    def wheel_platforms(self) -> tuple[str, ...]:
        return self.platforms or tuple(platform_tags(self.runtime, self.architecture))

    @classmethod
    def settings_values(cls, settings: Settings) -> dict[str, Any]:
        return {
            **super().settings_values(settings),
            "ephemeral_storage": settings.value(EPHEMERAL_STORAGE) or 512,
            "role_arn": settings.value(ROLE_ARN),
            "endpoint_url": settings.value(LAMBDA_ENDPOINT) or os.environ.get("AWS_ENDPOINT_URL_LAMBDA"),
            "architecture": settings.value(ARCHITECTURE) or "x86_64",
            "deploy_bucket": settings.value(DEPLOY_BUCKET),
        }

    def validate(self, source: Source = flag) -> None:
        check_range(MEMORY, self.memory, *LIMITS.memory_mb, "Lambda", source)
        check_range(TIMEOUT, self.timeout, *LIMITS.timeout_s, "Lambda", source)
        if self.function_name and not _NAME.match(self.function_name):
            raise invalid(FUNCTION_NAME, f"{self.function_name!r} is not a Lambda function name "
                                         "(1-64 of A-Z a-z 0-9 _ -)", source)
        check_environment(self.environment, "Lambda", RESERVED_ENV, max_bytes=MAX_ENV_BYTES, source=source)


def iam_settle_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("CORRAL_LAMBDA_IAM_SETTLE", IAM_SETTLE_SECONDS)))
    except ValueError:
        return IAM_SETTLE_SECONDS


def code_sha256(package: Package) -> str:
    """The package's hash as Lambda reports it (``CodeSha256``: base64 of the sha256 digest)."""
    return base64.b64encode(bytes.fromhex(package.sha256)).decode("ascii")


def handler_files() -> dict[str, bytes]:
    """The files the package needs besides corral and the job: this handler (with a bare package)."""
    here = Path(__file__).resolve().parent
    return {"corral_lambda/__init__.py": b"", "corral_lambda/handler.py": (here / "handler.py").read_bytes()}


def _error_code(exc: BaseException | None) -> str | None:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "")
    return None


def _status(exc: BaseException | None) -> int:
    if isinstance(exc, botocore.exceptions.ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 0


def _environment(config: Mapping[str, Any]) -> dict[str, str]:
    return dict((config.get("Environment") or {}).get("Variables") or {})


class LambdaExecutor(RemoteFunctionExecutor):
    """Runs tasks as invocations of one Lambda function (on AWS, or any endpoint speaking its API)."""

    name = "lambda"
    limits = LIMITS
    platform = "AWS"
    storage_scheme = "s3://"
    cost_name = "Lambda"
    api_errors: ClassVar[tuple[type[BaseException], ...]] = (botocore.exceptions.ClientError,
                                                             botocore.exceptions.BotoCoreError)
    config: LambdaConfig

    def __init__(self, max_concurrency: int, config: LambdaConfig, client: Any = None,
                 clients: Mapping[str, Any] | None = None) -> None:
        super().__init__(max_concurrency, config)
        self._client = client
        self._clients: dict[str, Any] = dict(clients or {})  # iam, sts, s3 (tests may pass their own)
        self._client_lock = threading.Lock()

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

    @property
    def endpoint_url(self) -> str | None:
        return self.config.endpoint_url

    def client_arguments(self) -> dict[str, Any]:
        """Extra arguments of the Lambda client (credentials come from boto3's standard chain)."""
        return {}

    def make_client(self) -> Any:
        return boto3.session.Session().client(
            "lambda",
            region_name=self.region,
            endpoint_url=self.config.endpoint_url,
            config=botocore.config.Config(
                retries={"total_max_attempts": 1},  # retried by call(), with corral's policy
                connect_timeout=10,
                read_timeout=self.config.timeout + 60,
                max_pool_connections=self.max_concurrency + 4,
                tcp_keepalive=True,
            ),
            **self.client_arguments(),
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

    # --- errors -------------------------------------------------------------------------------------
    def error_kind(self, exc: BaseException) -> str | None:
        """Throttles; server errors and failures to connect (the request never ran). A connection lost
        *during* an invocation is not retried (the function may still run): the driver retries the task."""
        if _error_code(exc) in THROTTLE_CODES or _status(exc) == 429:
            return THROTTLED
        if _status(exc) >= 500 or isinstance(exc, (botocore.exceptions.EndpointConnectionError,
                                                   botocore.exceptions.ConnectTimeoutError)):
            return RETRY
        return None

    def describe_error(self, exc: BaseException) -> str:
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            reason = exc.response.get("Reason") or error.get("Reason")
            text = f"{error.get('Code')}: {error.get('Message') or ''}".rstrip(": ")
            return f"{text} ({reason})" if reason else text
        return f"{type(exc).__name__}: {exc}"

    def translate_error(self, exc: BaseException, context: str) -> CorralError:
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return UsageError("no AWS credentials found (environment, ~/.aws, SSO or an instance role)")
        hint = ""
        if _error_code(exc) in ("AccessDenied", "AccessDeniedException") and getattr(
                exc, "operation_name", "") in IAM_OPERATIONS:
            hint = (" (corral creates the function's role: allow your identity the IAM actions the README "
                    "lists, or pass --lambda-role-arn to run as an existing role)")
        return CorralError(f"{context}: {self.describe_error(exc)}{hint}")

    # --- the package ---------------------------------------------------------------------------------
    def handler_files(self) -> Mapping[str, bytes]:
        return handler_files()

    def wheel_platforms(self) -> list[str]:
        return list(self.config.wheel_platforms)

    def side_file_room(self) -> tuple[int, str]:
        """Side files are downloaded to ``/tmp``: the function's ephemeral storage."""
        return self.config.ephemeral_storage, "--ephemeral-storage"

    def check_package(self, package: Package) -> None:
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

    def package_hash(self, package: Package) -> str:
        return code_sha256(package)

    # --- the role ------------------------------------------------------------------------------------
    def ensure_identity(self, job: JobSource) -> str:
        """The role the function runs as: ``--lambda-role-arn``, else corral's own, created or updated
        with the job's least-privilege policy (waiting for IAM when an existing policy changed)."""
        if self.config.role_arn:
            return self.config.role_arn
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

    def remove_identity(self, name: str, found: Any | None) -> list[str]:
        """The role the function ran as and corral's role of that name, if corral created them (tagged)."""
        if self.config.role_arn:
            return []
        roles = [iam.role_name(name)]
        if found is not None:
            in_use = str(found["Configuration"].get("Role") or "").rsplit("/", 1)[-1]
            roles = list(dict.fromkeys([in_use, *roles])) if in_use else roles
        client = self.aws("iam")
        return ["delete-role" for role in roles if iam.delete_role(client, role, name)]

    # --- the function ----------------------------------------------------------------------------------
    def desired_configuration(self, job: JobSource, identity: str | None) -> dict[str, Any]:
        config = self.config
        return {
            "Runtime": config.runtime,
            "Handler": HANDLER,
            "MemorySize": config.memory,
            "Timeout": config.timeout,
            "EphemeralStorage": {"Size": config.ephemeral_storage},
            "Environment": {"Variables": dict(config.environment)},
            "Description": f"corral job {job.ref['module']}:{job.ref['class']}",
            "Role": identity,
            "Architectures": [config.architecture],
        }

    def deployed_configuration(self, found: Any) -> dict[str, Any]:
        current = found["Configuration"]
        return {
            **current,
            "EphemeralStorage": {"Size": (current.get("EphemeralStorage") or {}).get("Size", 512)},
            "Environment": {"Variables": _environment(current)},
            "Description": current.get("Description") or "",
            "Architectures": current.get("Architectures") or ["x86_64"],
        }

    def deployed_hash(self, found: Any) -> str | None:
        return found["Configuration"].get("CodeSha256")

    def is_managed(self, found: Any) -> bool:
        return (found.get("Tags") or {}).get(MANAGED_TAG) == "true"

    def get_function(self, name: str) -> Any | None:
        try:
            found = self.call(self.client.get_function, FunctionName=name)
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) != "ResourceNotFoundException":
                raise
            return None
        current = found["Configuration"]
        if current.get("State") == "Pending" or current.get("LastUpdateStatus") == "InProgress":
            self._wait("function_updated_v2", name)
        return found

    def exists_already(self, exc: BaseException) -> bool:
        return _error_code(exc) == "ResourceConflictException"

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
                log.warning("could not delete s3://%s/%s: %s", bucket, key, self.describe_error(exc))

        return {"S3Bucket": bucket, "S3Key": key}, cleanup

    def create_function(self, name: str, package: Package, desired: dict[str, Any]) -> None:
        code, cleanup = self._code(package)
        try:
            iam.while_role_propagates(lambda: self.call(
                self.client.create_function, FunctionName=name, PackageType="Zip", Code=code,
                Tags={MANAGED_TAG: "true"}, **desired,
            ))
        finally:
            cleanup()
        self._wait("function_active_v2", name)

    def update_function(self, name: str, found: Any, package: Package | None, changes: dict[str, Any]) -> list[str]:
        actions = []
        architectures = changes.pop("Architectures", None)
        if package is not None or architectures:  # AWS takes a new architecture with the code only
            assert self.package is not None
            code, cleanup = self._code(package or self.package)
            try:
                self.call(self.client.update_function_code, FunctionName=name,
                          Architectures=[self.config.architecture], **code)
            finally:
                cleanup()
            self._wait("function_updated_v2", name)
            actions.append("update-code")
        if changes:
            iam.while_role_propagates(lambda: self.call(
                self.client.update_function_configuration, FunctionName=name, **changes))
            self._wait("function_updated_v2", name)
            actions.append("update-config")
        return actions

    def delete_function(self, name: str, found: Any) -> None:
        self.call(self.client.delete_function, FunctionName=name)

    def _wait(self, waiter: str, name: str | None) -> None:
        self.client.get_waiter(waiter).wait(FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 600})

    # --- invocations ---------------------------------------------------------------------------------
    def invoke_raw(self, body: bytes) -> Answer:
        response = self.client.invoke(FunctionName=self.function_name, InvocationType="RequestResponse",
                                      LogType="Tail", Payload=body)
        tail = response.get("LogResult")
        return Answer(
            body=response["Payload"].read(),
            status=int(response.get("StatusCode") or 200),
            headers=response.get("ResponseMetadata", {}).get("HTTPHeaders", {}),
            error=response.get("FunctionError"),
            log=base64.b64decode(tail).decode("utf-8", "replace") if tail else "",
        )

    def answer_stats(self, answer: Answer) -> dict[str, Any]:
        return invoke_stats(answer.headers, answer.log)

    def classify(self, answer: Answer, stats: dict[str, Any]) -> Outcome:
        return outcome_from_invoke(answer.body, answer.error, stats, self.config.memory, self.config.timeout)

    # --- the run's figures -----------------------------------------------------------------------------
    def usage_terms(self, stats: Mapping[str, Any]) -> dict[str, float]:
        extra = max(0, self.config.ephemeral_storage - 512)
        return {"ephemeral_gb_seconds": gb_seconds(stats.get("billed_ms") or 0, extra)}

    def estimate(self, usage: Mapping[str, float]) -> dict[str, Any]:
        return estimate(self.config.architecture, int(usage["invocations"]), usage["gb_seconds"],
                        usage.get("ephemeral_gb_seconds", 0.0))

    def sizing(self) -> MemorySizing:
        """Lambda's memory settings and list prices at this run's memory and architecture."""
        return sizing(self.config.architecture, self.config.memory)

    def summary_detail(self) -> str:
        return f"{self.config.architecture}, {self.config.memory} MB"

    def report_details(self) -> dict[str, Any]:
        return {"architecture": self.config.architecture, "ephemeral_storage_mb": self.config.ephemeral_storage}

    def close(self) -> None:
        super().close()
        if self._client is not None and hasattr(self._client, "close"):
            self._client.close()


__all__ = ["HANDLER", "LIMITS", "PRICES_READ", "REGION", "LambdaConfig", "LambdaExecutor", "code_sha256"]
