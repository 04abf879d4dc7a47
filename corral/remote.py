"""Remote functions: what every serverless backend shares (AWS Lambda, Google Cloud Functions, and the
local emulator behind ``--backend docker``), written once.

A backend subclasses ``RemoteFunctionExecutor`` and supplies only its platform's own part: the API calls
that get, create, update and delete a function (``get_function``, ``create_function``,
``update_function``, ``delete_function``), one invocation (``invoke_raw``), how an API error and an
answer are classified (``error_kind``, ``classify``), its ``limits`` and its prices (``estimate``).
Everything else lives here:

- **deploy** (template): build the package for the function's runtime (``corral.build_package``, Linux
  wheels, and the job's small side files), check it, make sure of the identity the function runs as,
  then create the function when it is missing, or update only what changed: the code when its content
  hash differs, the configuration when a setting differs; nothing at all when both match. A function
  corral did not create is left alone. Larger side files must fit the function's ``/tmp``
  (``side_file_room``), checked before anything else, and are uploaded to the working folder once per
  content hash (``corral.sidefiles``); the function downloads each once per warm instance.
- **invocations**: one synchronous call per task attempt on a pool of ``max_concurrency`` threads; the
  futures never raise. A payload larger than ``config.inline_payload_limit`` goes by reference through
  the job's working folder, and so does a large result (``run_remote`` writes it, the executor reads it
  back and removes it), far below every platform's request limits.
- **retries** of the call itself (tenacity; exponential backoff with full jitter, capped at
  ``MAX_BACKOFF``): throttling is backpressure, retried without limit until the job's ``--deadline``,
  never a failure before it; server errors and failures to connect are retried ``config.api_attempts``
  times, then the attempt fails as ``infrastructure``. Each retry is logged (``-v``).
- **usage**: invocations, throttles, billed milliseconds and GB-seconds, and the end-of-run summary
  line with the platform's estimated cost (its ``estimate`` supplies the price table and formula).
- **cancel** / **cancel_all**: an abandoned attempt's future resolves at once as ``CANCELLED``; its
  call is given up (retries stop; a call already running on the platform cannot be recalled, and its
  answer is discarded). The pool's threads are daemons, so an abandoned call never holds up exit.

``run_remote(event, ...)`` is the function side: every platform's handler calls it (Lambda's
``handler``, Cloud Functions' ``main.py``). It reads a payload passed by reference, caps the task's
memory budget to the function's size, runs ``corral.run_task`` (which reports the task's peak memory,
the resident memory after it and ``worker``, an id of this warm instance), adds its own duration and
how many tasks this instance has run (its first is a cold start), and writes a large result to the
working folder.

The options shared by remote backends (``MEMORY``, ``TIMEOUT``, ``ENVIRONMENT``, ``REGION``,
``RUNTIME``, ``FUNCTION_NAME``) are defined here; each backend returns these same objects from its
``corral_options`` (an Option returned by several plugins is one setting) and checks its platform's
own ranges with ``check_range`` / ``check_environment``.

No cloud SDK is imported here, and nothing heavy: the function side imports this module on every cold
start. tenacity loads on the first retried call, on the driver's side only.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
import uuid
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from corral.errors import CorralError, UsageError
from corral.executor import CANCELLED, INFRASTRUCTURE, THROTTLED, Executor, Failure, JobSource, Outcome
from corral.options import Option
from corral.remote_options import (  # re-exported: defined apart, for the backends' plugin modules
    ENVIRONMENT,
    FUNCTION_NAME,
    MEMORY,
    OPTIONS,
    REGION,
    RUNTIME,
    TIMEOUT,
    host_runtime,
    parse_endpoint,
    parse_runtime,
    parse_text,
    python_version,
)
from corral.settings import DEFAULT_DEADLINE, Settings
from corral.sidefiles import check_room
from corral.sidefiles import upload as upload_side_files

log = logging.getLogger("corral.remote")
T = TypeVar("T")
C = TypeVar("C", bound="RemoteConfig")
MiB = 1 << 20

#: Payloads larger than this (JSON bytes) go by reference through the working folder.
INLINE_PAYLOAD_LIMIT = 256 * 1024
#: Results larger than this come back by reference (the function writes them to the working folder).
INLINE_RESULT_LIMIT = 1 * MiB
#: Invocations at once when ``--max-concurrency`` is not given.
DEFAULT_CONCURRENCY = 100
#: Seconds: the cap of one wait between retries of a call.
MAX_BACKOFF = 10.0
#: Share of the function's memory a task may buffer before spilling (the rest: Python, the job, I/O).
MEMORY_SHARE = 0.4
SPILL_DIR = "/tmp/corral-spill"
#: Keys the executor adds to an event, and the key of a result passed by reference.
PAYLOAD_KEY = "_corral_payload"
RESULTS_KEY = "_corral_results"
RESULT_KEY = "_corral_result"
#: ``error_kind`` answers: retry as backpressure (until the deadline), or as a server error (a few times).
RETRY = "retry"
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")

#: Where a setting came from, for messages (``Settings.source``): ``--memory``, ``CORRAL_MEMORY``…
Source = Callable[[Option[Any]], str]


def flag(option: Option[Any]) -> str:
    return f"--{option.name}"


def invalid(option: Option[Any], message: str, source: Source = flag) -> UsageError:
    """The usage error of a setting a platform refuses: ``invalid value for --memory: ...`` (or for
    ``CORRAL_MEMORY``, ``memory in corral.toml``: wherever the value came from)."""
    where = source(option)
    return UsageError(f"invalid value for {where if where != 'default' else flag(option)}: {message}")


def check_range(option: Option[Any], value: int, low: int, high: int, platform: str, source: Source = flag) -> int:
    """``value`` if ``low <= value <= high``, else a UsageError naming the option and the platform."""
    if not low <= value <= high:
        raise invalid(option, f"{value} is out of range for {platform} (must be from {low} to {high})", source)
    return value


def check_environment(env: Mapping[str, str], platform: str, reserved: frozenset[str] = frozenset(),
                      reserved_prefixes: tuple[str, ...] = (), max_bytes: int | None = None,
                      source: Source = flag) -> dict[str, str]:
    """``env`` if ``platform`` accepts it: no name it sets itself, within its size limit."""
    for key in env:
        if key in reserved or key.startswith(reserved_prefixes):
            raise invalid(ENVIRONMENT, f"{key} is set by {platform} itself and cannot be configured", source)
    if max_bytes is not None and sum(len(k) + len(v) for k, v in env.items()) > max_bytes:
        raise invalid(ENVIRONMENT, f"the variables exceed {platform}'s {max_bytes // 1024} KB limit", source)
    return dict(env)


def function_name_for(ref: Mapping[str, Any], max_length: int = 64, lowercase: bool = False) -> str:
    """``corral-<module>-<class>`` made a valid function name of at most ``max_length`` characters
    (a longer one keeps a hash of the whole, so that two jobs never share a function)."""
    import hashlib

    raw = f"corral-{ref['module']}-{ref['class']}"
    name = _NAME_CHARS.sub("-", raw.replace("_", "-") if lowercase else raw).strip("-")
    if lowercase:
        name = name.lower()
    if len(name) > max_length:
        digest = hashlib.sha1(raw.encode()).hexdigest()[:8]
        name = name[: max_length - 9].rstrip("-") + "-" + digest
    return name


def object_prefix(url: str, schemes: tuple[str, ...]) -> tuple[str, str, str] | None:
    """``(bucket, prefix, what)`` an object-store URL of ``schemes`` covers, for a policy granting exactly
    that; None for other storage. ``what`` is ``"folder"`` (every object below ``prefix``: ``s3://b/in/``,
    or a whole bucket with prefix ""), ``"object"`` (``s3://b/in/x.txt``: that object, and anything below
    ``prefix + "/"``, as it may be a folder) or ``"glob"`` (``s3://b/in/part-*.csv``: below its fixed part,
    ``in/part-``)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in schemes:
        return None
    key = parts.path.lstrip("/")
    wildcards = [key.index(ch) for ch in "*?[" if ch in key]
    if wildcards:
        return parts.netloc, key[: min(wildcards)], "glob"
    return parts.netloc, key, "folder" if key == "" or key.endswith("/") else "object"


#: The measurements corral-emulator adds to every invocation's answer, either platform's (none in the cloud).
EMULATOR_HEADERS = {
    "duration_ms": "x-corral-duration-ms",
    "billed_ms": "x-corral-billed-duration-ms",
    "memory_size_mb": "x-corral-memory-size-mb",
    "max_memory_used_mb": "x-corral-max-memory-used-mb",
    "init_ms": "x-corral-init-duration-ms",
}


def number(text: str) -> int | float:
    """``"102.0"`` -> 102, ``"102.25"`` -> 102.25 (a measurement as the platform wrote it)."""
    value = float(text)
    return int(value) if value.is_integer() else value


def emulator_stats(headers: Mapping[str, str]) -> dict[str, Any]:
    """What corral-emulator measured of an invocation (``EMULATOR_HEADERS``, ``X-Corral-Cold-Start``,
    ``X-Corral-Instance``); empty for an answer from the cloud."""
    lowered = {k.lower(): v for k, v in headers.items()}
    stats: dict[str, Any] = {}
    for key, header in EMULATOR_HEADERS.items():
        if header in lowered:
            try:
                stats[key] = number(lowered[header])
            except ValueError:
                continue
    cold = lowered.get("x-corral-cold-start")
    if cold is not None:
        stats["cold_start"] = cold.strip().lower() == "true"
    if lowered.get("x-corral-instance"):
        stats["instance"] = lowered["x-corral-instance"]
    return stats


def gb_seconds(billed_ms: float, memory_mb: float) -> float:
    """GB-seconds (GiB-seconds: corral's MB are MiB) of one invocation: billed seconds times memory."""
    return billed_ms / 1000.0 * memory_mb / 1024.0


# --- plain data the platforms fill in -------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """What a platform allows: memory and timeout ranges (for ``check_range``) and request sizes."""

    memory_mb: tuple[int, int]
    timeout_s: tuple[int, int]
    max_request: int  # bytes of one synchronous invocation's request
    max_response: int  # and of its response


@dataclass(frozen=True)
class RemoteConfig:
    """The settings every remote function has; a backend's config subclasses it with its own."""

    memory: int = 512
    timeout: int = 60
    environment: Mapping[str, str] = field(default_factory=dict)
    function_name: str | None = None  # default: the backend's default_function_name(job)
    region: str | None = None
    runtime: str = field(default_factory=host_runtime)
    deadline: float | None = None  # time.time() after which throttled calls are no longer retried
    api_attempts: int = 5  # attempts of a call failing with a server error or a connection error
    inline_payload_limit: int = INLINE_PAYLOAD_LIMIT
    inline_result_limit: int = INLINE_RESULT_LIMIT

    @property
    def python_version(self) -> str:
        return python_version(self.runtime)

    @classmethod
    def settings_values(cls, settings: Settings) -> dict[str, Any]:
        """The fields' values from a run's settings (a subclass adds its own options' values)."""
        return {
            "memory": settings.value(MEMORY),
            "timeout": settings.value(TIMEOUT),
            "environment": settings.value(ENVIRONMENT) or {},
            "function_name": settings.value(FUNCTION_NAME),
            "region": settings.value(REGION),
            "runtime": settings.value(RUNTIME) or host_runtime(),
            "deadline": time.time() + float(settings.deadline),
        }

    @classmethod
    def from_settings(cls: type[C], settings: Settings, **overrides: Any) -> C:
        """The config of a run (``overrides`` replace fields), checked by ``validate``: a value the
        platform refuses is a UsageError naming the option as the user set it (flag, variable, file)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in cls.settings_values(settings).items() if k in names}
        config = cls(**{**values, **overrides})
        config.validate(settings.source)
        return config

    def validate(self, source: Source = flag) -> None:
        """Raise a UsageError naming the option when the platform refuses a setting (default: none)."""


@dataclass
class Answer:
    """One invocation's reply as the platform gave it (whatever it says: ``classify`` decides)."""

    body: bytes
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None  # the platform's own function-error marker (Lambda's FunctionError)
    log: str = ""  # the log tail the platform returned (Lambda's LogResult)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)


# --- the executor ---------------------------------------------------------------------------------------
class RemoteFunctionExecutor(Executor):
    """Runs tasks as synchronous invocations of one remote function; see the module for what it does."""

    #: The platform's limits; its name in messages; the URL scheme its storage uses; the flags that run
    #: the same code path locally, and its name in the cost summary.
    limits: ClassVar[Limits]
    platform: ClassVar[str] = "the cloud"
    storage_scheme: ClassVar[str] = ""
    local_flags: ClassVar[str] = "--backend docker"
    cost_name: ClassVar[str] = ""

    def __init__(self, max_concurrency: int, config: RemoteConfig) -> None:
        super().__init__(max_concurrency)
        self.config = config
        self.log = logging.getLogger(f"corral.{self.name or 'remote'}")  # corral.lambda, corral.gcf…
        self.function_name: str | None = config.function_name
        self.package: Any = None
        self.deadline = config.deadline if config.deadline is not None else time.time() + DEFAULT_DEADLINE
        #: Where large payloads and results go (below the job's working root), once deployed.
        self.refs: str | None = None
        #: What the last ``deploy`` / ``undeploy`` did: "create", "update-code", "update-config",
        #: "delete", and the platform's identity actions ("create-role"...). None: all up to date.
        self.deploy_actions: list[str] = []
        self.uploads = 0  # code uploads by the last deploy
        self._pool = _DaemonPool(max_concurrency, f"corral-{self.name or 'remote'}")
        #: Running attempts: the event that stops each one's retries, and its counts so far (``call``).
        self._attempts: dict[Future[Outcome], tuple[threading.Event, dict[str, int]]] = {}
        self._attempts_lock = threading.Lock()
        self._stopping = threading.Event()
        self._usage_lock = threading.Lock()
        self._usage: dict[str, float] = {"invocations": 0, "throttles": 0, "billed_ms": 0.0, "gb_seconds": 0.0,
                                         "unmeasured": 0}

    # --- what the platform provides -----------------------------------------------------------------
    @abstractmethod
    def get_function(self, name: str) -> Any | None:
        """The deployed function named ``name`` as the platform describes it, or None if there is none."""

    @abstractmethod
    def create_function(self, name: str, package: Any, desired: dict[str, Any]) -> None:
        """Create the function running ``package`` with the ``desired`` configuration; wait until ready."""

    @abstractmethod
    def update_function(self, name: str, found: Any, package: Any | None, changes: dict[str, Any]) -> list[str]:
        """Upload ``package`` (None: the code is up to date) and apply ``changes`` (the settings that
        differ); wait until done. Return what was done ("update-code", "update-config")."""

    @abstractmethod
    def delete_function(self, name: str, found: Any) -> None:
        """Delete the function (``found`` is what ``get_function`` returned)."""

    @abstractmethod
    def invoke_raw(self, body: bytes) -> Answer:
        """One synchronous invocation with the JSON ``body``. Raise for what should be retried or is not
        an answer of the function (throttling, server errors, connection errors); return the rest."""

    @abstractmethod
    def classify(self, answer: Answer, stats: dict[str, Any]) -> Outcome:
        """The attempt's Outcome: the task's result, or a failure of the right kind, with ``stats``."""

    @abstractmethod
    def error_kind(self, exc: BaseException) -> str | None:
        """``THROTTLED`` (backpressure: retry until the deadline), ``RETRY`` (a server or connection
        error: retry a few times), or None (not retried)."""

    @abstractmethod
    def estimate(self, usage: Mapping[str, float]) -> dict[str, Any]:
        """The estimated cost of ``usage``: ``{"estimated_cost_usd", "cost_usd": {...}, "prices":
        {..., "region", "read"}}`` at the platform's list prices (``read``: when they were checked)."""

    @abstractmethod
    def handler_files(self) -> Mapping[str, bytes]:
        """Files the package holds besides corral and the job: the platform's handler."""

    @abstractmethod
    def wheel_platforms(self) -> list[str]:
        """The pip platform tags of the wheels the function's runtime can load."""

    @abstractmethod
    def package_hash(self, package: Any) -> str:
        """The package's content hash as the platform records it (to compare with ``deployed_hash``)."""

    @abstractmethod
    def deployed_hash(self, found: Any) -> str | None:
        """The content hash of the code the function runs now."""

    @abstractmethod
    def desired_configuration(self, job: JobSource, identity: str | None) -> dict[str, Any]:
        """The function's settings for this run, in the platform's terms."""

    @abstractmethod
    def deployed_configuration(self, found: Any) -> dict[str, Any]:
        """The function's settings now, in the same terms as ``desired_configuration``."""

    # --- what the platform may change -----------------------------------------------------------------
    def is_managed(self, found: Any) -> bool:
        """Whether corral created the function (only then does it change or delete it)."""
        return True

    def ensure_identity(self, job: JobSource) -> str | None:
        """Make sure of the identity the function runs as (a role, a service account) with exactly the
        access ``job`` needs; return its name for ``desired_configuration``."""
        return None

    def remove_identity(self, name: str, found: Any | None) -> list[str]:
        """On undeploy: remove the identity corral created for the function; return what was done."""
        return []

    def exists_already(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by ``create_function``, says the function exists (another run of the
        job created it since ``get_function`` looked): the deploy then updates it as needed instead."""
        return False

    def check_package(self, package: Any) -> None:
        """Refuse a package the platform would refuse (its size limits), before anything is uploaded."""

    def default_function_name(self, job: JobSource) -> str:
        return function_name_for(job.ref)

    @property
    def endpoint_url(self) -> str | None:
        """Another endpoint speaking the platform's API (an emulator), when one is configured."""
        return None

    #: The exceptions of the platform's SDK that ``translate_error`` turns into a CorralError.
    api_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def describe_error(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {exc}"

    def translate_error(self, exc: BaseException, context: str) -> CorralError:
        """The error a user sees for an API error during ``context`` ("cannot deploy the function X")."""
        return CorralError(f"{context}: {self.describe_error(exc)}")

    def answer_stats(self, answer: Answer) -> dict[str, Any]:
        """Measurements the platform returns besides the answer (e.g. Lambda's REPORT line)."""
        return {}

    def usage_terms(self, stats: Mapping[str, Any]) -> dict[str, float]:
        """Platform-specific quantities to add up per invocation (e.g. ephemeral storage GB-seconds)."""
        return {}

    def summary_detail(self) -> str:
        """What the summary line says in brackets after the GB-seconds: ``x86_64, 1024 MB``."""
        return f"{self.config.memory} MB"

    def report_details(self) -> dict[str, Any]:
        """Extra figures for the manifest's ``report``."""
        return {}

    # --- deploy (the template) ---------------------------------------------------------------------------
    def check_locations(self, job: JobSource) -> None:
        """Functions in the cloud cannot see this machine's files: only URLs make sense there.

        With another endpoint (``endpoint_url``: an emulator that may mount them) corral cannot tell,
        and lets them through."""
        if self.endpoint_url:
            return
        local = [loc for loc in job.locations if "://" not in loc or loc.startswith("file://")]
        if local:
            raise UsageError(
                f"the {self.name} backend runs tasks on {self.platform}, which cannot read or write the local "
                f"path {local[0]!r}: use {self.storage_scheme} URLs (or {self.local_flags} to run the "
                f"{self.name} code path locally)"
            )

    def build(self, job: JobSource) -> Any:
        from corral.packaging import build_package

        return build_package(job, self.handler_files(), platform=self.wheel_platforms(),
                             python_version=self.config.python_version)

    @contextmanager
    def _translated(self, context: str) -> Iterator[None]:
        try:
            yield
        except CorralError:
            raise
        except self.api_errors as exc:
            raise self.translate_error(exc, context) from None

    def side_file_room(self) -> tuple[int, str] | tuple[int, str, str] | None:
        """The MB of ``/tmp`` a function has for the side files it downloads, the option that sets it, and
        (optionally) what that room is, for the message (``corral.sidefiles.check_room``); None when the
        platform does not say (no check)."""
        return None

    def deploy(self, job: JobSource) -> None:
        self.check_locations(job)
        room = self.side_file_room()
        if room is not None:  # before anything is built or deployed
            check_room(job.files, *room)
        name = self.function_name = self.config.function_name or self.default_function_name(job)
        self.refs = f"{job.work.rstrip('/')}/_refs" if job.work else None
        started = time.perf_counter()
        package = self.package = self.build(job)
        self.check_package(package)
        built = time.perf_counter()
        self.deploy_actions = []
        self.uploads = 0
        with self._translated(f"cannot deploy the function {name}"):
            identity = self.ensure_identity(job)
            desired = self.desired_configuration(job, identity)
            found = self.get_function(name)
            if found is None:
                try:
                    self.create_function(name, package, desired)
                    self.deploy_actions.append("create")
                except Exception as exc:
                    if not self.exists_already(exc):
                        raise
                    # another run created it meanwhile: the same job gets the same function, updated if needed
                    self.log.info("%s: created meanwhile by another deploy (%s)", name, self.describe_error(exc))
                    found = self.get_function(name)
                    if found is None:
                        raise
            if found is not None:
                if not self.is_managed(found):
                    raise UsageError(f"the function {name} exists but was not created by corral: corral leaves "
                                     "it alone; choose another --function-name")
                code = package if self.deployed_hash(found) != self.package_hash(package) else None
                current = self.deployed_configuration(found)
                changes = {key: value for key, value in desired.items() if current.get(key) != value}
                if code is not None or changes:
                    self.deploy_actions += self.update_function(name, found, code, changes)
        if job.work:  # side files too large for the package: in the working folder, once per content hash
            for url in upload_side_files(job.files, job.work):
                self.log.info("uploaded the side file %s", url)
        self.log.info("%s: package %s (%.1f MB, built in %.2f s); %s in %.2f s", name, package.sha256[:12],
                 package.size / MiB, built - started, ", ".join(self.deploy_actions) or "function up to date",
                 time.perf_counter() - built)

    def undeploy(self, job: JobSource) -> None:
        """Delete the function and the identity corral created for it (``remove_identity``); nothing else."""
        name = self.function_name = self.config.function_name or self.default_function_name(job)
        self.deploy_actions = []
        with self._translated(f"cannot undeploy the function {name}"):
            found = self.get_function(name)
            if found is not None:
                if not self.is_managed(found):
                    raise UsageError(f"the function {name} was not created by corral: left alone")
                self.delete_function(name, found)
                self.deploy_actions.append("delete")
                self.log.info("deleted the function %s", name)
            else:
                self.log.info("the function %s does not exist", name)
            self.deploy_actions += self.remove_identity(name, found)

    # --- calls, retried ------------------------------------------------------------------------------
    def call(self, fn: Callable[..., T], *args: Any, label: str = "", counts: dict[str, int] | None = None,
             stop: threading.Event | None = None, operation: str | None = None,
             throttled: list[str] | None = None, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` retried as the module says; ``counts`` gets attempts, throttles, errors,
        and ``throttled`` the message of each throttling answer. ``stop`` (set by cancel) ends the
        retries: the last error is raised."""
        from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

        counts = counts if counts is not None else {}
        for key in ("attempts", "throttles", "errors"):
            counts.setdefault(key, 0)
        stop = stop or self._stopping
        operation = operation or getattr(fn, "__name__", "call")
        backoff = wait_random_exponential(multiplier=0.1, max=MAX_BACKOFF)

        def attempt() -> T:
            if counts["attempts"] and stop.is_set():  # cancelled while it waited: no new request goes out
                raise _Stopped(f"{label or operation}: {operation} cancelled before its retry")
            counts["attempts"] += 1
            return fn(*args, **kwargs)

        def give_up(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            if exc is not None and self.error_kind(exc) == THROTTLED:
                counts["throttles"] += 1
                if throttled is not None:
                    throttled.append(self.describe_error(exc))
                return time.time() >= self.deadline or stop.is_set()
            counts["errors"] += 1
            return counts["errors"] >= self.config.api_attempts or stop.is_set()

        def wait(state: RetryCallState) -> float:
            return max(0.0, min(backoff(state), self.deadline - time.time()))

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            what = "throttled" if exc is not None and self.error_kind(exc) == THROTTLED else "failed"
            self.log.info("%s: %s %s (%s); retry %d in %.2f s", label or operation, operation, what,
                     self.describe_error(exc) if exc else "", state.attempt_number,
                     state.next_action.sleep if state.next_action else 0.0)

        def pause(seconds: float) -> None:  # a wait that cancel cuts short
            stop.wait(seconds)

        def retried(exc: BaseException) -> bool:
            return not isinstance(exc, _Stopped) and self.error_kind(exc) is not None

        retrying = Retrying(retry=retry_if_exception(retried), stop=give_up,
                            wait=wait, reraise=True, before_sleep=before_sleep, sleep=pause)
        return retrying(attempt)

    # --- tasks -------------------------------------------------------------------------------------------
    def submit(self, payload: dict[str, Any]) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        stop = threading.Event()
        counts: dict[str, int] = {}
        if self._stopping.is_set():
            _resolve(future, _cancelled())
            return future
        with self._attempts_lock:
            self._attempts[future] = (stop, counts)

        def run() -> None:
            outcome = _cancelled()
            try:
                if not stop.is_set():
                    outcome = self.invoke(payload, stop, counts)
            except BaseException as exc:  # never lose an attempt: report it
                outcome = Outcome(failure=Failure(INFRASTRUCTURE, f"{type(exc).__name__}: {exc}"))
            finally:
                with self._attempts_lock:
                    self._attempts.pop(future, None)
                _resolve(future, outcome)

        self._pool.submit(run)
        return future

    def cancel(self, attempt: Future[Outcome]) -> None:
        """Abandon the attempt: its future resolves at once as CANCELLED (with its throttles and invoke
        attempts so far) and no request of it goes out any more. A call already running on the platform
        runs on there; its answer is discarded."""
        with self._attempts_lock:
            found = self._attempts.pop(attempt, None)
        if found is not None:
            stop, counts = found
            stop.set()
            _resolve(attempt, _cancelled(counts))

    def cancel_all(self) -> None:
        """Abandon every attempt, and refuse new ones: ``close`` then returns without waiting for them."""
        self._stopping.set()
        with self._attempts_lock:
            running = list(self._attempts)
        for attempt in running:
            self.cancel(attempt)

    def _event(self, payload: dict[str, Any]) -> tuple[bytes, str | None]:
        """The request body for ``payload`` (and the URL it was stored at, when passed by reference)."""
        from corral.fs import get_filesystem

        extra = {RESULTS_KEY: {"url": self.refs, "limit": self.config.inline_result_limit}} if self.refs else {}
        body = json.dumps({**payload, **extra}, separators=(",", ":")).encode("utf-8")
        limit = self.limits.max_request
        if len(body) <= min(self.config.inline_payload_limit, limit) or (not self.refs and len(body) <= limit):
            return body, None
        if not self.refs:
            raise CorralError(f"a payload of {len(body)} bytes is over {self.platform}'s {limit} byte limit, and "
                              "the job has no working folder to pass it through")
        url = f"{self.refs}/payload-{uuid.uuid4().hex}.json"
        get_filesystem(url).write_bytes(url, json.dumps(payload, separators=(",", ":")).encode("utf-8"))
        return json.dumps({PAYLOAD_KEY: url, **extra}, separators=(",", ":")).encode("utf-8"), url

    def _remove(self, url: str | None) -> None:
        if url:
            from corral.fs import remove_quietly

            remove_quietly(url)

    def _fetch_result(self, data: bytes) -> bytes:
        """The result itself when the function returned a reference to it (a large result)."""
        if RESULT_KEY.encode() not in data[:200]:
            return data
        from corral.fs import get_filesystem

        try:
            url = json.loads(data)[RESULT_KEY]
            result = get_filesystem(url).read_bytes(url)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            return json.dumps({"ok": False, "error": {"type": "ResultUnavailable", "message": str(exc),
                                                      "kind": "infrastructure"}}).encode()
        self._remove(url)
        return result

    def invoke(self, payload: dict[str, Any], stop: threading.Event | None = None,
               counts: dict[str, int] | None = None) -> Outcome:
        """One synchronous invocation with ``payload``, retried as the module says; never raises for API
        errors. ``stop`` (set by cancel) ends its retries; ``counts`` gets its attempts and throttles."""
        started = time.perf_counter()
        label = f"{payload['task']} attempt {payload.get('attempt')}" if "task" in payload else "invoke"
        counts = counts if counts is not None else {}
        throttled: list[str] = []
        body, stored = self._event(payload)
        try:
            answer = self.call(self.invoke_raw, body, label=label, counts=counts, stop=stop, operation="invoke",
                               throttled=throttled)
        except Exception as exc:
            self._count(counts, None)
            stats: dict[str, Any] = {"seconds": round(time.perf_counter() - started, 6),
                                     "throttles": counts.get("throttles", 0),
                                     "invoke_attempts": counts.get("attempts", 1)}
            if throttled:
                stats["throttle_message"] = throttled[-1]
            if stop is not None and stop.is_set():
                return Outcome(failure=_cancelled().failure, stats=stats)
            if self.error_kind(exc) == THROTTLED:
                message = (f"still throttled at the job's deadline (--deadline) after {counts.get('throttles')} "
                           f"throttled invokes: {self.describe_error(exc)}")
                return Outcome(failure=Failure(THROTTLED, message), stats=stats)
            return Outcome(failure=Failure(INFRASTRUCTURE, self.describe_error(exc)), stats=stats)
        finally:
            self._remove(stored)
        stats = {"seconds": round(time.perf_counter() - started, 6), **self.answer_stats(answer)}
        stats.setdefault("memory_size_mb", self.config.memory)
        stats["throttles"] = counts.get("throttles", 0)
        if throttled:  # the platform's last word on it (the live page shows it)
            stats["throttle_message"] = throttled[-1]
        stats["invoke_attempts"] = counts.get("attempts", 1)
        if answer.status == 200 and not answer.error:
            answer.body = self._fetch_result(answer.body)
        outcome = self.classify(answer, stats)
        if outcome.result:  # the handler's own measurements (run_remote), for the manifest
            for key in ("duration_ms", "instance_tasks", "cold_start"):
                if outcome.result.get(key) is not None:
                    outcome.stats.setdefault(key, outcome.result[key])
        self._count(counts, outcome.stats)
        return outcome

    # --- the run's figures -------------------------------------------------------------------------------
    def _count(self, counts: Mapping[str, int], stats: Mapping[str, Any] | None) -> None:
        with self._usage_lock:
            usage = self._usage
            usage["throttles"] += counts.get("throttles", 0)
            if stats is None:
                return  # the function never ran: nothing billed
            usage["invocations"] += 1
            billed = stats.get("billed_ms")
            if billed is None:
                usage["unmeasured"] += 1
                return
            usage["billed_ms"] += billed
            usage["gb_seconds"] += gb_seconds(billed, stats.get("memory_size_mb") or self.config.memory)
            for key, value in self.usage_terms(stats).items():
                usage[key] = usage.get(key, 0.0) + value

    def report(self) -> dict[str, Any]:
        """Invocations, throttles, billed GB-seconds and the estimated cost at the platform's list prices."""
        with self._usage_lock:
            usage = dict(self._usage)
        if not usage["invocations"] and not usage["throttles"]:
            return {}
        cost = self.estimate(usage)
        prices = cost.get("prices", {})
        summary = (f"{usage['invocations']:g} invocations, {usage['gb_seconds']:.3f} GB-s billed "
                   f"({self.summary_detail()}): estimated {self.cost_name} cost ${cost['estimated_cost_usd']:.6f} "
                   f"at {prices.get('region')} list prices of {prices.get('read')}")
        if usage["throttles"]:
            summary += f"; {usage['throttles']:g} throttled invokes retried"
        base = {"invocations", "throttles", "unmeasured", "billed_ms", "gb_seconds"}
        return {
            "summary": summary,
            "function": self.function_name,
            "memory_mb": self.config.memory,
            "invocations": int(usage["invocations"]),
            "throttled_invokes": int(usage["throttles"]),
            "unmeasured_invocations": int(usage["unmeasured"]),
            "billed_ms": usage["billed_ms"],
            "gb_seconds": round(usage["gb_seconds"], 6),
            **{key: round(value, 6) for key, value in usage.items() if key not in base},
            **self.report_details(),
            **cost,
        }

    def close(self) -> None:
        """Wait for running invocations (not after ``cancel_all``: those were abandoned)."""
        self._pool.shutdown(wait=not self._stopping.is_set())


def _cancelled(counts: Mapping[str, int] | None = None) -> Outcome:
    stats = {"throttles": counts.get("throttles", 0), "invoke_attempts": counts.get("attempts", 0)} if counts else {}
    return Outcome(failure=Failure(CANCELLED, "cancelled by the driver (the function may still be running)"),
                   stats=stats)


class _Stopped(CorralError):
    """A retry of a call whose attempt was cancelled in the meantime: it is not sent."""


def _resolve(future: Future[Outcome], outcome: Outcome) -> None:
    try:
        future.set_result(outcome)
    except InvalidStateError:  # resolved already (cancelled while it ran): the late outcome is discarded
        pass


class _DaemonPool:
    """Up to ``size`` daemon threads running submitted calls, started as needed.

    Why not ThreadPoolExecutor: its threads are joined at interpreter exit, so one call to a remote
    function that cannot be interrupted (a task still running there after Ctrl-C) would hold up the
    exit until the function's timeout. These threads are daemons; ``shutdown(wait=False)`` leaves them.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = max(1, size)
        self._name = name
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for work that no submitted call has claimed yet
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the invocation pool is shut down")
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._size:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._queue.put(fn)

    def _work(self) -> None:
        while True:
            fn = self._queue.get()
            if fn is None:
                return
            try:
                fn()
            finally:
                with self._lock:
                    self._idle += 1

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        if wait:
            for thread in threads:
                thread.join()


# --- the function side ---------------------------------------------------------------------------------
#: Tasks this warm instance (this process) has run: its first is its cold start.
_instance_tasks = 0
_instance_lock = threading.Lock()


def _setup() -> None:
    os.environ.setdefault("CORRAL_SPILL_DIR", SPILL_DIR)
    os.makedirs(os.environ["CORRAL_SPILL_DIR"], exist_ok=True)


def _packaged(module: str, code_root: str | None) -> bool:
    if not code_root:
        return False
    base = os.path.join(code_root, *module.split("."))
    return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))


def prepare(event: dict[str, Any], memory_mb: int | None, code_root: str | None = None) -> dict[str, Any]:
    """The payload to run: the memory budget capped to the function's size, and the job imported from
    the package (``code_root``, where it was unzipped), even where the driver's path is visible too."""
    event = dict(event)
    if memory_mb:
        cap = int(memory_mb * MEMORY_SHARE * MiB)
        budget = event.get("memory_budget")
        event["memory_budget"] = min(int(budget), cap) if budget else cap
    job = event.get("job")
    if isinstance(job, dict) and job.get("path") and _packaged(job["module"], code_root):
        event["job"] = {**job, "path": None}
    return event


def unwrap(event: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(payload, where large results go)``: the payload read from storage when the event points to it."""
    payload = dict(event)
    ref = payload.pop(PAYLOAD_KEY, None)
    results: dict[str, Any] | None = payload.pop(RESULTS_KEY, None)
    if ref:
        from corral.fs import get_filesystem

        payload = json.loads(get_filesystem(ref).read_bytes(ref))
    return payload, results


def wrap(result: dict[str, Any], results: Mapping[str, Any] | None) -> dict[str, Any]:
    """``result``, or a reference to it in storage when it is larger than the event's limit."""
    if not results or not results.get("url"):
        return result
    data = json.dumps(result, separators=(",", ":")).encode("utf-8")
    if len(data) <= int(results.get("limit") or INLINE_RESULT_LIMIT):
        return result
    from corral.fs import get_filesystem

    url = f"{str(results['url']).rstrip('/')}/result-{uuid.uuid4().hex}.json"
    get_filesystem(url).write_bytes(url, data)
    return {RESULT_KEY: url, "bytes": len(data)}


def _failed(exc: BaseException, what: str) -> dict[str, Any]:
    return {"ok": False, "error": {"type": type(exc).__name__, "message": f"{what}: {type(exc).__name__}: {exc}",
                                   "traceback": "",
                                   "kind": "infrastructure"}}


def run_remote(event: Mapping[str, Any], memory_mb: int | None = None, code_root: str | None = None) -> dict[str, Any]:
    """Run the task ``event`` describes, in a remote function; return the answer for the executor.

    ``memory_mb`` is the function's memory size (the task's memory budget is capped to a share of it),
    ``code_root`` the folder the package was unzipped into. Never raises for the task's own errors
    (``corral.run_task`` reports them); a payload or result that cannot be read or written comes back
    as an infrastructure error.
    """
    global _instance_tasks
    started = time.perf_counter()
    _setup()
    with _instance_lock:
        _instance_tasks += 1
        tasks = _instance_tasks
    try:
        payload, results = unwrap(event)
    except (OSError, ValueError, TypeError) as exc:
        return _failed(exc, "cannot read the task's payload")
    from corral.worker import run_task

    result = run_task(prepare(payload, memory_mb, code_root))
    result.update(duration_ms=round((time.perf_counter() - started) * 1000, 3), instance_tasks=tasks,
                  cold_start=tasks == 1)
    try:
        return wrap(result, results)
    except OSError as exc:
        return _failed(exc, "cannot write the task's result")


__all__ = [
    "DEFAULT_CONCURRENCY",
    "EMULATOR_HEADERS",
    "ENVIRONMENT",
    "FUNCTION_NAME",
    "INLINE_PAYLOAD_LIMIT",
    "INLINE_RESULT_LIMIT",
    "MEMORY",
    "MEMORY_SHARE",
    "OPTIONS",
    "REGION",
    "RETRY",
    "RUNTIME",
    "TIMEOUT",
    "Answer",
    "Limits",
    "RemoteConfig",
    "RemoteFunctionExecutor",
    "Source",
    "check_environment",
    "check_range",
    "emulator_stats",
    "flag",
    "function_name_for",
    "gb_seconds",
    "host_runtime",
    "invalid",
    "number",
    "object_prefix",
    "parse_endpoint",
    "parse_runtime",
    "parse_text",
    "python_version",
    "run_remote",
]
