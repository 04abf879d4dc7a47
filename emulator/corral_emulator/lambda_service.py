"""Lambda's side of the emulator: its functions, their invocations (through the shared pool) and their logs."""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import random
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors

from corral_emulator.engine import Engine, PoolFull
from corral_emulator.errors import ApiError, conflict, not_found, throttled
from corral_emulator.functions import Function, decode_zip, fetch_s3_code, is_s3_code
from corral_emulator.lambda_sandbox import Invocation, LambdaSandbox, Outcome
from corral_emulator.sandbox import MB

log = logging.getLogger("corral_emulator")

TAIL_BYTES = 4096


@dataclass
class InvokeResult:
    """A finished RequestResponse invocation, with what the caller gets in headers."""

    request_id: str
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
            "X-Amz-Executed-Version": "$LATEST",
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

    def __init__(self, engine: Engine, account_id: str) -> None:
        self.engine = engine
        self.region = engine.region
        self.account_id = account_id
        self.functions: dict[str, Function] = {}
        self.code_root = engine.workdir / "code"
        self.bootstrap_file = engine.workdir / "runtime" / "bootstrap.py"
        engine.code_in_use.append(lambda: (f.code_dir for f in self.functions.values()))

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
        function.tags = dict(body.get("Tags") or {})
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

    async def delete_function(self, name: str) -> None:
        function = self.functions.pop(name, None)
        if function is None:
            raise not_found(f"Function not found: {self.arn(name)}")
        function.retired = True
        await self.engine.retire_stale(function)
        self.engine.spawn(self.engine.collect_code(function.code_dir))

    # ---------------------------------------------------------------- invocations
    async def invoke(self, function: Function, payload: bytes, client_context: str | None = None,
                     request_id: str | None = None) -> InvokeResult:
        engine = self.engine
        if engine.inject_throttle():
            raise throttled("ConcurrentInvocationLimitExceeded")
        try:
            sandbox, cold = engine.acquire(function)
        except PoolFull as full:
            raise throttled("ReservedFunctionConcurrentInvocationLimitExceeded" if full.scope == "function"
                            else "ConcurrentInvocationLimitExceeded") from None
        assert isinstance(sandbox, LambdaSandbox)
        invocation = Invocation(
            request_id=request_id or str(uuid.uuid4()),
            payload=payload,
            function_arn=function.arn,
            timeout=function.timeout,
            client_context=client_context,
        )
        outcome: Outcome | None = None
        try:
            if cold:
                try:
                    await sandbox.start()
                except (docker.errors.DockerException, OSError) as exc:
                    log.error("cannot start a container for %s: %s", function.name, exc)
                    raise ApiError("ServiceException", 500,
                                   f"corral-emulator could not start a container: {exc}") from None
            outcome = await sandbox.invoke(invocation, cold)
            if invocation.peak_bytes is None and sandbox.probe is None and sandbox.state == "ready":
                invocation.peak_bytes = await engine.blocking(engine.stats_peak, sandbox.container_id)
        finally:
            sandbox.current = None
            engine.release(sandbox, reusable=outcome is not None and not outcome.fatal)
        return self.report(function, sandbox, invocation, outcome, cold)

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
        text = (f"START RequestId: {rid} Version: $LATEST\n{output}{outcome.platform_log}"
                f"END RequestId: {rid}\n{report}\n")
        self.engine.write_log(function.name, init_output + text)
        return InvokeResult(
            request_id=rid,
            outcome=outcome,
            duration_ms=duration,
            billed_ms=billed,
            memory_size=sandbox.memory_size,
            max_memory_mb=max_memory,
            init_duration_ms=init_ms,
            cold=cold,
            log_text=text,
        )

    def submit_event(self, function: Function, payload: bytes) -> str:
        """An asynchronous (Event) invocation: queued, run when capacity allows."""
        request_id = str(uuid.uuid4())
        self.engine.spawn(self._run_event(function.name, payload, request_id))
        return request_id

    async def _run_event(self, name: str, payload: bytes, request_id: str) -> None:
        delay = 0.05
        while not self.engine.closing:
            function = self.functions.get(name)
            if function is None:
                log.warning("event %s dropped: function %s was deleted", request_id, name)
                return
            try:
                result = await self.invoke(function, payload, request_id=request_id)
            except ApiError as exc:
                if exc.code != "TooManyRequestsException":
                    log.warning("event %s for %s failed: %s", request_id, name, exc.message)
                    return
                await asyncio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
                continue
            if result.outcome.function_error:
                log.info("event %s for %s ended with %s", request_id, name, result.outcome.error_type)
            return
