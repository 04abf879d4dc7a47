"""A GCF instance: one container running functions-framework, the function's HTTP server, on a port of its own.

The emulator proxies one request at a time to it and enforces what Cloud Run enforces around it: the
request timeout (504, the instance replaced), the memory limit (Docker's OOM event: the instance is
killed, the caller gets 500 with Cloud Run's "Memory limit of N MiB exceeded with M MiB used."), and the
32 MiB response size. Containers use host networking, so ``PORT`` is a free port of this machine (GCF
sets 8080 in a network namespace of the instance's own).
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from corral_emulator.sandbox import MB, Sandbox

if TYPE_CHECKING:
    from corral_emulator.engine import Engine
    from corral_emulator.gcf_functions import GcfFunction, Settings

SOURCE_ROOT = "/workspace"
FRAMEWORK_ROOT = "/opt/corral/functions-framework"
MAX_BODY_BYTES = 32 * MB  # Cloud Run's HTTP/1 request and response limit (GCF: 32 MB)
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length"})
MEMORY_DOC = "Consider increasing the memory limit, see https://cloud.google.com/run/docs/configuring/memory-limits"
TIMEOUT_DOC = "To change this limit, see https://cloud.google.com/run/docs/configuring/request-timeout"
CONNECTION_ERROR = ("The request failed because either the HTTP response was malformed or connection to the "
                    "instance had an error.")


def free_port(taken: set[int]) -> int:
    """A port nothing listens on now, and that no live instance of this emulator was given."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port


async def read_limited(stream: aiohttp.StreamReader, length: int | None, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """A request's or a response's whole body, or None as soon as it is longer than ``limit``."""
    if length is not None and length > limit:
        return None
    chunks, size = [], 0
    async for chunk in stream.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Answer:
    """What the caller gets for one request, and what the platform adds to the log."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    reusable: bool = True  # the instance can serve again
    platform_log: str = ""
    peak_bytes: int | None = None
    duration_ms: float = 0.0


class GcfInstance(Sandbox):
    platform = "gcf"
    working_dir = SOURCE_ROOT

    def __init__(self, engine: Engine, function: GcfFunction) -> None:
        settings = function.settings
        assert settings is not None and function.code_dir is not None
        super().__init__(engine, function, settings.memory_bytes, settings.timeout, settings.environment)
        self.settings: Settings = settings
        self.function_id = function.function_id
        self.revision = function.revision
        self.port = free_port({s.port for s in engine.sandboxes.values() if isinstance(s, GcfInstance)})
        self.framework_dir = function.framework_dir

    # ---------------------------------------------------------------- the container
    def platform_environment(self) -> dict[str, str]:
        return {
            "K_SERVICE": self.function_id,
            "K_REVISION": self.revision,
            "K_CONFIGURATION": self.function_id,
            "FUNCTION_TARGET": self.settings.entry_point,
            "FUNCTION_SIGNATURE_TYPE": "http",
            "PORT": str(self.port),
            # functions-framework's own timeout fires only with the threaded worker (the emulator's fires anyway)
            "CLOUD_RUN_TIMEOUT_SECONDS": str(self.settings.timeout),
            "THREADED_TIMEOUT_ENABLED": "true",
            "PYTHONPATH": f"{SOURCE_ROOT}:{FRAMEWORK_ROOT}",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
        }

    def command(self) -> list[str]:
        return ["python3", "-m", "functions_framework", "--target", self.settings.entry_point,
                "--source", f"{SOURCE_ROOT}/{self.settings.source_file}", "--signature-type", "http",
                "--host", "127.0.0.1", "--port", str(self.port)]

    def platform_volumes(self) -> dict[str, dict[str, str]]:
        return {
            str(self.code_dir): {"bind": SOURCE_ROOT, "mode": "ro"},
            str(self.framework_dir): {"bind": FRAMEWORK_ROOT, "mode": "ro"},
        }

    def cpu_share(self) -> float:
        return self.settings.cpu

    def out_of_memory(self) -> None:
        """Cloud Run terminates an instance over its memory limit, whichever of its processes the kernel chose."""
        super().out_of_memory()
        if self.state != "dead":
            self.engine.spawn(self.kill())

    # ---------------------------------------------------------------- readiness
    async def wait_ready(self, limit: float) -> str | None:
        """Wait until the server listens on its port; None, or why it did not (exited, too slow)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.exit_status is not None or self.state == "dead":
                code, oom = self.exit_status or (-1, False)
                return "out of memory while starting" if oom else f"the container exited with status {code}"
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1.0)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.02)
                continue
            writer.close()
            self.ready_wall = time.time()
            return None
        return f"it did not listen on port {self.port} within {limit:.0f} seconds"

    # ---------------------------------------------------------------- one request
    async def forward(self, session: aiohttp.ClientSession, method: str, path: str, headers: dict[str, str],
                      body: bytes) -> Answer:
        """Send one request to the function; the answer the caller gets, with Cloud Run's limits applied."""
        self.invocations += 1
        self.log_offset = self.log_size()
        oom_before = self.oom_events
        if self.probe is not None:
            self.probe.reset()
        sampler = asyncio.create_task(self.sample_memory()) if self.probe and self.probe.sampling else None
        started = time.monotonic()
        failure: Exception | None = None
        data: bytes | None = None
        status, response_headers = 500, {}
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    async with session.request(method, f"http://127.0.0.1:{self.port}{path}", headers=headers,
                                               data=body, allow_redirects=False) as response:
                        status = response.status
                        response_headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP}
                        data = await read_limited(response.content, response.content_length)
                except (aiohttp.ClientError, ConnectionError) as exc:
                    failure = exc
        except TimeoutError:
            elapsed = time.monotonic() - started
            await self.kill()
            message = (f"The request has been terminated because it has reached the maximum request timeout "
                       f"of {self.timeout} seconds ({elapsed:.2f} s). {TIMEOUT_DOC}")
            return self._answer(started, 504, message, log=True, reusable=False)
        finally:
            if sampler:
                sampler.cancel()
        if failure is not None or self.oom_events > oom_before or self.state == "dead":
            return await self._connection_failed(started, oom_before, failure)
        if data is None:
            return self._answer(started, 500, (
                f"Response size was too large: the function's response exceeds the limit of "
                f"{MAX_BODY_BYTES // MB} MiB ({MAX_BODY_BYTES} bytes)."), log=True)
        return Answer(status, data, response_headers, peak_bytes=self._peak(),
                      duration_ms=(time.monotonic() - started) * 1000)

    async def _connection_failed(self, started: float, oom_before: int, exc: Exception | None) -> Answer:
        """The connection broke: out of memory (Docker's OOM event, maybe a moment later), or a crash."""
        peak = self._peak()
        deadline = time.monotonic() + 2.0
        while self.oom_events == oom_before and self.exit_status is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                break
        await self.kill()
        if self.oom_events > oom_before or (self.exit_status and self.exit_status[1]):
            limit = self.settings.memory_mib
            used = max(limit, round((peak or 0) / MB))
            message = f"Memory limit of {limit} MiB exceeded with {used} MiB used. {MEMORY_DOC}"
            answer = self._answer(started, 500, message, log=True, reusable=False)
            answer.peak_bytes = max(peak or 0, self.memory_bytes)
            return answer
        detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
        code = self.exit_status[0] if self.exit_status else None
        status = f"; the instance exited with status {code}" if code is not None else ""
        return self._answer(started, 503, CONNECTION_ERROR, log=True, reusable=False,
                            log_text=f"{CONNECTION_ERROR}{detail}{status}")

    def _answer(self, started: float, status: int, message: str, *, log: bool = False, reusable: bool = True,
                log_text: str | None = None) -> Answer:
        return Answer(status, message.encode(), {"Content-Type": "text/plain; charset=utf-8"}, reusable=reusable,
                      platform_log=(log_text or message) + "\n" if log else "",
                      peak_bytes=self._peak(), duration_ms=(time.monotonic() - started) * 1000)

    def _peak(self) -> int | None:
        if self.probe is None:
            return None
        try:
            return self.probe.peak()
        except OSError:
            return None
