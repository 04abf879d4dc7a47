"""Lambda's side of the emulator: its functions, their invocations (through the shared pool) and their logs."""

from __future__ import annotations

import base64
import logging
import math
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors

from corral_emulator.engine import Engine, PoolFull
from corral_emulator.errors import ApiError, conflict, invalid, not_found, throttled
from corral_emulator.functions import (
    MAX_UNZIPPED_BYTES,
    MAX_ZIP_BYTES,
    Function,
    decode_zip,
    fetch_s3_code,
    is_s3_code,
    parse_function_ref,
)
from corral_emulator.lambda_aliases import VERSION_RE, Alias, check_alias_name, parse_weights
from corral_emulator.lambda_events import EventInvokeConfig, EventQueue
from corral_emulator.lambda_sandbox import Invocation, LambdaSandbox, Outcome
from corral_emulator.sandbox import MB

log = logging.getLogger("corral_emulator")

TAIL_BYTES = 4096
TOTAL_CODE_BYTES = 80 * 1024 ** 3  # Lambda's default storage for every function's packages (75 GB)


@dataclass
class InvokeResult:
    """A finished RequestResponse invocation, with what the caller gets in headers."""

    request_id: str
    version: str  # the version that ran (an alias's target)
    outcome: Outcome
    duration_ms: float
    billed_ms: int
    memory_size: int
    max_memory_mb: int | None
    init_duration_ms: float | None
    cold: bool
    log_text: str

    def headers(self, tail: bool) -> dict[str, str]:
        headers = {
            "X-Amzn-RequestId": self.request_id,
            "X-Amz-Executed-Version": self.version,
            "X-Corral-Duration-Ms": f"{self.duration_ms:.2f}",
            "X-Corral-Billed-Duration-Ms": str(self.billed_ms),
            "X-Corral-Memory-Size-Mb": str(self.memory_size),
            "X-Corral-Cold-Start": "true" if self.cold else "false",
        }
        if self.max_memory_mb is not None:
            headers["X-Corral-Max-Memory-Used-Mb"] = str(self.max_memory_mb)
        if self.init_duration_ms is not None:
            headers["X-Corral-Init-Duration-Ms"] = f"{self.init_duration_ms:.2f}"
        if self.outcome.function_error:
            headers["X-Amz-Function-Error"] = self.outcome.function_error
        if self.outcome.error_type:
            headers["X-Corral-Error-Type"] = self.outcome.error_type
        if tail:
            data = self.log_text.encode("utf-8")[-TAIL_BYTES:]
            headers["X-Amz-Log-Result"] = base64.b64encode(data).decode()
        return headers


class LambdaService:
    """The functions of the Lambda API and their invocations."""

    def __init__(self, engine: Engine, account_id: str, event_retry_delay: float = 60.0) -> None:
        self.engine = engine
        self.region = engine.region
        self.account_id = account_id
        self.functions: dict[str, Function] = {}  # their $LATEST, by name
        self.code_root = engine.workdir / "code"
        self.bootstrap_file = engine.workdir / "runtime" / "bootstrap.py"
        self.events = EventQueue(self, event_retry_delay)
        engine.code_in_use.append(lambda: (v.code_dir for f in self.functions.values() for v in self.all_versions(f)))

    async def start(self) -> None:
        self.code_root.mkdir(parents=True, exist_ok=True)
        self.bootstrap_file.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(__file__).with_name("bootstrap.py"), self.bootstrap_file)
        self.bootstrap_file.chmod(0o644)

    @property
    def max_concurrency(self) -> int:
        return self.engine.max_concurrency

    def arn(self, name: str) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{name}"

    # ---------------------------------------------------------------- functions
    def get(self, name: str) -> Function:
        function = self.functions.get(name)
        if function is None:
            raise not_found(f"Function not found: {self.arn(name)}")
        return function

    @staticmethod
    def all_versions(function: Function) -> list[Function]:
        return [function, *function.versions.values()]

    def resolve(self, raw: str, qualifier: str | None = None, *, pick: bool = True) -> tuple[Function, Function, str]:
        """($LATEST, the version to use, the ARN as invoked) of a name or ARN and a ``Qualifier``: ``$LATEST``,
        a version number or an alias (whose routing weights choose the version when ``pick``)."""
        name, in_name = parse_function_ref(raw)
        if in_name is not None and qualifier is not None and in_name != qualifier:
            raise invalid("The derived qualifier from the function name does not match the specified qualifier.")
        qualifier = qualifier if qualifier is not None else in_name
        function = self.get(name)
        if qualifier in (None, "$LATEST"):
            return function, function, function.arn if qualifier is None else f"{function.arn}:$LATEST"
        invoked = f"{function.arn}:{qualifier}"
        if VERSION_RE.match(qualifier):
            version = function.versions.get(qualifier)
            if version is None:
                raise not_found(f"Function not found: {invoked}")
            return function, version, invoked
        alias = function.aliases.get(qualifier)
        if alias is None:
            raise not_found(f"Function not found: {invoked}")
        number = alias.pick_version() if pick else alias.function_version
        return function, self.version_of(function, number), invoked

    @staticmethod
    def version_of(function: Function, number: str) -> Function:
        return function if number == "$LATEST" else function.versions[number]

    async def code_bytes(self, code: Any) -> bytes:
        """The zip of a Code shape: inline (``ZipFile``) or fetched from S3 (``S3Bucket``/``S3Key``)."""
        if is_s3_code(code):
            return await self.engine.blocking(fetch_s3_code, code)
        return decode_zip(code)

    async def create_function(self, name: str, body: dict) -> Function:
        if name in self.functions:
            raise conflict(f"Function already exist: {name}")
        data = await self.code_bytes(body.get("Code"))
        function = Function(name=name, arn=self.arn(name), runtime="", handler="", role="")
        function.configure(body, creating=True)
        function.tags = check_tags(body.get("Tags") or {})
        await self.engine.blocking(function.set_code, data, self.code_root)
        if name in self.functions:  # created meanwhile
            await self.engine.blocking(shutil.rmtree, function.code_dir, True)
            raise conflict(f"Function already exist: {name}")
        self.functions[name] = function
        return function

    def check_revision(self, function: Function, body: dict) -> None:
        revision = body.get("RevisionId")
        if revision and revision != function.revision_id:
            raise ApiError("PreconditionFailedException", 412,
                           "The Revision Id provided does not match the latest Revision Id. "
                           "Call the GetFunction/GetAlias API to retrieve the latest Revision Id")

    async def update_code(self, name: str, body: dict) -> Function:
        function = self.get(name)
        self.check_revision(function, body)
        data = await self.code_bytes({k: body[k] for k in ("ZipFile", "S3Bucket", "S3Key", "S3ObjectVersion")
                                      if k in body})
        if "Architectures" in body:  # on AWS, the architecture changes with the code, not the configuration
            function.configure({"Architectures": body["Architectures"]}, creating=False)
        old_dir = function.code_dir
        await self.engine.blocking(function.set_code, data, self.code_root)
        function.touch()
        await self.engine.retire_stale(function)
        self.engine.spawn(self.engine.collect_code(old_dir))
        return function

    async def update_configuration(self, name: str, body: dict) -> Function:
        function = self.get(name)
        self.check_revision(function, body)
        function.configure(body, creating=False)
        function.touch()
        await self.engine.retire_stale(function)
        return function

    async def delete_function(self, name: str, qualifier: str | None = None) -> None:
        """Delete the function with all its versions and aliases, or (``qualifier``) one published version."""
        if qualifier not in (None, "$LATEST") and not VERSION_RE.match(qualifier):
            raise invalid("Deletion of aliases is not supported by DeleteFunction; use DeleteAlias")
        if qualifier == "$LATEST":
            raise invalid("$LATEST version cannot be deleted without deleting the function.")
        function = self.get(name)
        if qualifier is not None:
            version = function.versions.get(qualifier)
            if version is None:
                raise not_found(f"Function not found: {function.arn}:{qualifier}")
            users = sorted(a.arn for a in function.aliases.values() if a.points_at(qualifier))
            if users:
                raise conflict(f"Unable to delete version because the following aliases reference it: {users}")
            del function.versions[qualifier]
            function.event_configs.pop(qualifier, None)
            retired = [version]
        else:
            del self.functions[name]
            retired = self.all_versions(function)
        for version in retired:
            version.retired = True
            await self.engine.retire_stale(version)
            self.engine.spawn(self.engine.collect_code(version.code_dir))

    # ---------------------------------------------------------------- versions and aliases
    def publish_version(self, name: str, body: dict) -> Function:
        """A new version from $LATEST, or the newest one if $LATEST has not changed since (as Lambda does)."""
        function = self.get(name)
        self.check_revision(function, body)
        sha = body.get("CodeSha256")
        if sha and sha != function.code_sha256:
            raise invalid(f"CodeSHA256 ({sha}) is different from current CodeSHA256 in $LATEST "
                          f"({function.code_sha256}). Please try again with the CodeSHA256 in $LATEST.")
        if function.published_generation == function.generation and function.versions:
            return function.versions[str(max(int(n) for n in function.versions))]
        function.last_version += 1
        description = body.get("Description")  # else $LATEST's, as on Lambda
        version = function.publish(function.last_version, function.description if description is None
                                   else str(description))
        function.versions[version.version] = version
        function.published_generation = function.generation
        return version

    def list_versions(self, name: str) -> list[Function]:
        function = self.get(name)
        return [function, *(function.versions[n] for n in sorted(function.versions, key=int))]

    def _alias_target(self, function: Function, number: object) -> str:
        if not isinstance(number, str) or not VERSION_RE.match(number):
            raise invalid(f"1 validation error detected: Value '{number}' at 'functionVersion' failed to satisfy "
                          "constraint: Member must satisfy regular expression pattern: (\\$LATEST|[0-9]+)")
        if number != "$LATEST" and number not in function.versions:
            raise not_found(f"Function not found: {function.arn}:{number}")
        return number

    def create_alias(self, name: str, body: dict) -> Alias:
        function = self.get(name)
        alias_name = check_alias_name(body.get("Name"))
        number = self._alias_target(function, body.get("FunctionVersion"))
        if alias_name in function.aliases:
            raise conflict(f"Alias already exists: {function.arn}:{alias_name}")
        weights = parse_weights(body.get("RoutingConfig"), number, set(function.versions))
        alias = Alias(name=alias_name, arn=f"{function.arn}:{alias_name}", function_version=number,
                      description=str(body.get("Description") or ""), weights=weights)
        function.aliases[alias_name] = alias
        return alias

    def get_alias(self, name: str, alias_name: str) -> Alias:
        function = self.get(name)
        alias = function.aliases.get(alias_name)
        if alias is None:
            raise not_found(f"Alias not found: {function.arn}:{alias_name}")
        return alias

    def update_alias(self, name: str, alias_name: str, body: dict) -> Alias:
        function = self.get(name)
        alias = self.get_alias(name, alias_name)
        if body.get("RevisionId") and body["RevisionId"] != alias.revision_id:
            raise ApiError("PreconditionFailedException", 412,
                           "The Revision Id provided does not match the latest Revision Id. "
                           "Call the GetFunction/GetAlias API to retrieve the latest Revision Id")
        number = alias.function_version
        if "FunctionVersion" in body:
            number = self._alias_target(function, body["FunctionVersion"])
        routing = body.get("RoutingConfig") if "RoutingConfig" in body else (
            {"AdditionalVersionWeights": alias.weights} if alias.weights else None)
        alias.weights = parse_weights(routing, number, set(function.versions))
        alias.function_version = number
        if "Description" in body:
            alias.description = str(body["Description"] or "")
        alias.revision_id = str(uuid.uuid4())
        return alias

    def delete_alias(self, name: str, alias_name: str) -> None:
        function = self.get(name)
        function.aliases.pop(alias_name, None)  # idempotent, as on AWS
        function.event_configs.pop(alias_name, None)

    # ---------------------------------------------------------------- tags and account
    def tagged(self, resource: str) -> Function:
        """The function a TagResource / ListTags / UntagResource ARN names (functions are tagged, not versions)."""
        name, qualifier = parse_function_ref(resource)
        if not resource.startswith("arn:"):
            raise invalid(f"Tags are set on a function's ARN, not on {resource!r}")
        if qualifier is not None:
            raise invalid(f"Tags are not supported on versions or aliases: {resource}")
        return self.get(name)

    def account_settings(self) -> dict:
        versions = [v for f in self.functions.values() for v in self.all_versions(f)]
        reserved = sum(f.reserved_concurrency or 0 for f in self.functions.values())
        return {
            "AccountLimit": {
                "TotalCodeSize": TOTAL_CODE_BYTES,
                "CodeSizeUnzipped": MAX_UNZIPPED_BYTES,
                "CodeSizeZipped": MAX_ZIP_BYTES,
                "ConcurrentExecutions": self.max_concurrency,
                "UnreservedConcurrentExecutions": max(0, self.max_concurrency - reserved),
            },
            "AccountUsage": {
                "TotalCodeSize": sum(v.code_size for v in versions),  # every version's package counts
                "FunctionCount": len(self.functions),
            },
        }

    # ---------------------------------------------------------------- event invoke configs
    def event_config(self, raw: str, qualifier: str | None) -> EventInvokeConfig:
        function, _, arn = self.resolve(raw, qualifier, pick=False)
        config = function.event_configs.get(self._config_key(raw, qualifier))
        if config is None:
            raise not_found(f"The function {arn} doesn't have an EventInvokeConfig")
        return config

    def put_event_config(self, raw: str, qualifier: str | None, body: dict, *, replace: bool) -> EventInvokeConfig:
        """PutFunctionEventInvokeConfig (``replace``) or UpdateFunctionEventInvokeConfig (which needs one)."""
        function, _, arn = self.resolve(raw, qualifier, pick=False)
        key = self._config_key(raw, qualifier)
        current = function.event_configs.get(key) if not replace else None
        if current is None and not replace:
            raise not_found(f"The function {arn} doesn't have an EventInvokeConfig")
        config = current or EventInvokeConfig(function_arn=arn)
        config.update(body, replace=replace)
        function.event_configs[key] = config
        return config

    @staticmethod
    def _config_key(raw: str, qualifier: str | None) -> str:
        return qualifier or parse_function_ref(raw)[1] or "$LATEST"

    def delete_event_config(self, raw: str, qualifier: str | None) -> None:
        function, _, _ = self.resolve(raw, qualifier, pick=False)
        self.event_config(raw, qualifier)
        function.event_configs.pop(self._config_key(raw, qualifier))

    def event_configs(self, raw: str) -> list[EventInvokeConfig]:
        function, _, _ = self.resolve(raw, None)
        return list(function.event_configs.values())


    # ---------------------------------------------------------------- invocations
    async def invoke(self, function: Function, version: Function, invoked_arn: str, payload: bytes,
                     client_context: str | None = None, request_id: str | None = None,
                     invocation_type: str = "RequestResponse") -> InvokeResult:
        """Run one invocation of ``version`` (of ``function``, whose reserved concurrency all versions share)."""
        engine = self.engine
        if engine.inject_throttle():
            raise throttled("ConcurrentInvocationLimitExceeded")
        reserved = function.reserved_concurrency
        if reserved is not None and sum(engine.in_use(v) for v in self.all_versions(function)) >= reserved:
            raise throttled("ReservedFunctionConcurrentInvocationLimitExceeded")
        try:
            sandbox, cold = engine.acquire(version)
        except PoolFull as full:
            raise throttled("ReservedFunctionConcurrentInvocationLimitExceeded" if full.scope == "function"
                            else "ConcurrentInvocationLimitExceeded") from None
        assert isinstance(sandbox, LambdaSandbox)
        invocation = Invocation(
            request_id=request_id or str(uuid.uuid4()),
            payload=payload,
            function_arn=invoked_arn,
            timeout=version.timeout,
            client_context=client_context,
        )
        outcome: Outcome | None = None
        try:
            if cold:
                try:
                    await sandbox.start()
                except (docker.errors.DockerException, OSError) as exc:
                    log.error("cannot start a container for %s: %s", version.arn, exc)
                    raise ApiError("ServiceException", 500,
                                   f"corral-emulator could not start a container: {exc}") from None
            outcome = await sandbox.invoke(invocation, cold)
            if invocation.peak_bytes is None and sandbox.probe is None and sandbox.state == "ready":
                invocation.peak_bytes = await engine.blocking(engine.stats_peak, sandbox.container_id)
        finally:
            sandbox.current = None
            engine.release(sandbox, reusable=outcome is not None and not outcome.fatal)
        return self.report(version, sandbox, invocation, outcome, cold)

    def report(self, function: Function, sandbox: LambdaSandbox, invocation: Invocation, outcome: Outcome,
               cold: bool) -> InvokeResult:
        """Write START / output / END / REPORT to the function's log; return the measures."""
        duration = invocation.duration_ms
        billed = max(1, math.ceil(duration))
        peak = invocation.peak_bytes
        max_memory = None if peak is None else min(sandbox.memory_size, max(1, round(peak / MB)))
        init_ms = sandbox.init_duration_ms() if cold else None
        rid = invocation.request_id
        output = sandbox.read_output(sandbox.log_offset)
        init_output = ""
        if cold and sandbox.log_offset:
            init_output = sandbox.read_output(0, sandbox.log_offset)
        if output and not output.endswith("\n"):
            output += "\n"
        report = (f"REPORT RequestId: {rid}\tDuration: {duration:.2f} ms\tBilled Duration: {billed} ms\t"
                  f"Memory Size: {sandbox.memory_size} MB\t")
        if max_memory is not None:
            report += f"Max Memory Used: {max_memory} MB\t"
        if init_ms is not None:
            report += f"Init Duration: {init_ms:.2f} ms\t"
        if outcome.status:
            report += f"Status: {outcome.status}\t"
            if outcome.status == "error" and outcome.error_type:
                report += f"Error Type: {outcome.error_type}\t"
        text = (f"START RequestId: {rid} Version: {function.version}\n{output}{outcome.platform_log}"
                f"END RequestId: {rid}\n{report}\n")
        self.engine.write_log(function.name, init_output + text)
        return InvokeResult(
            request_id=rid,
            version=function.version,
            outcome=outcome,
            duration_ms=duration,
            billed_ms=billed,
            memory_size=sandbox.memory_size,
            max_memory_mb=max_memory,
            init_duration_ms=init_ms,
            cold=cold,
            log_text=text,
        )

    def submit_event(self, name: str, qualifier: str | None, payload: bytes) -> str:
        """An asynchronous (Event) invocation: queued, run when capacity allows, retried as Lambda does."""
        return self.events.submit(name, qualifier, payload)


def check_tags(tags: object) -> dict[str, str]:
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise invalid("Tags must be a map of strings to strings")
    if any(not 1 <= len(k) <= 128 or len(v) > 256 for k, v in tags.items()):
        raise invalid("A tag key must have 1 to 128 characters, a value at most 256")
    if any(k.lower().startswith("aws:") for k in tags):
        raise invalid("Tag keys starting with 'aws:' are reserved for AWS")
    return dict(tags)
