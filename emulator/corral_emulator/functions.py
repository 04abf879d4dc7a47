"""Functions: their configuration (validated like Lambda's), code (unzipped on the host) and API shapes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import shutil
import stat
import uuid
import zipfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral_emulator.errors import ApiError, invalid

if TYPE_CHECKING:
    from corral_emulator.engine import Engine
    from corral_emulator.lambda_aliases import Alias
    from corral_emulator.lambda_events import EventInvokeConfig
    from corral_emulator.lambda_sandbox import LambdaSandbox

MAX_ZIP_BYTES = 50 * 1024 * 1024  # Lambda's limit for a direct upload
MAX_UNZIPPED_BYTES = 262_144_000  # Lambda's limit for the unzipped package
MAX_ENV_BYTES = 4096

NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ARN_RE = re.compile(
    r"^(?:arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:)?(?:\d{12}:)?(?:function:)?([a-zA-Z0-9_-]{1,64})(?::([^:]+))?$"
)
ENV_KEY_RE = re.compile(r"^[a-zA-Z]\w+$")
RESERVED_ENV = frozenset(
    {
        "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
    }
)
SUPPORTED_RUNTIMES = re.compile(r"^(python3\.\d+|provided(\.al2|\.al2023)?)$")


def parse_function_ref(raw: str) -> tuple[str, str | None]:
    """(name, qualifier or None) of a name, a partial ARN or a full ARN (``name:alias``, ``arn:…:name:3``)."""
    match = ARN_RE.match(raw or "")
    if not match:
        raise invalid(f"1 validation error detected: Value '{raw}' at 'functionName' failed to satisfy "
                      "constraint: Member must satisfy regular expression pattern")
    return match.group(1), match.group(2)


def parse_function_name(raw: str) -> str:
    """The function name of a name or ARN that names no version or alias (``$LATEST`` is allowed)."""
    name, qualifier = parse_function_ref(raw)
    if qualifier not in (None, "$LATEST"):
        raise invalid(f"{raw} names a version or alias; this operation takes the function's name or ARN")
    return name


def now_iso() -> str:
    """Lambda's LastModified format: ``2019-08-14T22:26:11.234+0000``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


def int_in(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"1 validation error detected: Value '{value}' at '{name}' failed to satisfy "
                      f"constraint: Member must have value between {low} and {high}")
    return value


def validate_environment(env: Any) -> dict[str, str]:
    if env is None:
        return {}
    variables = env.get("Variables") if isinstance(env, dict) else None
    if variables is None:
        return {}
    if not isinstance(variables, dict):
        raise invalid("Environment.Variables must be a map of strings")
    for key, value in variables.items():
        if not ENV_KEY_RE.match(key):
            raise invalid(f"Environment variable name '{key}' is not valid ([a-zA-Z][a-zA-Z0-9_]+)")
        if not isinstance(value, str):
            raise invalid(f"Environment variable '{key}' must be a string")
    reserved = sorted(set(variables) & RESERVED_ENV)
    if reserved:
        raise invalid("Lambda was unable to configure your environment variables because the environment "
                      f"variables you have provided contains reserved keys that are currently not supported "
                      f"for modification. Reserved keys used in this request: {', '.join(reserved)}")
    if sum(len(k) + len(v) for k, v in variables.items()) > MAX_ENV_BYTES:
        raise invalid("Lambda was unable to configure your environment variables because the environment "
                      "variables you have provided exceeded the 4KB limit.")
    return dict(variables)


def decode_zip(code: Any) -> bytes:
    """The zip of ``Code.ZipFile`` (base64 in the JSON body, as boto3 sends it)."""
    if not isinstance(code, dict):
        raise invalid("Code is required")
    if "ZipFile" not in code:
        raise invalid("corral-emulator supports Code.ZipFile and Code.S3Bucket/S3Key only (not images)")
    try:
        data = base64.b64decode(code["ZipFile"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise invalid("Code.ZipFile is not valid base64") from None
    check_zip_size(data)
    return data


def is_s3_code(code: Any) -> bool:
    return isinstance(code, dict) and "ZipFile" not in code and ("S3Bucket" in code or "S3Key" in code)


def fetch_s3_code(code: dict) -> bytes:
    """The zip at ``Code.S3Bucket/S3Key`` (``S3ObjectVersion``), read with boto3 from the S3 endpoint and
    with the credentials of the emulator's environment (``AWS_ENDPOINT_URL_S3``…). Blocking."""
    bucket, key, version = code.get("S3Bucket"), code.get("S3Key"), code.get("S3ObjectVersion")
    if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
        raise invalid("Code.S3Bucket and Code.S3Key are both required")
    try:
        import boto3
        import botocore.exceptions
    except ImportError:
        raise invalid("corral-emulator reads Code.S3Bucket/S3Key with boto3, which is not installed") from None
    try:
        client = boto3.client("s3")
        answer = client.get_object(Bucket=bucket, Key=key, **({"VersionId": version} if version else {}))
        data = answer["Body"].read()
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        raise invalid(f"Error occurred while GetObject. S3 Error Code: {error.get('Code')}. "
                      f"S3 Error Message: {error.get('Message')}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise invalid(f"Error occurred while GetObject: {exc}") from None
    return data


def check_zip_size(data: bytes) -> None:
    if len(data) > MAX_ZIP_BYTES:
        raise ApiError("RequestEntityTooLargeException", 413,
                       f"Request must be smaller than {MAX_ZIP_BYTES} bytes for the CreateFunction operation")


def extract_zip(data: bytes, dest: Path, max_unzipped: int = MAX_UNZIPPED_BYTES) -> None:
    """Unzip a deployment package into ``dest`` keeping Unix modes (an executable ``bootstrap`` stays so)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError):
        raise invalid("Could not unzip uploaded file. Please check your file, then try to upload again.") from None
    if sum(i.file_size for i in infos) > max_unzipped:
        raise invalid(f"Unzipped size must be smaller than {max_unzipped} bytes")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        for info in infos:
            target = (dest / info.filename).resolve()
            if root != target and root not in target.parents:
                raise invalid(f"Could not unzip uploaded file: unsafe path {info.filename!r}")
            mode = (info.external_attr >> 16) & 0o777
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                os.chmod(target, (mode | 0o755) if mode else 0o755)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            os.chmod(target, (mode | 0o444) if mode else 0o644)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise invalid(f"Could not unzip uploaded file: {exc}") from None
    for path in [dest, *dest.rglob("*")]:
        if path.is_dir():
            path.chmod(path.stat().st_mode | stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


@dataclass
class Function:
    """One version of a function: ``$LATEST`` (the one updates change, which also holds the function's tags,
    reserved concurrency, published versions, aliases and event invoke configs) or a published one, whose
    code and configuration never change. Each version is a pool function of its own: its own sandboxes.
    ``generation`` changes with every code or configuration update of ``$LATEST``."""

    name: str
    arn: str  # FunctionArn: unqualified for $LATEST, ``…:function:name:3`` for version 3
    runtime: str
    handler: str
    role: str
    memory_size: int = 128
    timeout: int = 3
    environment: dict[str, str] = field(default_factory=dict)
    description: str = ""
    architectures: list[str] = field(default_factory=lambda: ["x86_64"])
    ephemeral_storage: int = 512
    code_sha256: str = ""
    code_size: int = 0
    code_dir: Path | None = None
    zip_bytes: bytes = b""
    reserved_concurrency: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    last_modified: str = field(default_factory=now_iso)
    revision_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    generation: int = 0
    retired: bool = False  # deleted
    version: str = "$LATEST"
    versions: dict[str, Function] = field(default_factory=dict)  # published ones, by number ($LATEST's)
    last_version: int = 0  # numbers are never reused, even after a version is deleted
    published_generation: int | None = None  # $LATEST's generation when it was last published
    aliases: dict[str, Alias] = field(default_factory=dict)
    event_configs: dict[str, EventInvokeConfig] = field(default_factory=dict)  # by qualifier

    @property
    def instance_limit(self) -> int | None:
        return self.reserved_concurrency  # the service counts every version against it (``LambdaService.invoke``)

    @property
    def qualified_arn(self) -> str:
        """``…:function:name:$LATEST`` or ``…:function:name:3`` (as ListVersionsByFunction shows them)."""
        return self.arn if self.version != "$LATEST" else f"{self.arn}:$LATEST"

    def publish(self, number: int, description: str) -> Function:
        """A published version: a copy of this ($LATEST's) code and configuration that never changes."""
        return replace(
            self, version=str(number), arn=f"{self.arn}:{number}", description=description,
            environment=dict(self.environment), architectures=list(self.architectures), tags={},
            reserved_concurrency=None, last_modified=now_iso(), revision_id=str(uuid.uuid4()), generation=0,
            versions={}, last_version=0, published_generation=None, aliases={}, event_configs={})

    def new_sandbox(self, engine: Engine) -> LambdaSandbox:
        from corral_emulator.lambda_sandbox import LambdaSandbox

        return LambdaSandbox(engine, self)

    def touch(self) -> None:
        self.last_modified = now_iso()
        self.revision_id = str(uuid.uuid4())
        self.generation += 1

    def set_code(self, data: bytes, code_root: Path) -> None:
        digest = hashlib.sha256(data).digest()
        code_dir = code_root / f"{self.name}-{uuid.uuid4().hex[:12]}"
        extract_zip(data, code_dir)
        self.code_sha256 = base64.b64encode(digest).decode()
        self.code_size = len(data)
        self.code_dir = code_dir
        self.zip_bytes = data

    def configure(self, body: dict, *, creating: bool) -> None:
        """Apply (and validate) the configuration fields of CreateFunction / UpdateFunctionConfiguration."""
        if "Runtime" in body or creating:
            runtime = body.get("Runtime")
            if not isinstance(runtime, str) or not SUPPORTED_RUNTIMES.match(runtime):
                raise invalid(f"The runtime parameter of {runtime} is not supported by corral-emulator "
                              "(python3.x and provided.* are)")
            self.runtime = runtime
        if "Handler" in body or creating:
            handler = body.get("Handler")
            if not isinstance(handler, str) or not handler or len(handler) > 128:
                raise invalid("Handler is required (e.g. module.function)")
            self.handler = handler
        if "Role" in body or creating:
            role = body.get("Role")
            if not isinstance(role, str) or not role:
                raise invalid("Role is required")
            self.role = role
        if "MemorySize" in body:
            self.memory_size = int_in(body["MemorySize"], "memorySize", 128, 10240)
        if "Timeout" in body:
            self.timeout = int_in(body["Timeout"], "timeout", 1, 900)
        if "Environment" in body:
            self.environment = validate_environment(body["Environment"])
        if "Description" in body:
            self.description = str(body["Description"] or "")
        if "EphemeralStorage" in body:
            size = (body["EphemeralStorage"] or {}).get("Size", 512)
            self.ephemeral_storage = int_in(size, "ephemeralStorage.size", 512, 10240)
        if "Architectures" in body:
            archs = body["Architectures"]
            if archs not in (["x86_64"], ["arm64"]):
                raise invalid("Architectures must be [\"x86_64\"] or [\"arm64\"]")
            self.architectures = list(archs)

    def configuration(self) -> dict:
        """The FunctionConfiguration shape."""
        return {
            "FunctionName": self.name,
            "FunctionArn": self.arn,
            "Runtime": self.runtime,
            "Role": self.role,
            "Handler": self.handler,
            "CodeSize": self.code_size,
            "Description": self.description,
            "Timeout": self.timeout,
            "MemorySize": self.memory_size,
            "LastModified": self.last_modified,
            "CodeSha256": self.code_sha256,
            "Version": self.version,
            "Environment": {"Variables": dict(self.environment)},
            "TracingConfig": {"Mode": "PassThrough"},
            "RevisionId": self.revision_id,
            "State": "Active",
            "LastUpdateStatus": "Successful",
            "PackageType": "Zip",
            "Architectures": list(self.architectures),
            "EphemeralStorage": {"Size": self.ephemeral_storage},
            "SnapStart": {"ApplyOn": "None", "OptimizationStatus": "Off"},
            "LoggingConfig": {"LogFormat": "Text", "LogGroup": f"/aws/lambda/{self.name}"},
        }
