"""The engine: functions, the pool of warm sandboxes, concurrency limits, invocations and their logs.

Everything here runs on the emulator's asyncio loop; Docker calls (blocking) go to a thread pool.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import os
import random
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

import docker
import docker.errors

from corral_emulator.errors import ApiError, conflict, not_found, throttled
from corral_emulator.functions import Function, decode_zip, fetch_s3_code, is_s3_code
from corral_emulator.sandbox import MB, Invocation, Outcome, Sandbox

log = logging.getLogger("corral_emulator")
T = TypeVar("T")

TAIL_BYTES = 4096
PASSTHROUGH_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


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


class Engine:
    def __init__(
        self,
        *,
        instance_id: str,
        workdir: Path,
        base_image: str,
        region: str,
        account_id: str,
        max_concurrency: int,
        idle_timeout: float,
        init_timeout: float,
        mounts: list[str],
        lambda_cpu: bool,
        log_dir: Path,
        log_stream: TextIO | None,
        docker_client: docker.DockerClient,
        throttle_fraction: float = 0.0,
        throttle_seed: int = 0,
    ) -> None:
        self.instance_id = instance_id
        self.workdir = workdir
        self.base_image = base_image
        self.region = region
        self.account_id = account_id
        self.max_concurrency = max_concurrency
        self.idle_timeout = idle_timeout
        self.init_timeout = init_timeout
        self.mounts = mounts
        self.lambda_cpu = lambda_cpu
        self.log_dir = log_dir
        self.log_stream = log_stream
        self.docker = docker_client
        self.functions: dict[str, Function] = {}
        #: Fault injection: this fraction of invocations is answered 429 (seeded: the same sequence each run).
        self.throttle_fraction = throttle_fraction
        self._faults = random.Random(throttle_seed)
        self.injected_throttles = 0
        self.sandboxes: dict[str, Sandbox] = {}  # by container name
        self.code_root = workdir / "code"
        self.bootstrap_file = workdir / "runtime" / "bootstrap.py"
        self.executor = ThreadPoolExecutor(max_workers=max(8, min(64, 2 * max_concurrency + 4)),
                                           thread_name_prefix="corral-emulator-docker")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.background: set[asyncio.Task] = set()
        self._events_stream: Any = None
        self._closing = False

    # ---------------------------------------------------------------- setup
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.code_root.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.bootstrap_file.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(__file__).with_name("bootstrap.py"), self.bootstrap_file)
        self.bootstrap_file.chmod(0o644)
        ready = threading.Event()
        threading.Thread(target=self._watch_events, args=(ready,), name="corral-emulator-events",
                         daemon=True).start()
        await self.loop.run_in_executor(None, ready.wait, 10)
        self.spawn(self._reaper())

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        assert self.loop is not None
        return await self.loop.run_in_executor(self.executor, fn, *args)

    def passthrough_environment(self) -> dict[str, str]:
        """The caller's AWS credentials and endpoint overrides, passed into containers (as SAM local)."""
        env = {k: os.environ[k] for k in PASSTHROUGH_KEYS if os.environ.get(k)}
        env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_ENDPOINT_URL")})
        return env

    def arn(self, name: str) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{name}"

    # ---------------------------------------------------------------- Docker events
    def _watch_events(self, ready: threading.Event) -> None:
        filters = {"type": "container", "label": f"corral-emulator={self.instance_id}", "event": ["die"]}
        try:
            stream = self.docker.events(decode=True, filters=filters)
        except Exception:
            log.exception("cannot watch Docker events")
            ready.set()
            return
        self._events_stream = stream
        ready.set()
        try:
            for event in stream:
                attributes = (event.get("Actor") or {}).get("Attributes") or {}
                name = attributes.get("name", "")
                try:
                    code = int(attributes.get("exitCode", "-1"))
                except ValueError:
                    code = -1
                if self.loop is not None and not self.loop.is_closed():
                    self.loop.call_soon_threadsafe(self._container_died, name, code)
        except Exception:
            if not self._closing:
                log.exception("Docker event stream ended")

    def _container_died(self, name: str, exit_code: int) -> None:
        sandbox = self.sandboxes.get(name)
        if sandbox is None or sandbox.state == "dead":
            return
        self.spawn(self._handle_death(sandbox, exit_code))

    async def _handle_death(self, sandbox: Sandbox, exit_code: int) -> None:
        oom = False
        if sandbox.container_id:
            try:
                state = (await self.blocking(self.docker.api.inspect_container, sandbox.container_id))["State"]
                oom = bool(state.get("OOMKilled"))
                exit_code = int(state.get("ExitCode", exit_code))
            except docker.errors.DockerException:
                pass
        if not oom and sandbox.probe is not None and (sandbox.probe.oom_kills() or 0) > 0:
            oom = True
        sandbox.exited(exit_code, oom)
        if not sandbox.busy:
            await self.retire(sandbox)

    # ---------------------------------------------------------------- functions
    def get(self, name: str) -> Function:
        function = self.functions.get(name)
        if function is None:
            raise not_found(f"Function not found: {self.arn(name)}")
        return function

    async def code_bytes(self, code: Any) -> bytes:
        """The zip of a Code shape: inline (``ZipFile``) or fetched from S3 (``S3Bucket``/``S3Key``)."""
        if is_s3_code(code):
            return await self.blocking(fetch_s3_code, code)
        return decode_zip(code)

    async def create_function(self, name: str, body: dict) -> Function:
        if name in self.functions:
            raise conflict(f"Function already exist: {name}")
        data = await self.code_bytes(body.get("Code"))
        function = Function(name=name, arn=self.arn(name), runtime="", handler="", role="")
        function.configure(body, creating=True)
        function.tags = dict(body.get("Tags") or {})
        await self.blocking(function.set_code, data, self.code_root)
        if name in self.functions:  # created meanwhile
            await self.blocking(shutil.rmtree, function.code_dir, True)
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
        await self.blocking(function.set_code, data, self.code_root)
        function.touch()
        await self.retire_stale(function.name)
        self.spawn(self.collect_code(old_dir))
        return function

    async def update_configuration(self, name: str, body: dict) -> Function:
        function = self.get(name)
        self.check_revision(function, body)
        function.configure(body, creating=False)
        function.touch()
        await self.retire_stale(function.name)
        return function

    async def delete_function(self, name: str) -> None:
        function = self.functions.pop(name, None)
        if function is None:
            raise not_found(f"Function not found: {self.arn(name)}")
        await self.retire_stale(name)
        self.spawn(self.collect_code(function.code_dir))

    # ---------------------------------------------------------------- the pool
    def _in_use(self, name: str | None = None) -> int:
        return sum(1 for s in self.sandboxes.values()
                   if s.busy and s.state != "dead" and (name is None or s.function_name == name))

    def acquire(self, function: Function) -> tuple[Sandbox, bool]:
        """A warm idle sandbox of this function, or a new one; throttled beyond the limits like Lambda.

        Synchronous on purpose: the check and the reservation cannot interleave with other invokes.
        """
        warm = [s for s in self.sandboxes.values()
                if s.function_name == function.name and not s.busy and s.state == "ready"
                and s.generation == function.generation]
        if warm:
            sandbox = max(warm, key=lambda s: s.last_used)  # the most recently used, as Lambda does
            sandbox.busy = True
            return sandbox, False
        if function.reserved_concurrency is not None and self._in_use(function.name) >= function.reserved_concurrency:
            raise throttled("ReservedFunctionConcurrentInvocationLimitExceeded")
        if self._in_use() >= self.max_concurrency:
            raise throttled("ConcurrentInvocationLimitExceeded")
        # Keep at most max_concurrency containers: make room by retiring the least recently used idle ones.
        live = [s for s in self.sandboxes.values() if s.state != "dead"]
        idle = sorted((s for s in live if not s.busy), key=lambda s: s.last_used)
        for victim in idle[: max(0, len(live) + 1 - self.max_concurrency)]:
            victim.busy = True
            self.spawn(self.retire(victim))
        sandbox = Sandbox(self, function)
        self.sandboxes[sandbox.container_name] = sandbox
        return sandbox, True

    def release(self, sandbox: Sandbox, outcome: Outcome) -> None:
        function = self.functions.get(sandbox.function_name)
        stale = function is None or function.generation != sandbox.generation
        if outcome.fatal or sandbox.state != "ready" or stale or self._closing:
            self.spawn(self.retire(sandbox))
            return
        sandbox.current = None
        sandbox.last_used = time.monotonic()
        sandbox.busy = False

    async def retire(self, sandbox: Sandbox) -> None:
        """Remove a sandbox: its container, its Runtime API server, its files."""
        if self.sandboxes.get(sandbox.container_name) is not sandbox or sandbox.retiring:
            return
        sandbox.retiring = True
        sandbox.busy = True
        sandbox.state = "dead"
        try:
            await self.blocking(self.remove_container, sandbox.container_name)
        finally:
            await sandbox.close()
            self.sandboxes.pop(sandbox.container_name, None)
            await self.blocking(shutil.rmtree, sandbox.folder, True)
            await self.collect_code(sandbox.code_dir)

    async def retire_stale(self, name: str) -> None:
        """After an update or delete: idle sandboxes of older generations go now, busy ones when done."""
        function = self.functions.get(name)
        for sandbox in list(self.sandboxes.values()):
            if sandbox.function_name != name or sandbox.busy:
                continue
            if function is None or sandbox.generation != function.generation:
                sandbox.busy = True
                self.spawn(self.retire(sandbox))

    async def collect_code(self, code_dir: Path | None) -> None:
        if code_dir is None:
            return
        used = {f.code_dir for f in self.functions.values()} | {s.code_dir for s in self.sandboxes.values()}
        if code_dir not in used:
            await self.blocking(shutil.rmtree, code_dir, True)

    def remove_container(self, name: str) -> None:
        try:
            self.docker.api.remove_container(name, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                log.warning("cannot remove container %s: %s", name, exc)

    def kill_container(self, container_id: str) -> None:
        try:
            self.docker.api.kill(container_id)
        except docker.errors.DockerException:
            pass

    async def _reaper(self) -> None:
        interval = max(0.2, min(5.0, self.idle_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for sandbox in list(self.sandboxes.values()):
                if not sandbox.busy and now - sandbox.last_used >= self.idle_timeout:
                    sandbox.busy = True
                    self.spawn(self.retire(sandbox))

    async def close(self) -> None:
        self._closing = True
        for task in list(self.background):
            task.cancel()
        sandboxes = list(self.sandboxes.values())
        for sandbox in sandboxes:
            sandbox.state = "dead"
        await asyncio.gather(*(self.blocking(self.remove_container, s.container_name) for s in sandboxes),
                             return_exceptions=True)
        await asyncio.gather(*(s.close() for s in sandboxes), return_exceptions=True)
        self.sandboxes.clear()
        if self._events_stream is not None:
            try:
                self._events_stream.close()
            except Exception:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- invocations
    async def invoke(self, function: Function, payload: bytes, client_context: str | None = None,
                     request_id: str | None = None) -> InvokeResult:
        if self.throttle_fraction and self._faults.random() < self.throttle_fraction:
            self.injected_throttles += 1
            raise throttled("ConcurrentInvocationLimitExceeded")
        sandbox, cold = self.acquire(function)
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
                invocation.peak_bytes = await self.blocking(self.stats_peak, sandbox.container_id)
        finally:
            self.release(sandbox, outcome or Outcome(payload=b"", fatal=True))
        return self.report(function, sandbox, invocation, outcome, cold)

    def stats_peak(self, container_id: str | None) -> int | None:
        """Peak memory from Docker's stats, where the container's cgroup files cannot be read."""
        if not container_id:
            return None
        try:
            stats = self.docker.api.stats(container_id, stream=False, one_shot=True)
        except docker.errors.DockerException:
            return None
        memory = stats.get("memory_stats") or {}
        return memory.get("max_usage") or memory.get("usage")

    def report(self, function: Function, sandbox: Sandbox, invocation: Invocation, outcome: Outcome,
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
        self.write_log(function.name, init_output + text)
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

    def write_log(self, name: str, text: str) -> None:
        try:
            with open(self.log_dir / f"{name}.log", "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            log.warning("cannot write the log of %s: %s", name, exc)
        if self.log_stream is not None:
            try:
                for line in text.splitlines():
                    self.log_stream.write(f"[{name}] {line}\n")
                self.log_stream.flush()
            except (OSError, ValueError):
                pass

    def submit_event(self, function: Function, payload: bytes) -> str:
        """An asynchronous (Event) invocation: queued, run when capacity allows."""
        request_id = str(uuid.uuid4())
        self.spawn(self._run_event(function.name, payload, request_id))
        return request_id

    async def _run_event(self, name: str, payload: bytes, request_id: str) -> None:
        delay = 0.05
        while not self._closing:
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
