"""A sandbox: one container running one function's runtime, serving one invocation at a time.

Its life: ``start()`` (Runtime API server + container), then ``invoke()`` any number of times while it is
warm; it dies when its runtime exits (out of memory, crash, init error), when an invocation times out
(the emulator kills it), or when the engine retires it (idle, code/config update, shutdown).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from corral_emulator.memory import MemoryProbe
from corral_emulator.runtime_api import MAX_RESPONSE_BYTES, make_app

if TYPE_CHECKING:
    from corral_emulator.engine import Engine
    from corral_emulator.functions import Function

MB = 1024 * 1024
LOG_MOUNT = "/opt/corral-log"
BOOTSTRAP_PATH = "/opt/corral/bootstrap.py"
TASK_ROOT = "/var/task"


def iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_docker_time(text: str) -> float | None:
    """Docker's RFC 3339 timestamps with nanoseconds -> epoch seconds."""
    try:
        head, _, frac = text.rstrip("Z").partition(".")
        base = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
        return base + (float("0." + frac) if frac else 0.0)
    except ValueError:
        return None


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


class Sandbox:
    def __init__(self, engine: Engine, function: Function) -> None:
        self.engine = engine
        self.id = uuid.uuid4().hex[:12]
        self.function_name = function.name
        self.function_arn = function.arn
        self.generation = function.generation
        self.memory_size = function.memory_size
        self.timeout = function.timeout
        self.handler = function.handler
        self.runtime = function.runtime
        self.environment = dict(function.environment)
        self.code_dir = function.code_dir
        self.container_name = f"corral-{engine.instance_id[:8]}-{function.name[:40]}-{self.id}"
        self.container_id: str | None = None
        self.folder: Path = engine.workdir / "sandboxes" / self.id
        self.log_path = self.folder / "output.log"
        self.log_offset = 0
        self.log_stream_name = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        self.state = "new"  # new -> starting -> ready -> dead
        self.busy = True
        self.retiring = False
        self.last_used = time.monotonic()
        self.current: Invocation | None = None
        self.inbox: asyncio.Queue[Invocation] = asyncio.Queue()
        self.probe: MemoryProbe | None = None
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.started_wall: float | None = None
        self.first_next_wall: float | None = None
        self.init_error = False
        self.invocations = 0
        self.exit_status: tuple[int, bool] | None = None

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.state = "starting"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o777)
        self.log_path.touch()
        self.log_path.chmod(0o666)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.runner = web.AppRunner(make_app(self), access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.SockSite(self.runner, sock).start()
        spec = self.container_spec()
        before = time.time()
        container_id, pid, started_at = await self.engine.blocking(self._create_container, spec)
        self.container_id = container_id
        self.started_wall = parse_docker_time(started_at) or before
        if pid:
            self.probe = MemoryProbe.for_pid(pid)
        if self.state == "starting":
            self.state = "ready"

    def _create_container(self, spec: dict) -> tuple[str, int, str]:
        client = self.engine.docker
        container = client.containers.create(**spec)
        container.start()
        attrs = client.api.inspect_container(container.id)
        return container.id, int(attrs["State"].get("Pid") or 0), attrs["State"].get("StartedAt", "")

    def container_spec(self) -> dict:
        engine = self.engine
        env: dict[str, str] = dict(engine.passthrough_environment())
        env.update(
            {
                "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_size),
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
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
        )
        if self.runtime.startswith("python"):
            env["AWS_EXECUTION_ENV"] = f"AWS_Lambda_{self.runtime}"
            command = ["python3", BOOTSTRAP_PATH]
        else:  # provided.*: the package's own executable bootstrap, as on Lambda
            command = [f"{TASK_ROOT}/bootstrap"]
        env.update(self.environment)
        volumes = {
            str(self.code_dir): {"bind": TASK_ROOT, "mode": "ro"},
            str(engine.bootstrap_file): {"bind": BOOTSTRAP_PATH, "mode": "ro"},
            str(self.folder): {"bind": LOG_MOUNT, "mode": "rw"},
        }
        for path in engine.mounts:
            volumes[path] = {"bind": path, "mode": "rw"}
        spec = {
            "image": engine.base_image,
            "name": self.container_name,
            "entrypoint": ["/bin/sh", "-c", f'exec "$@" >>{LOG_MOUNT}/output.log 2>&1', "corral-runtime"],
            "command": command,
            "environment": env,
            "labels": {
                "corral-emulator": engine.instance_id,
                "corral-emulator.function": self.function_name,
                "corral-emulator.pid": str(os.getpid()),
            },
            "mem_limit": f"{self.memory_size}m",
            "memswap_limit": f"{self.memory_size}m",
            "network_mode": "host",
            "volumes": volumes,
            "working_dir": TASK_ROOT,
            "user": f"{os.getuid()}:{os.getgid()}",
            "detach": True,
        }
        if engine.lambda_cpu:
            # Lambda gives one vCPU at 1769 MB, proportionally less below.
            cpus = min(os.cpu_count() or 1, self.memory_size / 1769)
            spec["nano_cpus"] = max(int(cpus * 1e9), 10_000_000)
        return spec

    async def kill(self) -> None:
        """Kill the container now (timeout); the engine removes it."""
        self.state = "dead"
        if self.container_id:
            await self.engine.blocking(self.engine.kill_container, self.container_id)

    async def close(self) -> None:
        """Stop the Runtime API server and remove this sandbox's files."""
        self.state = "dead"
        if self.probe:
            self.probe.close()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

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
        sampler = asyncio.create_task(self._sample()) if self.probe and self.probe.sampling else None
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

    async def _sample(self) -> None:
        assert self.probe is not None
        while True:
            self.probe.sample()
            await asyncio.sleep(0.01)

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
        if self.first_next_wall is None:
            self.first_next_wall = time.time()
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

    def exited(self, exit_code: int, oom_killed: bool) -> None:
        """The container's process ended (reported by the engine's Docker event watcher)."""
        if self.state == "dead":
            return
        self.state = "dead"
        self.exit_status = (exit_code, oom_killed)
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

    # ---------------------------------------------------------------- logs and measures
    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def read_output(self, start: int, end: int | None = None) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                data = f.read() if end is None else f.read(max(0, end - start))
        except OSError:
            return ""
        return data.decode("utf-8", "replace")

    def init_duration_ms(self) -> float | None:
        if self.first_next_wall is None or self.started_wall is None:
            return None
        return max(0.0, (self.first_next_wall - self.started_wall) * 1000.0)
