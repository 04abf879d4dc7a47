"""A Lambda sandbox: the container runs a Lambda runtime, which polls this sandbox's Runtime API server.

``invoke()`` puts an invocation in the sandbox's inbox; the runtime takes it with ``/invocation/next``
and posts the result (``runtime_api``). The container itself (memory cap, mounts, logs, exit) is the
generic ``Sandbox``'s.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web

from corral_emulator.runtime_api import MAX_RESPONSE_BYTES, make_app
from corral_emulator.sandbox import MB, Sandbox, iso_now

if TYPE_CHECKING:
    from corral_emulator.engine import Engine
    from corral_emulator.functions import Function

BOOTSTRAP_PATH = "/opt/corral/bootstrap.py"
TASK_ROOT = "/var/task"


@dataclass
class Outcome:
    """How an invocation ended."""

    payload: bytes
    function_error: str | None = None  # X-Amz-Function-Error ("Unhandled")
    error_type: str | None = None  # errorType, when the invocation failed
    status: str | None = None  # REPORT "Status: timeout" / "Status: error"
    fatal: bool = False  # the sandbox cannot serve again
    platform_log: str = ""  # lines the platform adds to the log (the timeout message)


@dataclass
class Invocation:
    request_id: str
    payload: bytes
    function_arn: str
    timeout: float
    client_context: str | None = None
    trace_id: str = field(default_factory=lambda: (
        f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0"))
    deadline_ms: int = 0
    started: float | None = None  # monotonic time of dispatch to the runtime
    finished: float | None = None
    peak_bytes: int | None = None
    dispatched: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    result: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def duration_ms(self) -> float:
        if self.started is None:
            return 0.0
        return ((self.finished or time.monotonic()) - self.started) * 1000.0


def error_payload(error_type: str, message: str) -> bytes:
    return json.dumps({"errorMessage": message, "errorType": error_type}).encode()


class LambdaSandbox(Sandbox):
    """A Lambda sandbox: its runtime in the container polls this sandbox's own Runtime API server."""

    platform = "lambda"
    working_dir = TASK_ROOT

    def __init__(self, engine: Engine, function: Function) -> None:
        super().__init__(engine, function, function.memory_size * MB, function.timeout, function.environment)
        self.function_arn = function.arn
        self.memory_size = function.memory_size
        self.handler = function.handler
        self.runtime = function.runtime
        self.version = function.version
        self.ephemeral_storage = function.ephemeral_storage
        self.log_stream_name = f"{datetime.now(UTC):%Y/%m/%d}/[{function.version}]{uuid.uuid4().hex}"
        self.current: Invocation | None = None
        self.inbox: asyncio.Queue[Invocation] = asyncio.Queue()
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.init_error = False

    # ---------------------------------------------------------------- the container
    async def prepare(self) -> None:
        """Serve this sandbox's Runtime API on a port of its own (the runtime finds it in the environment)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        # handler_cancellation: the runtime's long poll for its next invocation ends with its connection
        # (the container removed), instead of waiting on the inbox forever ("Task was destroyed but it is
        # pending!" once the retired sandbox is collected)
        self.runner = web.AppRunner(make_app(self), access_log=None, handle_signals=False, shutdown_timeout=0.1,
                                    handler_cancellation=True)
        await self.runner.setup()
        await web.SockSite(self.runner, sock).start()

    async def shutdown(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def platform_environment(self) -> dict[str, str]:
        engine = self.engine
        env = {
            "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_size),
            "AWS_LAMBDA_FUNCTION_VERSION": self.version,
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self.port}",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": self.log_stream_name,
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_REGION": engine.region,
            "AWS_DEFAULT_REGION": engine.region,
            "LAMBDA_TASK_ROOT": TASK_ROOT,
            "LAMBDA_RUNTIME_DIR": "/opt/corral",
            "_HANDLER": self.handler,
            "PYTHONPATH": TASK_ROOT,
            "PYTHONUNBUFFERED": "1",
            "LANG": "C.UTF-8",
            "TZ": ":UTC",
        }
        if self.runtime.startswith("python"):
            env["AWS_EXECUTION_ENV"] = f"AWS_Lambda_{self.runtime}"
        return env

    def command(self) -> list[str]:
        if self.runtime.startswith("python"):
            return ["python3", BOOTSTRAP_PATH]
        return [f"{TASK_ROOT}/bootstrap"]  # provided.*: the package's own executable bootstrap, as on Lambda

    def platform_volumes(self) -> dict[str, dict[str, str]]:
        return {
            str(self.code_dir): {"bind": TASK_ROOT, "mode": "ro"},
            str(self.engine.workdir / "runtime" / "bootstrap.py"): {"bind": BOOTSTRAP_PATH, "mode": "ro"},
        }

    def cpu_share(self) -> float:
        return self.memory_size / 1769  # Lambda gives one vCPU at 1769 MB, proportionally less below

    def platform_tmpfs(self) -> dict[str, str]:
        # /tmp of the function's EphemeralStorage size: writing past it fails with ENOSPC, as on Lambda. A tmpfs
        # is the size limit Docker offers on any storage driver; its pages count against the memory cap, so
        # without ``tmp_cap`` /tmp stays on the container's disk.
        if not self.engine.tmp_cap:
            return {}
        return {"/tmp": f"size={self.ephemeral_storage}m,mode=1777,exec"}

    # ---------------------------------------------------------------- invocation
    async def invoke(self, invocation: Invocation, cold: bool) -> Outcome:
        self.current = invocation
        self.invocations += 1
        self.log_offset = self.log_size()
        if self.state == "dead":
            self.fail_exited(invocation)
            return invocation.result.result()
        await self.inbox.put(invocation)
        wait_start = time.monotonic()
        limit = self.engine.init_timeout + self.timeout if cold else self.engine.init_timeout
        await asyncio.wait({invocation.dispatched, invocation.result}, timeout=limit,
                           return_when=asyncio.FIRST_COMPLETED)
        if invocation.result.done():
            return invocation.result.result()
        if not invocation.dispatched.done():
            # The runtime never asked for the event (a hanging initialisation).
            elapsed = time.monotonic() - wait_start
            self.finish(invocation, self.timeout_outcome(invocation, elapsed))
            await self.kill()
            return invocation.result.result()
        sampler = asyncio.create_task(self.sample_memory()) if self.probe and self.probe.sampling else None
        try:
            assert invocation.started is not None
            remaining = max(0.0, invocation.started + self.timeout - time.monotonic())
            try:
                return await asyncio.wait_for(asyncio.shield(invocation.result), remaining)
            except TimeoutError:
                if not invocation.result.done():
                    elapsed = time.monotonic() - invocation.started
                    self.finish(invocation, self.timeout_outcome(invocation, elapsed))
                    await self.kill()
                return invocation.result.result()
        finally:
            if sampler:
                sampler.cancel()

    def timeout_outcome(self, invocation: Invocation, elapsed: float) -> Outcome:
        message = f"{iso_now()} {invocation.request_id} Task timed out after {elapsed:.2f} seconds"
        return Outcome(
            payload=error_payload("Sandbox.Timedout", message),
            function_error="Unhandled",
            error_type="Sandbox.Timedout",
            status="timeout",
            fatal=True,
            platform_log=message + "\n",
        )

    def finish(self, invocation: Invocation, outcome: Outcome, peak: int | None = None) -> None:
        if invocation.result.done():
            return
        invocation.finished = time.monotonic()
        if peak is None and self.probe is not None and self.state != "dead":
            peak = self.probe.peak()
        invocation.peak_bytes = peak
        invocation.result.set_result(outcome)

    # ---------------------------------------------------------------- Runtime API callbacks
    async def next_invocation(self) -> Invocation:
        if self.ready_wall is None:
            self.ready_wall = time.time()
        while True:
            invocation = await self.inbox.get()
            if not invocation.result.done():
                break
        invocation.deadline_ms = int((time.time() + self.timeout) * 1000)
        if self.probe is not None:
            self.probe.reset()
        invocation.started = time.monotonic()
        if not invocation.dispatched.done():
            invocation.dispatched.set_result(None)
        return invocation

    def is_current(self, request_id: str) -> bool:
        current = self.current
        return current is not None and current.request_id == request_id and not current.result.done()

    def complete(self, request_id: str, payload: bytes, function_error: str | None) -> None:
        current = self.current
        if current is None or current.request_id != request_id:
            return
        error_type = None
        if function_error:
            try:
                error_type = json.loads(payload).get("errorType")
            except (ValueError, AttributeError):
                error_type = "Unhandled"
        self.finish(current, Outcome(payload=payload, function_error=function_error, error_type=error_type))

    def response_too_large(self, request_id: str, size: int) -> None:
        current = self.current
        if current is None or current.request_id != request_id:
            return
        message = f"Response payload size exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."
        self.finish(current, Outcome(
            payload=error_payload("Function.ResponseSizeTooLarge", message),
            function_error="Unhandled",
            error_type="Function.ResponseSizeTooLarge",
            platform_log=f"{iso_now()} {request_id} {message} (the response was {size} bytes)\n",
        ))

    def init_failed(self, payload: bytes) -> None:
        self.init_error = True
        current = self.current
        try:
            error_type = json.loads(payload).get("errorType")
        except (ValueError, AttributeError):
            error_type = "Runtime.Unknown"
        if current is not None:
            self.finish(current, Outcome(payload=payload, function_error="Unhandled", error_type=error_type,
                                         status="error", fatal=True))

    def on_exit(self) -> None:
        current = self.current
        if current is not None and not current.result.done():
            self.fail_exited(current)

    def fail_exited(self, invocation: Invocation) -> None:
        exit_code, oom_killed = self.exit_status or (-1, False)
        signal = "signal: killed" if exit_code in (137, -9) or oom_killed else f"exit status {exit_code}"
        error_type = "Runtime.OutOfMemory" if oom_killed else "Runtime.ExitError"
        message = f"RequestId: {invocation.request_id} Error: Runtime exited with error: {signal}"
        peak = self.memory_size * MB if oom_killed else (self.probe.peak() if self.probe else None)
        self.finish(invocation, Outcome(
            payload=error_payload(error_type, message),
            function_error="Unhandled",
            error_type=error_type,
            status="error",
            fatal=True,
            platform_log=f"{iso_now()} {invocation.request_id} {message}\n",
        ), peak=peak)
