"""The ``gcf`` executor: what is Google Cloud Functions' (2nd gen) on top of ``corral.remote``.

The shared layer builds the package, decides what to create or update, runs the invocations (retries,
throttling until ``--deadline``, payloads by reference, usage and cost) and cancels them. This adds:

- **deploy** with Google's own client (``google.cloud.functions_v2.FunctionServiceClient``, REST
  transport): ``generateUploadUrl``, a PUT of the zip to that URL, then CreateFunction or
  UpdateFunction (with an update mask of what changed), waiting for the long-running operation. The
  package's content hash is kept in the label ``corral-sha256`` (and ``corral-managed=true`` marks the
  function as corral's), so an unchanged package is never uploaded again. The source holds ``main.py``
  (``corral_gcf.main``: a functions-framework HTTP entry point calling ``run_remote``), corral, the job
  and its requirements as manylinux wheels for the runtime's Python (Ubuntu 22.04, glibc 2.35, up to
  python313; Ubuntu 24.04, glibc 2.39, after). One request per instance (concurrency 1), at most
  ``--max-concurrency`` instances, memory from ``--memory`` and the vCPUs Cloud Functions gives that
  memory (``corral_gcf.pricing``).
- **credentials** from Google's standard chain only (``google.auth.default()``: ADC,
  ``GOOGLE_APPLICATION_CREDENTIALS``, the metadata server). Each invocation is an HTTPS POST to the
  function's URL with ``Authorization: Bearer <ID token for that URL>`` (google-auth's ID token
  credentials, refreshed as they expire). Tokens and keys are never logged or stored.
- **identity**: the function runs as a service account corral creates and marks as its own, with read
  on the input prefixes and read/write on the working prefix only (``corral_gcf.iam``);
  ``--gcf-service-account`` runs it as yours instead, and corral then manages no IAM.
- **answers**: classified by ``corral_gcf.answers`` (429 / 503 "no available instance" = throttled;
  500 with ``X-Google-Status: crash`` = the user's error; the memory limit = out of memory; 504/408 =
  timed out; other 5xx = retried, then infrastructure).
- **cost**: ``corral_gcf.pricing`` (vCPU-seconds, GiB-seconds, requests; billed per 100 ms).

``--gcf-endpoint URL`` (or ``CORRAL_GCF_ENDPOINT``) points the same code at another Functions API, such
as corral-emulator; Cloud Storage follows ``STORAGE_EMULATOR_HOST`` as Google's libraries do.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import google.api_core.exceptions as api_exceptions
import google.auth
import google.auth.credentials
import google.auth.exceptions
import requests
from google.cloud import functions_v2
from google.protobuf import field_mask_pb2

from corral import (
    THROTTLED,
    CorralError,
    JobSource,
    MemorySizing,
    Outcome,
    Package,
    Settings,
    UsageError,
    manylinux_platforms,
)
from corral.remote import (
    FUNCTION_NAME,
    MEMORY,
    MEMORY_SHARE,
    RETRY,
    TIMEOUT,
    Answer,
    Limits,
    RemoteConfig,
    RemoteFunctionExecutor,
    Source,
    check_environment,
    check_range,
    emulator_stats,
    flag,
    function_name_for,
    invalid,
)
from corral_gcf import answers, iam
from corral_gcf.options import GCF_ENDPOINT, PROJECT, SERVICE_ACCOUNT
from corral_gcf.pricing import PRICES_READ, estimate, sizing, vcpus_for

log = logging.getLogger("corral.gcf")

ENTRY_POINT = "corral_task"
MAX_REQUEST = 32 * 1024 * 1024  # Cloud Run's limit for an HTTP/1 request (and a response)
MAX_UPLOAD = 100 * 1024 * 1024  # the source archive (generateUploadUrl)
MAX_UNZIPPED = 500 * 1024 * 1024
LIMITS = Limits(memory_mb=(128, 32768), timeout_s=(1, 3600), max_request=MAX_REQUEST, max_response=MAX_REQUEST)
DEFAULT_REGION = "us-central1"
DEPLOY_TIMEOUT = 15 * 60.0  # seconds a create or update may take (GCF builds the source with Cloud Build)
#: How long CreateFunction is retried while a new service account is not visible to Cloud Functions yet.
ACCOUNT_PROPAGATION_TIMEOUT = 120.0
#: After corral changed a bucket's access, wait this long before the first invoke (IAM takes effect in
#: seconds to minutes). ``CORRAL_GCF_IAM_SETTLE`` (seconds) overrides it.
IAM_SETTLE_SECONDS = 10.0
MANAGED_LABEL = "corral-managed"
HASH_LABEL = "corral-sha256"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
#: Variables Cloud Functions / Cloud Run set themselves (and refuse), and corral's own.
RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION", "FUNCTION_TARGET",
                          "FUNCTION_SIGNATURE_TYPE", "CORRAL_MEMORY_MB"})
#: Variables Cloud Functions adds to every function (not corral's to compare).
PLATFORM_ENV = frozenset({"LOG_EXECUTION_ID"})
_NAME = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_QUANTITY = re.compile(r"^\s*([\d.]+)\s*([KMGT]i?|[kmgt])?\s*$")
_UNITS = {None: 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
          "Ti": 2**40}


def runtime_id(runtime: str) -> str:
    """``python3.12`` -> Cloud Functions' ``python312``."""
    return runtime.replace(".", "")


def glibc_minor(runtime: str) -> int:
    """The runtime's OS glibc: Ubuntu 22.04 (2.35) up to python313, Ubuntu 24.04 (2.39) after."""
    minor = int(runtime.split(".")[1])
    return 35 if minor <= 13 else 39


def memory_quantity(memory_mb: int) -> str:
    """``--memory`` (MiB) as Cloud Functions' ``availableMemory``: ``512Mi``, ``2Gi``."""
    return f"{memory_mb // 1024}Gi" if memory_mb % 1024 == 0 else f"{memory_mb}Mi"


def quantity_mb(text: str) -> float | None:
    """A Kubernetes quantity (``512M``, ``512Mi``, ``1Gi``) in MiB; None if it is not one."""
    match = _QUANTITY.match(text or "")
    if not match:
        return None
    return float(match.group(1)) * _UNITS[match.group(2)] / 2**20


def cpu_text(vcpus: float) -> str:
    return f"{vcpus:g}"


@dataclass(frozen=True)
class GcfConfig(RemoteConfig):
    """How the function is deployed and reached: the shared settings, and Cloud Functions' own."""

    project: str | None = None
    endpoint_url: str | None = None
    service_account: str | None = None  # an existing service account: corral manages no IAM

    @classmethod
    def settings_values(cls, settings: Settings) -> dict[str, Any]:
        return {
            **super().settings_values(settings),
            "project": settings.value(PROJECT),
            "endpoint_url": settings.value(GCF_ENDPOINT),
            "service_account": settings.value(SERVICE_ACCOUNT),
        }

    @property
    def vcpus(self) -> float:
        return vcpus_for(self.memory)

    def validate(self, source: Source = flag) -> None:
        check_range(MEMORY, self.memory, *LIMITS.memory_mb, "Cloud Functions", source)
        check_range(TIMEOUT, self.timeout, *LIMITS.timeout_s, "Cloud Functions", source)
        if self.function_name and not _NAME.match(self.function_name):
            raise invalid(FUNCTION_NAME, f"{self.function_name!r} is not a Cloud Functions name (1-63 of a-z 0-9 -, "
                                         "starting with a letter, not ending with -)", source)
        check_environment(self.environment, "Cloud Functions", RESERVED_ENV, ("X_GOOGLE_",), source=source)


def handler_files() -> dict[str, bytes]:
    """The function's entry point, ``main.py`` at the source's root (GCF's default source file)."""
    here = Path(__file__).resolve().parent
    return {
        "main.py": (here / "main.py").read_bytes(),
        # the packages are in the source already (unpacked wheels): nothing for the build to install
        "requirements.txt": b"# corral ships its packages in this source; functions-framework is GCF's own\n",
    }


def iam_settle_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("CORRAL_GCF_IAM_SETTLE", IAM_SETTLE_SECONDS)))
    except ValueError:
        return IAM_SETTLE_SECONDS


class InvokeError(Exception):
    """An HTTP answer that is not the function's: ``kind`` THROTTLED, RETRY (a server error) or None."""

    def __init__(self, status: int, text: str, kind: str | None) -> None:
        super().__init__(f"HTTP {status}: {text}" if text else f"HTTP {status}")
        self.status = status
        self.kind = kind


class UserIdToken(google.auth.credentials.Credentials):
    """The ID token of user credentials (``gcloud auth application-default login``), which Cloud Run
    accepts for a user allowed to invoke the function, as ``gcloud auth print-identity-token``'s."""

    def __init__(self, user: Any) -> None:
        super().__init__()
        self._user = user

    def refresh(self, request: Any) -> None:
        self._user.refresh(request)
        token = getattr(self._user, "id_token", None)
        if not token:
            raise google.auth.exceptions.RefreshError("these user credentials carry no ID token")
        self.token = token
        self.expiry = self._user.expiry


#: What a --gcf-endpoint run without --gcf-service-account is told when Google's IAM API fails it.
ENDPOINT_WITHOUT_IAM = (
    f"corral manages the function's service account with Google's IAM API ({iam.IAM_URL}), which --gcf-endpoint "
    "does not change: pass --gcf-service-account EMAIL to run the function as an existing account (corral then "
    "manages no IAM)"
)


class GcfExecutor(RemoteFunctionExecutor):
    """Runs tasks as HTTPS invocations of one Cloud Function (on Google, or any endpoint speaking its API)."""

    name = "gcf"
    limits = LIMITS
    platform = "Google Cloud"
    storage_scheme = "gs://"
    local_flags = "--backend docker --platform gcf"
    cost_name = "Cloud Functions"
    api_errors: ClassVar[tuple[type[BaseException], ...]] = (
        api_exceptions.GoogleAPIError, google.auth.exceptions.GoogleAuthError, requests.RequestException,
        iam.IamError)
    config: GcfConfig

    def __init__(self, max_concurrency: int, config: GcfConfig, client: Any = None, iam_api: Any = None) -> None:
        super().__init__(max_concurrency, config)
        self._client = client
        self._iam = iam_api
        self._credentials: tuple[Any, str | None] | None = None
        self._session: Any = None
        self._lock = threading.Lock()
        #: The function's URL (``serviceConfig.uri``), once deployed.
        self.uri: str | None = None

    # --- credentials and clients ------------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str | None:
        return self.config.endpoint_url

    def credentials(self) -> tuple[Any, str | None]:
        """``(credentials, their project)`` from Google's standard chain (``google.auth.default()``)."""
        with self._lock:
            if self._credentials is None:
                try:
                    self._credentials = google.auth.default(scopes=SCOPES)
                except google.auth.exceptions.DefaultCredentialsError:
                    raise UsageError(
                        "no Google credentials found (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth "
                        "application-default login`, or the metadata server)") from None
            return self._credentials

    @property
    def project(self) -> str:
        project = (self.config.project or os.environ.get("GOOGLE_CLOUD_PROJECT")
                   or os.environ.get("CLOUDSDK_CORE_PROJECT") or self.credentials()[1])
        if not project:
            raise UsageError("no Google Cloud project: pass --project (or set GOOGLE_CLOUD_PROJECT)")
        return str(project)

    @property
    def region(self) -> str:
        return self.config.region or os.environ.get("CLOUDSDK_FUNCTIONS_REGION") or DEFAULT_REGION

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    def path(self, name: str) -> str:
        return f"{self.parent}/functions/{name}"

    @property
    def client(self) -> Any:
        if self._client is None:
            options = {"api_endpoint": self.config.endpoint_url} if self.config.endpoint_url else None
            self._client = functions_v2.FunctionServiceClient(
                transport="rest", credentials=self.credentials()[0], client_options=options)
        return self._client

    @property
    def iam_api(self) -> iam.IamApi:
        if self._iam is None:
            from google.auth.transport.requests import AuthorizedSession

            self._iam = iam.IamApi(AuthorizedSession(self.credentials()[0]))
        return self._iam

    def id_token_credentials(self, audience: str) -> Any:
        """Credentials whose token is an ID token for ``audience`` (the function's URL), from the
        standard chain: a service account key, the metadata server, impersonation, or a user's login."""
        import google.auth.transport.requests
        import google.oauth2.id_token

        try:
            return google.oauth2.id_token.fetch_id_token_credentials(
                audience, request=google.auth.transport.requests.Request())
        except google.auth.exceptions.DefaultCredentialsError:
            pass
        credentials = self.credentials()[0]
        from google.auth import impersonated_credentials
        from google.oauth2 import credentials as user_credentials

        if isinstance(credentials, impersonated_credentials.Credentials):
            return impersonated_credentials.IDTokenCredentials(credentials, target_audience=audience,
                                                               include_email=True)
        if isinstance(credentials, user_credentials.Credentials):
            return UserIdToken(credentials)
        raise UsageError(f"cannot get an ID token to invoke {audience} with these credentials "
                         f"({type(credentials).__name__}): use a service account key, the metadata server, "
                         "impersonation or `gcloud auth application-default login`")

    @property
    def session(self) -> Any:
        """An HTTP session that sends the function's ID token (refreshed before it expires)."""
        with self._lock:
            if self._session is None:
                from google.auth.transport.requests import AuthorizedSession

                assert self.uri is not None
                session = AuthorizedSession(self.id_token_credentials(self.uri))
                adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=self.max_concurrency + 4,
                                                        max_retries=0)
                session.mount("https://", adapter)
                session.mount("http://", adapter)
                self._session = session
            return self._session

    # --- errors ----------------------------------------------------------------------------------------
    def error_kind(self, exc: BaseException) -> str | None:
        """Throttles (429, 503 "no available instance"); server errors and failures to connect (the
        request never reached the function). A connection lost during an invocation is not retried here
        (the function may still run): the driver retries the task under a new attempt name."""
        if isinstance(exc, InvokeError):
            return exc.kind
        if isinstance(exc, (api_exceptions.TooManyRequests, api_exceptions.ResourceExhausted)):
            return THROTTLED
        if isinstance(exc, (api_exceptions.ServerError,)):
            return RETRY
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return RETRY
        if isinstance(exc, requests.exceptions.ConnectionError) and "NewConnectionError" in repr(exc.args):
            return RETRY
        return None

    def describe_error(self, exc: BaseException) -> str:
        if isinstance(exc, api_exceptions.GoogleAPICallError):
            return f"{exc.code.name if exc.code else 'error'}: {exc.message}"
        return f"{type(exc).__name__}: {exc}"

    def translate_error(self, exc: BaseException, context: str) -> CorralError:
        if isinstance(exc, api_exceptions.PermissionDenied | api_exceptions.Forbidden | iam.IamError):
            hint = (" (corral creates the function's service account and grants it access to the job's buckets: "
                    "allow your identity what the README lists, or pass --gcf-service-account to run as yours)")
            return CorralError(f"{context}: {self.describe_error(exc)}{hint}")
        return CorralError(f"{context}: {self.describe_error(exc)}")

    # --- the package -------------------------------------------------------------------------------------
    def default_function_name(self, job: JobSource) -> str:
        return function_name_for(job.ref, max_length=63, lowercase=True)

    def handler_files(self) -> Mapping[str, bytes]:
        return handler_files()

    def wheel_platforms(self) -> list[str]:
        return manylinux_platforms("x86_64", glibc_minor(self.config.runtime))

    def build(self, job: JobSource) -> Package:
        if job.ref["module"] == "main":
            raise UsageError("a job module named main.py cannot run on Cloud Functions, whose entry point is "
                             "main.py: rename the job's file")
        return super().build(job)

    def side_file_room(self) -> tuple[int, str, str]:
        """Cloud Functions keep ``/tmp`` in memory: the side files a function downloads take memory, and
        must fit in what the task's memory budget (``MEMORY_SHARE`` of ``--memory``) leaves."""
        room = f"memory left beside the task's {MEMORY_SHARE:.0%}, as Cloud Functions keep /tmp in memory"
        return int(self.config.memory * (1 - MEMORY_SHARE)), "--memory", room

    def check_package(self, package: Package) -> None:
        """Cloud Functions' limits, before anything is uploaded: 100 MB zipped, 500 MB unzipped."""
        unzipped = package.unzipped_size
        if package.size > MAX_UPLOAD or unzipped > MAX_UNZIPPED:
            largest = ", ".join(f"{name} {size / 2**20:.1f} MB" for name, size in package.largest(5))
            raise UsageError(
                f"the deployment package is {package.size / 2**20:.1f} MB zipped, {unzipped / 2**20:.1f} MB "
                f"unzipped, over Cloud Functions' limits (100 MB zipped, 500 MB unzipped); its largest parts: "
                f"{largest}. Trim the job's requirements")

    def package_hash(self, package: Package) -> str:
        return package.sha256[:63]  # a label value holds at most 63 characters

    # --- the service account -------------------------------------------------------------------------------
    def ensure_identity(self, job: JobSource) -> str | None:
        if self.config.service_account:
            return self.config.service_account
        assert self.function_name is not None
        email = iam.email_of(iam.account_id(self.function_name), self.project)
        bindings = iam.job_bindings(f"serviceAccount:{email}", self.function_name, job.inputs,
                                    [job.work] if job.work else [])
        try:
            email, actions = iam.ensure_account(self.iam_api, self.project, self.function_name, bindings)
        except iam.AccountNotManaged as exc:
            raise UsageError(str(exc)) from None
        except (iam.IamError, requests.exceptions.RequestException) as exc:
            if not self.config.endpoint_url:
                raise  # Google's own endpoint: translate_error says which rights are missing
            # another Functions API (corral-emulator): IAM is still Google's, which it may not reach
            reason = (f"cannot connect to {requests.utils.urlparse(iam.IAM_URL).hostname}"
                      if isinstance(exc, requests.exceptions.ConnectionError) else self.describe_error(exc))
            raise UsageError(f"cannot create the service account of the function {self.function_name}: {reason}; "
                             f"{ENDPOINT_WITHOUT_IAM}") from None
        self.deploy_actions += actions
        if "update-access" in actions:
            settle = iam_settle_seconds()
            if settle > 0:
                log.info("waiting %.0f s for IAM to apply the new access everywhere", settle)
                time.sleep(settle)
        return email

    def remove_identity(self, name: str, found: Any | None) -> list[str]:
        if self.config.service_account:
            return []
        return iam.remove_account(self.iam_api, self.project, name)

    # --- the function ------------------------------------------------------------------------------------
    def desired_configuration(self, job: JobSource, identity: str | None) -> dict[str, Any]:
        config = self.config
        desired: dict[str, Any] = {
            "runtime": runtime_id(config.runtime),
            "entry_point": ENTRY_POINT,
            "memory_mb": float(config.memory),
            "cpu": config.vcpus,
            "timeout": config.timeout,
            "max_instances": self.max_concurrency,
            "concurrency": 1,
            "environment": {**config.environment, "CORRAL_MEMORY_MB": str(config.memory)},
            "description": f"corral job {job.ref['module']}:{job.ref['class']}",
        }
        if identity:
            desired["service_account"] = identity
        return desired

    def deployed_configuration(self, found: Any) -> dict[str, Any]:
        build, service = found.build_config, found.service_config
        try:
            cpu: float | None = float(service.available_cpu)
        except ValueError:
            cpu = None
        return {
            "runtime": build.runtime,
            "entry_point": build.entry_point,
            "memory_mb": quantity_mb(service.available_memory),
            "cpu": cpu,
            "timeout": service.timeout_seconds,
            "max_instances": service.max_instance_count,
            "concurrency": service.max_instance_request_concurrency,
            "environment": {k: v for k, v in service.environment_variables.items() if k not in PLATFORM_ENV},
            "description": found.description,
            "service_account": service.service_account_email,
        }

    def deployed_hash(self, found: Any) -> str | None:
        return found.labels.get(HASH_LABEL)

    def is_managed(self, found: Any) -> bool:
        return found.labels.get(MANAGED_LABEL) == "true"

    def get_function(self, name: str) -> Any | None:
        """The function, once no deploy of it is running (another run's may be)."""
        deadline = time.monotonic() + DEPLOY_TIMEOUT
        while True:
            try:
                found = self.client.get_function(name=self.path(name))
            except api_exceptions.NotFound:
                return None
            if found.state != functions_v2.Function.State.DEPLOYING or time.monotonic() > deadline:
                return found
            time.sleep(1.0)

    def exists_already(self, exc: BaseException) -> bool:
        return isinstance(exc, api_exceptions.AlreadyExists) or (  # the REST client raises 409 as Conflict
            isinstance(exc, api_exceptions.Conflict) and "already exists" in str(exc))

    def _upload(self, package: Package) -> Any:
        """PUT the zip to a fresh upload URL (no credentials: the signed URL is the permission)."""
        upload = self.client.generate_upload_url(request={"parent": self.parent})
        self.log.info("uploading the %.1f MB package", package.size / 2**20)
        response = requests.put(upload.upload_url, data=package.zip_bytes, timeout=600,
                                headers={"Content-Type": "application/zip"})
        if response.status_code >= 300:
            raise CorralError(f"cannot upload the package (HTTP {response.status_code}): {response.text[:500]}")
        self.uploads += 1
        return upload.storage_source

    def _function(self, name: str, desired: Mapping[str, Any], source: Any = None) -> Any:
        build = functions_v2.BuildConfig(runtime=desired["runtime"], entry_point=desired["entry_point"])
        if source is not None:
            build.source = functions_v2.Source(storage_source=source)
        service = functions_v2.ServiceConfig(
            available_memory=memory_quantity(int(desired["memory_mb"])),
            available_cpu=cpu_text(desired["cpu"]),
            timeout_seconds=desired["timeout"],
            max_instance_count=desired["max_instances"],
            max_instance_request_concurrency=desired["concurrency"],
            environment_variables=dict(desired["environment"]),
            service_account_email=desired.get("service_account") or "",
        )
        labels = {MANAGED_LABEL: "true"}
        if self.package is not None:
            labels[HASH_LABEL] = self.package_hash(self.package)
        return functions_v2.Function(name=self.path(name), description=desired["description"], build_config=build,
                                     service_config=service, labels=labels,
                                     environment=functions_v2.Environment.GEN_2)

    def _wait(self, operation: Any, what: str) -> Any:
        try:
            return operation.result(timeout=DEPLOY_TIMEOUT)
        except api_exceptions.GoogleAPICallError as exc:
            raise CorralError(f"{what}: {self.describe_error(exc)}") from None

    def create_function(self, name: str, package: Package, desired: dict[str, Any]) -> None:
        from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

        function = self._function(name, desired, self._upload(package))

        def account_not_ready(exc: BaseException) -> bool:  # a service account made seconds ago
            account = desired.get("service_account")
            return bool(account) and isinstance(exc, api_exceptions.GoogleAPICallError) and account in str(exc)

        retrying = Retrying(retry=retry_if_exception(account_not_ready), reraise=True,
                            stop=stop_after_delay(ACCOUNT_PROPAGATION_TIMEOUT),
                            wait=wait_exponential(multiplier=0.5, max=8))
        operation = retrying(lambda: self.client.create_function(parent=self.parent, function=function,
                                                                 function_id=name))
        self._wait(operation, f"cannot create the function {name}")

    #: The update mask's field of each setting of ``desired_configuration``.
    MASK: ClassVar[dict[str, tuple[str, ...]]] = {
        "runtime": ("build_config.runtime",), "entry_point": ("build_config.entry_point",),
        "memory_mb": ("service_config.available_memory", "service_config.available_cpu"),
        "cpu": ("service_config.available_cpu",), "timeout": ("service_config.timeout_seconds",),
        "max_instances": ("service_config.max_instance_count",),
        "concurrency": ("service_config.max_instance_request_concurrency",),
        "environment": ("service_config.environment_variables",), "description": ("description",),
        "service_account": ("service_config.service_account_email",),
    }

    def update_function(self, name: str, found: Any, package: Package | None, changes: dict[str, Any]) -> list[str]:
        desired = {**self.deployed_configuration(found), **changes}
        source = self._upload(package) if package is not None else None
        paths = ["build_config.source", "labels"] if package is not None else []
        for key in changes:
            paths += [path for path in self.MASK[key] if path not in paths]
        function = self._function(name, desired, source)
        operation = self.client.update_function(function=function, update_mask=field_mask_pb2.FieldMask(paths=paths))
        self._wait(operation, f"cannot update the function {name}")
        return (["update-code"] if package is not None else []) + (["update-config"] if changes else [])

    def delete_function(self, name: str, found: Any) -> None:
        self._wait(self.client.delete_function(name=self.path(name)), f"cannot delete the function {name}")

    def deploy(self, job: JobSource) -> None:
        super().deploy(job)
        assert self.function_name is not None
        with self._translated(f"cannot deploy the function {self.function_name}"):
            found = self.get_function(self.function_name)
        if found is None or found.state != functions_v2.Function.State.ACTIVE or not found.service_config.uri:
            state = found.state.name if found is not None else "gone"
            messages = "; ".join(m.message for m in found.state_messages) if found is not None else ""
            detail = f": {messages}" if messages else ""
            raise CorralError(f"the function {self.function_name} is not ready ({state}){detail}")
        if self.uri != found.service_config.uri:
            with self._lock:
                self.uri, self._session = found.service_config.uri, None

    # --- invocations -------------------------------------------------------------------------------------
    def invoke_raw(self, body: bytes) -> Answer:
        assert self.uri is not None, "deploy first"
        response = self.session.post(self.uri, data=body, headers={"Content-Type": "application/json"},
                                     timeout=(10, self.config.timeout + 60))
        status, content, headers = response.status_code, response.content, dict(response.headers)
        if answers.is_answer(status, headers, content):
            return Answer(body=content, status=status, headers=headers)
        text = content[:500].decode("utf-8", "replace").strip()
        if answers.is_throttle(status, content):
            raise InvokeError(status, text, THROTTLED)
        raise InvokeError(status, text, RETRY if status >= 500 else None)

    def answer_stats(self, answer: Answer) -> dict[str, Any]:
        return emulator_stats(answer.headers)

    def classify(self, answer: Answer, stats: dict[str, Any]) -> Outcome:
        return answers.outcome_from_answer(answer.status, answer.headers, answer.body, stats, self.config.memory,
                                           self.config.timeout)

    # --- the run's figures ---------------------------------------------------------------------------------
    def usage_terms(self, stats: Mapping[str, Any]) -> dict[str, float]:
        return {"vcpu_seconds": (stats.get("billed_ms") or 0) / 1000 * self.config.vcpus}

    def estimate(self, usage: Mapping[str, float]) -> dict[str, Any]:
        return estimate(int(usage["invocations"]), usage["gb_seconds"], usage.get("vcpu_seconds", 0.0))

    def sizing(self) -> MemorySizing:
        return sizing(self.config.memory)

    def summary_detail(self) -> str:
        return f"{cpu_text(self.config.vcpus)} vCPU, {self.config.memory} MB"

    def report_details(self) -> dict[str, Any]:
        return {"vcpus": self.config.vcpus, "region": self.region if self.config.region else DEFAULT_REGION,
                "prices_read": PRICES_READ}

    def close(self) -> None:
        super().close()
        if self._session is not None:
            self._session.close()


__all__ = ["ENTRY_POINT", "LIMITS", "GcfConfig", "GcfExecutor", "memory_quantity", "runtime_id"]
