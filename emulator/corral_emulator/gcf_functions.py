"""Cloud Functions v2 resources: a function's settings (validated like GCF's), its JSON shape, operations.

The JSON is the REST API's (camelCase field names, as ``google-cloud-functions`` sends and parses them;
enums arrive as numbers or names). A function keeps the fields the caller set (``spec``) and the typed
``Settings`` derived from them; a PATCH applies its ``updateMask`` to a copy of ``spec`` and validates
that again before anything changes.
"""

from __future__ import annotations

import copy
import hashlib
import random
import re
import string
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral_emulator.engine import Engine
    from corral_emulator.gcf_instance import GcfInstance

FUNCTION_TYPE = "type.googleapis.com/google.cloud.functions.v2.Function"
METADATA_TYPE = "type.googleapis.com/google.cloud.functions.v2.OperationMetadata"
EMPTY_TYPE = "type.googleapis.com/google.protobuf.Empty"

MiB = 1024 * 1024
#: GCF 2nd gen's limits (HTTP functions).
MIN_MEMORY = 128 * MiB
MAX_MEMORY = 32 * 1024 * MiB
MAX_TIMEOUT = 3600
DEFAULT_MEMORY = "256M"
DEFAULT_TIMEOUT = 60
DEFAULT_MAX_INSTANCES = 100
#: The default CPU of 2nd gen functions by memory (bytes at or below -> vCPUs).
DEFAULT_CPU = ((128e6, 0.083), (256e6, 0.167), (512e6, 0.333), (1e9, 0.583), (2e9, 1.0), (8e9, 2.0),
               (16e9, 4.0), (float("inf"), 8.0))

FUNCTION_ID_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV = frozenset({"FUNCTION_TARGET", "FUNCTION_SIGNATURE_TYPE", "K_SERVICE", "K_REVISION",
                          "K_CONFIGURATION", "PORT"})
QUANTITY_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(k|M|G|T|Ki|Mi|Gi|Ti)?$")
UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
#: Enum values the REST client sends as numbers (``enum-encoding=int``).
ENVIRONMENTS = {0: "ENVIRONMENT_UNSPECIFIED", 1: "GEN_1", 2: "GEN_2"}
INGRESS = {0: "INGRESS_SETTINGS_UNSPECIFIED", 1: "ALLOW_ALL", 2: "ALLOW_INTERNAL_ONLY", 3: "ALLOW_INTERNAL_AND_GCLB"}
#: The fields a caller may set (and an update mask may name), by their top-level key.
SETTABLE = ("description", "buildConfig", "serviceConfig", "labels", "environment", "kmsKeyName", "eventTrigger")


class InvalidArgument(ValueError):
    """A request the API refuses with 400 INVALID_ARGUMENT (the message names the field)."""


def rfc3339(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def project_number(project: str) -> str:
    """A stable 12-digit number standing in for a project's number (in default names and buckets)."""
    return str(100000000000 + int(hashlib.sha256(project.encode()).hexdigest()[:12], 16) % 900000000000)


def parse_memory(text: Any) -> int:
    """Bytes of a Kubernetes quantity as GCF takes it: ``256M`` (10^6), ``1Gi`` (2^30), ``512Mi``…"""
    match = QUANTITY_RE.match(str(text).strip()) if isinstance(text, (str, int)) else None
    if not match:
        raise InvalidArgument(f"serviceConfig.availableMemory {text!r} is not a quantity such as 256M, 512Mi or 1Gi "
                              "(units: k, M, G, Mi, Gi; none = bytes)")
    value = int(float(match.group(1)) * UNITS[match.group(2)])
    if not MIN_MEMORY <= value <= MAX_MEMORY:
        raise InvalidArgument(f"serviceConfig.availableMemory {text!r} is out of range: a 2nd gen function has "
                              "between 128Mi and 32Gi")
    return value


def parse_cpu(text: Any, memory: int) -> float:
    if text in (None, ""):
        return next(cpu for limit, cpu in DEFAULT_CPU if memory <= limit)
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 1000 if raw.endswith("m") else float(raw)
    except ValueError:
        raise InvalidArgument(f"serviceConfig.availableCpu {text!r} is not a number of CPUs such as 1, 0.583 "
                              "or 500m") from None
    if not 0.08 <= value <= 8:
        raise InvalidArgument(f"serviceConfig.availableCpu {text!r} is out of range (0.083 to 8)")
    return value


def _int(value: Any, name: str, default: int, low: int, high: int) -> int:
    if value in (None, "", 0, "0"):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name} must be a whole number, not {value!r}") from None
    if not low <= number <= high:
        raise InvalidArgument(f"{name} {number} is out of range ({low} to {high})")
    return number


def _env(value: Any, name: str) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{name} must be a map of strings")
    for key, item in value.items():
        if not ENV_KEY_RE.match(key):
            raise InvalidArgument(f"{name}: {key!r} is not a valid environment variable name")
        if key in RESERVED_ENV or key.startswith("X_GOOGLE_"):
            raise InvalidArgument(f"{name}: {key} is a reserved environment variable (set by the platform)")
        if not isinstance(item, str):
            raise InvalidArgument(f"{name}: the value of {key} must be a string")
    return dict(value)


def _enum(value: Any, names: dict[int, str]) -> str | None:
    if value in (None, "", 0):
        return None
    if isinstance(value, int):
        return names.get(value, str(value))
    return str(value)


@dataclass(frozen=True)
class Settings:
    """A function's configuration, validated; what its instances are made from."""

    runtime: str
    python: str  # "3.11" for python311
    entry_point: str
    bucket: str
    object: str
    build_environment: dict[str, str]
    memory_bytes: int
    memory_text: str
    cpu: float
    timeout: int
    max_instances: int
    environment: dict[str, str]
    service_account: str
    labels: dict[str, str]

    @property
    def memory_mib(self) -> int:
        """The limit in whole MiB, as Cloud Run reports it (``256M`` is 244 MiB)."""
        return self.memory_bytes // MiB

    @property
    def source_file(self) -> str:
        return self.build_environment.get("GOOGLE_FUNCTION_SOURCE") or "main.py"


def validate(spec: dict, function_id: str, project: str) -> Settings:
    """The ``Settings`` of a Function's JSON, or ``InvalidArgument`` naming the field at fault."""
    environment = _enum(spec.get("environment"), ENVIRONMENTS)
    if environment not in (None, "GEN_2"):
        raise InvalidArgument(f"environment {environment}: corral-emulator emulates 2nd gen functions (GEN_2) only")
    if spec.get("eventTrigger"):
        raise InvalidArgument("eventTrigger: corral-emulator serves HTTP functions only (no event triggers)")
    build = spec.get("buildConfig") or {}
    service = spec.get("serviceConfig") or {}
    if not isinstance(build, dict) or not isinstance(service, dict):
        raise InvalidArgument("buildConfig and serviceConfig must be objects")
    runtime = build.get("runtime") or ""
    match = re.fullmatch(r"python3(\d+)", runtime)
    if not match:
        raise InvalidArgument(f"buildConfig.runtime {runtime!r} is not supported: corral-emulator runs Python "
                              "runtimes (python311, python312…)")
    entry_point = build.get("entryPoint") or function_id
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", entry_point):
        raise InvalidArgument(f"buildConfig.entryPoint {entry_point!r} is not a Python function name")
    source = build.get("source") or {}
    storage = source.get("storageSource") if isinstance(source, dict) else None
    if not isinstance(storage, dict) or not storage.get("bucket") or not storage.get("object"):
        raise InvalidArgument("buildConfig.source.storageSource (bucket and object, from generateUploadUrl) is "
                              "required; corral-emulator does not build from repositories")
    memory_text = service.get("availableMemory") or DEFAULT_MEMORY
    memory = parse_memory(memory_text)
    concurrency = _int(service.get("maxInstanceRequestConcurrency"), "serviceConfig.maxInstanceRequestConcurrency",
                       1, 1, 1000)
    if concurrency != 1:
        raise InvalidArgument(f"serviceConfig.maxInstanceRequestConcurrency {concurrency}: corral-emulator serves "
                              "one request at a time per instance (1)")
    labels = spec.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidArgument("labels must be a map of strings")
    for key, value in labels.items():
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) or not re.fullmatch(r"[a-z0-9_-]{0,63}", value):
            raise InvalidArgument(f"label {key}={value!r} is not valid (lowercase letters, digits, _ and -, "
                                  "at most 63 characters, keys start with a letter)")
    return Settings(
        runtime=runtime,
        python=f"3.{match.group(1)}",
        entry_point=entry_point,
        bucket=str(storage["bucket"]),
        object=str(storage["object"]),
        build_environment=_env(build.get("environmentVariables"), "buildConfig.environmentVariables"),
        memory_bytes=memory,
        memory_text=str(memory_text),
        cpu=parse_cpu(service.get("availableCpu"), memory),
        timeout=_int(service.get("timeoutSeconds"), "serviceConfig.timeoutSeconds", DEFAULT_TIMEOUT, 1, MAX_TIMEOUT),
        max_instances=_int(service.get("maxInstanceCount"), "serviceConfig.maxInstanceCount",
                           DEFAULT_MAX_INSTANCES, 1, 1000),
        environment=_env(service.get("environmentVariables"), "serviceConfig.environmentVariables"),
        service_account=service.get("serviceAccountEmail")
        or f"{project_number(project)}-compute@developer.gserviceaccount.com",
        labels=dict(labels),
    )


def settable(body: dict) -> dict:
    """The fields of a Function a caller may set (output-only ones dropped)."""
    spec = {k: copy.deepcopy(v) for k, v in body.items() if k in SETTABLE}
    for key in ("uri", "service", "revision"):
        (spec.get("serviceConfig") or {}).pop(key, None)
    for key in ("build", "sourceProvenance", "dockerRepository"):
        (spec.get("buildConfig") or {}).pop(key, None)
    return spec


def camel(path: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), path)


def apply_mask(spec: dict, body: dict, mask: str) -> dict:
    """``spec`` updated with ``body``'s fields named by ``mask`` (all settable fields when it is empty)."""
    new = copy.deepcopy(spec)
    paths = [camel(p.strip()) for p in mask.split(",") if p.strip()] if mask else list(SETTABLE)
    for path in paths:
        keys = path.split(".")
        if keys[0] not in SETTABLE:
            raise InvalidArgument(f"updateMask: {path!r} is not a field that can be updated")
        source: Any = body
        for key in keys:
            source = source.get(key) if isinstance(source, dict) else None
        target = new
        for key in keys[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise InvalidArgument(f"updateMask: {path!r} does not name a field")
        if source is None:
            target.pop(keys[-1], None)
        else:
            target[keys[-1]] = copy.deepcopy(source)
    return new


def revision_name(function_id: str, generation: int) -> str:
    """Cloud Run's revision names: ``NAME-00001-abc``."""
    return f"{function_id}-{generation:05d}-{''.join(random.choices(string.ascii_lowercase, k=3))}"


@dataclass
class GcfFunction:
    """One Cloud Function (2nd gen) and what it is deployed as."""

    project: str
    location: str
    function_id: str
    spec: dict = field(default_factory=dict)
    settings: Settings | None = None
    state: str = "DEPLOYING"  # DEPLOYING -> ACTIVE | FAILED; DELETING
    state_messages: list[dict] = field(default_factory=list)
    code_dir: Path | None = None
    framework_dir: Path | None = None  # functions-framework for the image's Python (mounted read-only)
    generation: int = 0
    revision: str = ""
    retired: bool = False
    create_time: str = field(default_factory=rfc3339)
    update_time: str = field(default_factory=rfc3339)
    build_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    uri: str = ""
    busy: bool = False  # an operation on it is running
    serving: bool = False  # a deploy of it succeeded: its URL answers

    @property
    def name(self) -> str:
        """The short name the pool, the containers and the logs use (the function ID)."""
        return self.function_id

    @property
    def resource_name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/functions/{self.function_id}"

    @property
    def log_name(self) -> str:
        return f"gcf-{self.project}-{self.location}-{self.function_id}"

    @property
    def instance_limit(self) -> int | None:
        return self.settings.max_instances if self.settings else None

    def new_sandbox(self, engine: Engine) -> GcfInstance:
        from corral_emulator.gcf_instance import GcfInstance

        return GcfInstance(engine, self)

    def to_json(self) -> dict:
        """The Function resource, as ``functions_v2.Function`` parses it."""
        data = copy.deepcopy(self.spec)
        data["name"] = self.resource_name
        data["state"] = self.state
        data["createTime"] = self.create_time
        data["updateTime"] = self.update_time
        data["environment"] = "GEN_2"
        if self.state_messages:
            data["stateMessages"] = list(self.state_messages)
        settings = self.settings
        if settings is not None:
            build = data.setdefault("buildConfig", {})
            build["entryPoint"] = settings.entry_point
            build["build"] = f"projects/{project_number(self.project)}/locations/{self.location}/builds/{self.build_id}"
            build["sourceProvenance"] = {"resolvedStorageSource": {"bucket": settings.bucket,
                                                                   "object": settings.object}}
            service = data.setdefault("serviceConfig", {})
            service.update({
                "service": f"projects/{self.project}/locations/{self.location}/services/{self.function_id}",
                "timeoutSeconds": settings.timeout,
                "availableMemory": settings.memory_text,
                "availableCpu": f"{settings.cpu:g}",
                "maxInstanceCount": settings.max_instances,
                "maxInstanceRequestConcurrency": 1,
                "ingressSettings": _enum(service.get("ingressSettings"), INGRESS) or "ALLOW_ALL",
                "serviceAccountEmail": settings.service_account,
                "allTrafficOnLatestRevision": True,
                "revision": self.revision,
                "uri": self.uri,
            })
            data["url"] = self.uri
        return data


@dataclass
class GcfOperation:
    """A long-running operation (create, update or delete of one function)."""

    name: str
    target: str  # the function's resource name
    verb: str  # create | update | delete
    done: bool = False
    error: dict | None = None  # google.rpc.Status: {"code", "message"}
    response: dict | None = None
    create_time: str = field(default_factory=rfc3339)
    end_time: str | None = None

    def finish(self, response: dict | None = None, error: tuple[int, str] | None = None) -> None:
        self.done = True
        self.end_time = rfc3339()
        if error is not None:
            self.error = {"code": error[0], "message": error[1]}
        else:
            self.response = response

    def to_json(self) -> dict:
        kinds = {"create": "CREATE_FUNCTION", "update": "UPDATE_FUNCTION", "delete": "DELETE_FUNCTION"}
        metadata = {"@type": METADATA_TYPE, "createTime": self.create_time, "target": self.target,
                    "verb": self.verb, "cancelRequested": False, "apiVersion": "v2",
                    "operationType": kinds[self.verb]}
        if self.end_time:
            metadata["endTime"] = self.end_time
        data: dict = {"name": self.name, "metadata": metadata, "done": self.done}
        if self.done and self.error is not None:
            data["error"] = self.error
        elif self.done:
            data["response"] = self.response or {"@type": EMPTY_TYPE}
        return data
