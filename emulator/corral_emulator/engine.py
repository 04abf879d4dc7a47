"""The engine: the pool of warm sandboxes every platform shares, its limits, Docker's events, the logs.

A platform's service (``lambda_service``, ``gcf_service``) keeps its functions and asks the engine for a
sandbox per request (``acquire``), then gives it back (``release``). The engine starts nothing by itself:
a new sandbox is started by the caller (a cold start); the engine removes sandboxes that are idle for
``idle_timeout``, stale after an update or delete, or dead.

Everything here runs on the emulator's asyncio loop; Docker calls (blocking) go to a thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO, TypeVar

import docker
import docker.errors

from corral_emulator.sandbox import PoolFunction, Sandbox

log = logging.getLogger("corral_emulator")
T = TypeVar("T")

#: Variables passed from the emulator's environment into every container (credentials and endpoints of
#: the services the functions use, as SAM local does for AWS).
PASSTHROUGH_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                    "STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")
PASSTHROUGH_PREFIXES = ("AWS_ENDPOINT_URL",)


class PoolFull(Exception):
    """No sandbox can be had now: the function's own limit (``scope="function"``) or the emulator's."""

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"{scope} limit of {limit} reached")
        self.scope = scope
        self.limit = limit


class Engine:
    def __init__(
        self,
        *,
        instance_id: str,
        workdir: Path,
        base_image: str,
        region: str,
        max_concurrency: int,
        idle_timeout: float,
        init_timeout: float,
        mounts: list[str],
        cloud_cpu: bool,
        log_dir: Path,
        log_stream: TextIO | None,
        docker_client: docker.DockerClient,
        throttle_fraction: float = 0.0,
        throttle_seed: int = 0,
        tmp_cap: bool = True,
    ) -> None:
        self.instance_id = instance_id
        self.workdir = workdir
        self.base_image = base_image
        self.region = region
        self.max_concurrency = max_concurrency
        self.idle_timeout = idle_timeout
        self.init_timeout = init_timeout
        self.mounts = mounts
        self.cloud_cpu = cloud_cpu
        self.tmp_cap = tmp_cap  # a platform's /tmp of its size limit (a tmpfs), or the container's disk
        self.log_dir = log_dir
        self.log_stream = log_stream
        self.docker = docker_client
        #: Fault injection: this fraction of invocations is answered 429 (seeded: the same sequence each run).
        self.throttle_fraction = throttle_fraction
        self._faults = random.Random(throttle_seed)
        self.injected_throttles = 0
        self.sandboxes: dict[str, Sandbox] = {}  # by container name
        #: Per platform: the code folders its functions use (the others are removed with their last sandbox).
        self.code_in_use: list[Callable[[], Iterable[Path | None]]] = []
        self.executor = ThreadPoolExecutor(max_workers=max(8, min(64, 2 * max_concurrency + 4)),
                                           thread_name_prefix="corral-emulator-docker")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.background: set[asyncio.Task] = set()
        self.closers: list[Callable[[], Any]] = []  # async callables run on close (the services')
        self._events_stream: Any = None
        self.closing = False

    # ---------------------------------------------------------------- setup
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ready = threading.Event()
        threading.Thread(target=self._watch_events, args=(ready,), name="corral-emulator-events",
                         daemon=True).start()
        await self.loop.run_in_executor(None, ready.wait, 10)
        self.spawn(self._reaper())

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task) -> None:
        """A background task's error is logged when it happens (not as "Task exception was never retrieved"
        whenever the task is collected); while closing, what fails is being removed anyway."""
        self.background.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        level = logging.DEBUG if self.closing else logging.ERROR
        log.log(level, "background task %s failed", task.get_coro(), exc_info=task.exception())

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        assert self.loop is not None
        return await self.loop.run_in_executor(self.executor, fn, *args)

    def passthrough_environment(self) -> dict[str, str]:
        """The caller's credentials and endpoint overrides, passed into containers (as SAM local does)."""
        env = {k: os.environ[k] for k in PASSTHROUGH_KEYS if os.environ.get(k)}
        env.update({k: v for k, v in os.environ.items() if k.startswith(PASSTHROUGH_PREFIXES)})
        return env

    def inject_throttle(self) -> bool:
        """The fault hook: True for ``throttle_fraction`` of the calls (the caller answers 429)."""
        if self.throttle_fraction and self._faults.random() < self.throttle_fraction:
            self.injected_throttles += 1
            return True
        return False

    # ---------------------------------------------------------------- Docker events
    def _watch_events(self, ready: threading.Event) -> None:
        filters = {"type": "container", "label": f"corral-emulator={self.instance_id}", "event": ["die", "oom"]}
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
                action = event.get("Action") or event.get("status") or ""
                try:
                    code = int(attributes.get("exitCode", "-1"))
                except ValueError:
                    code = -1
                if self.loop is not None and not self.loop.is_closed():
                    if action == "oom":
                        self.loop.call_soon_threadsafe(self._container_oom, name)
                    else:
                        self.loop.call_soon_threadsafe(self._container_died, name, code)
        except Exception:
            if not self.closing:
                log.exception("Docker event stream ended")

    def _container_oom(self, name: str) -> None:
        sandbox = self.sandboxes.get(name)
        if sandbox is not None:
            sandbox.out_of_memory()

    def _container_died(self, name: str, exit_code: int) -> None:
        sandbox = self.sandboxes.get(name)
        if sandbox is None or sandbox.exit_status is not None or sandbox.retiring or self.closing:
            return  # (closing: every container is being removed, and dies of it)
        self.spawn(self._handle_death(sandbox, exit_code))

    async def _handle_death(self, sandbox: Sandbox, exit_code: int) -> None:
        # the cgroup's oom_kill count first: it goes with the container's cgroup, which Docker may remove
        # while the inspect below waits its turn (a loaded machine), and the OOM event may come late
        oom = sandbox.oom_events > 0 or (sandbox.probe is not None and (sandbox.probe.oom_kills() or 0) > 0)
        if sandbox.container_id:
            try:
                state = (await self.blocking(self.docker.api.inspect_container, sandbox.container_id))["State"]
                oom = oom or bool(state.get("OOMKilled"))
                exit_code = int(state.get("ExitCode", exit_code))
            except docker.errors.DockerException:
                pass
        sandbox.exited(exit_code, oom)
        if not sandbox.busy:
            await self.retire(sandbox)

    # ---------------------------------------------------------------- the pool
    def in_use(self, function: PoolFunction | None = None) -> int:
        return sum(1 for s in self.sandboxes.values()
                   if s.busy and s.state != "dead" and (function is None or s.function is function))

    def acquire(self, function: PoolFunction) -> tuple[Sandbox, bool]:
        """A warm idle sandbox of this function (the most recently used), or a new one (not started yet:
        the caller starts it, a cold start). ``PoolFull`` beyond the function's or the emulator's limit.

        Synchronous on purpose: the check and the reservation cannot interleave with other requests.
        """
        warm = [s for s in self.sandboxes.values()
                if s.function is function and not s.busy and s.state == "ready" and s.generation == function.generation]
        if warm:
            sandbox = max(warm, key=lambda s: s.last_used)
            sandbox.busy = True
            return sandbox, False
        limit = function.instance_limit
        if limit is not None and self.in_use(function) >= limit:
            raise PoolFull("function", limit)
        if self.in_use() >= self.max_concurrency:
            raise PoolFull("emulator", self.max_concurrency)
        # Keep at most max_concurrency containers: make room by retiring the least recently used idle ones.
        live = [s for s in self.sandboxes.values() if s.state != "dead"]
        idle = sorted((s for s in live if not s.busy), key=lambda s: s.last_used)
        for victim in idle[: max(0, len(live) + 1 - self.max_concurrency)]:
            victim.busy = True
            self.spawn(self.retire(victim))
        sandbox = function.new_sandbox(self)
        self.sandboxes[sandbox.container_name] = sandbox
        return sandbox, True

    def release(self, sandbox: Sandbox, reusable: bool = True) -> None:
        """Give a sandbox back after a request: idle and warm, or removed (``reusable=False``, dead, stale)."""
        function = sandbox.function
        stale = function.retired or function.generation != sandbox.generation
        if not reusable or sandbox.state != "ready" or stale or self.closing:
            self.spawn(self.retire(sandbox))
            return
        sandbox.last_used = time.monotonic()
        sandbox.busy = False

    async def retire(self, sandbox: Sandbox) -> None:
        """Remove a sandbox: its container, what its platform started for it, its files."""
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

    async def retire_stale(self, function: PoolFunction) -> None:
        """After an update or delete: idle sandboxes of older generations go now, busy ones when done."""
        for sandbox in list(self.sandboxes.values()):
            if sandbox.function is not function or sandbox.busy:
                continue
            if function.retired or sandbox.generation != function.generation:
                sandbox.busy = True
                self.spawn(self.retire(sandbox))

    async def collect_code(self, code_dir: Path | None) -> None:
        """Remove a code folder that no function and no sandbox uses any more."""
        if code_dir is None:
            return
        used = {folder for in_use in self.code_in_use for folder in in_use()}
        used |= {s.code_dir for s in self.sandboxes.values()}
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
        self.closing = True
        for task in list(self.background):
            task.cancel()
        sandboxes = list(self.sandboxes.values())
        for sandbox in sandboxes:
            sandbox.state = "dead"
        await asyncio.gather(*(self.blocking(self.remove_container, s.container_name) for s in sandboxes),
                             return_exceptions=True)
        await asyncio.gather(*(s.close() for s in sandboxes), return_exceptions=True)
        self.sandboxes.clear()
        await asyncio.gather(*(closer() for closer in self.closers), return_exceptions=True)
        # the cancelled tasks' clean-up (a retire's) still uses the thread pool: let them end before it goes
        if self.background:
            await asyncio.wait(list(self.background), timeout=10)
        if self._events_stream is not None:
            try:
                self._events_stream.close()
            except Exception:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- logs
    def write_log(self, name: str, text: str, echo_name: str | None = None) -> None:
        """Append ``text`` to ``<log_dir>/<name>.log``; echo it to the log stream as ``[echo_name] line``."""
        try:
            with open(self.log_dir / f"{name}.log", "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            log.warning("cannot write the log of %s: %s", name, exc)
        if self.log_stream is not None:
            prefix = echo_name or name
            try:
                for line in text.splitlines():
                    self.log_stream.write(f"[{prefix}] {line}\n")
                self.log_stream.flush()
            except (OSError, ValueError):
                pass
