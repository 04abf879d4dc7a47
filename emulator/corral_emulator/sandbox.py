"""A sandbox: one container running one function, serving one request at a time; the part every platform shares.

Its life: ``start()`` (the platform's own preparation, then the container), then any number of requests
while it is warm; it dies when its process exits (out of memory, crash, init error), when a request times
out (the emulator kills it), or when the engine retires it (idle, code/config update, shutdown).

The platforms differ in how a request reaches the code: a Lambda sandbox (``lambda_sandbox``) serves the
Runtime API that its runtime polls; a GCF instance (``gcf_instance``) is an HTTP server in the container
that the emulator proxies to. They share the container (memory cap, mounts, labels, log file, user), the
memory probe, the exit status and the pool's bookkeeping (``busy``, ``last_used``, ``generation``).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from corral_emulator.memory import MemoryProbe
from corral_emulator.owner import owner_labels

if TYPE_CHECKING:
    from corral_emulator.engine import Engine

MB = 1024 * 1024
LOG_MOUNT = "/opt/corral-log"


class PoolFunction(Protocol):
    """What the pool needs of a function, whatever its platform."""

    name: str
    generation: int  # changes with every code or configuration update
    retired: bool  # deleted: its sandboxes go when they are done
    code_dir: Path | None

    @property
    def instance_limit(self) -> int | None:
        """At most this many of its sandboxes busy at once (reserved concurrency, max instances), or None."""

    def new_sandbox(self, engine: Engine) -> Sandbox: ...


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


class Sandbox:
    """One container of one function. Subclasses give the container's command, environment and mounts."""

    #: Label value naming the platform (``corral-emulator.platform``).
    platform = ""

    def __init__(self, engine: Engine, function: PoolFunction, memory_bytes: int, timeout: float,
                 environment: dict[str, str]) -> None:
        self.engine = engine
        self.function = function
        self.id = uuid.uuid4().hex[:12]
        self.function_name = function.name
        self.generation = function.generation
        self.memory_bytes = memory_bytes
        self.timeout = timeout
        self.environment = dict(environment)
        self.code_dir = function.code_dir
        self.container_name = f"corral-{engine.instance_id[:8]}-{function.name[:40]}-{self.id}"
        self.container_id: str | None = None
        self.folder: Path = engine.workdir / "sandboxes" / self.id
        self.log_path = self.folder / "output.log"
        self.log_offset = 0
        self.state = "new"  # new -> starting -> ready -> dead
        self.busy = True
        self.retiring = False
        self.last_used = time.monotonic()
        self.probe: MemoryProbe | None = None
        self.started_wall: float | None = None  # the container's start (epoch seconds)
        self.ready_wall: float | None = None  # when it could first take a request
        self.invocations = 0
        self.exit_status: tuple[int, bool] | None = None  # (exit code, OOM-killed)
        self.oom_events = 0  # Docker "oom" events: the kernel killed a process of this container
        self.changed = asyncio.Event()  # set on every oom event and on exit

    # ---------------------------------------------------------------- what a platform provides
    def command(self) -> list[str]:
        raise NotImplementedError

    def platform_environment(self) -> dict[str, str]:
        """The platform's own variables (the function's own ones override nothing reserved)."""
        raise NotImplementedError

    def platform_volumes(self) -> dict[str, dict[str, str]]:
        raise NotImplementedError

    working_dir = "/"

    def cpu_share(self) -> float | None:
        """CPUs the container gets when the emulator applies the platform's CPU share, else None."""
        return None

    def platform_tmpfs(self) -> dict[str, str]:
        """Size-limited in-memory folders (mount point -> tmpfs options), e.g. a /tmp of the platform's size."""
        return {}

    async def prepare(self) -> None:
        """Before the container starts (e.g. a Runtime API server the runtime will call)."""

    async def shutdown(self) -> None:
        """When the sandbox is removed: stop what ``prepare`` started."""

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.state = "starting"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o777)
        self.log_path.touch()
        self.log_path.chmod(0o666)
        await self.prepare()
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
        env.update(self.platform_environment())
        env.update(self.environment)
        volumes = dict(self.platform_volumes())
        volumes[str(self.folder)] = {"bind": LOG_MOUNT, "mode": "rw"}
        for path in engine.mounts:
            volumes[path] = {"bind": path, "mode": "rw"}
        spec = {
            "image": engine.base_image,
            "name": self.container_name,
            "entrypoint": ["/bin/sh", "-c", f'exec "$@" >>{LOG_MOUNT}/output.log 2>&1', "corral-runtime"],
            "command": self.command(),
            "environment": env,
            "labels": {
                "corral-emulator": engine.instance_id,
                "corral-emulator.function": self.function_name,
                "corral-emulator.platform": self.platform,
                **owner_labels(),  # its pid: `prune` and the next emulator remove it if this one is killed
            },
            "mem_limit": self.memory_bytes,
            "memswap_limit": self.memory_bytes,
            "network_mode": "host",
            "volumes": volumes,
            "working_dir": self.working_dir,
            "user": f"{os.getuid()}:{os.getgid()}",
            "detach": True,
        }
        tmpfs = self.platform_tmpfs()
        if tmpfs:
            spec["tmpfs"] = tmpfs
        cpus = self.cpu_share() if engine.cloud_cpu else None
        if cpus is not None:
            spec["nano_cpus"] = max(int(min(os.cpu_count() or 1, cpus) * 1e9), 10_000_000)
        return spec

    async def kill(self) -> None:
        """Kill the container now (timeout, memory limit); the engine removes it."""
        self.state = "dead"
        if self.container_id:
            await self.engine.blocking(self.engine.kill_container, self.container_id)

    async def close(self) -> None:
        """Stop what the platform started for this sandbox (the container is the engine's to remove)."""
        self.state = "dead"
        if self.probe:
            self.probe.close()
        await self.shutdown()

    def exited(self, exit_code: int, oom_killed: bool) -> None:
        """The container's process ended (reported by the engine's Docker event watcher)."""
        if self.state == "dead" and self.exit_status is not None:
            return
        self.state = "dead"
        self.exit_status = (exit_code, oom_killed)
        self.changed.set()
        self.on_exit()

    def on_exit(self) -> None:
        """A platform's reaction to the container's end (fail the request in flight)."""

    def out_of_memory(self) -> None:
        """Docker reported an OOM kill inside this container (maybe of a child process only)."""
        self.oom_events += 1
        self.changed.set()

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
        if self.ready_wall is None or self.started_wall is None:
            return None
        return max(0.0, (self.ready_wall - self.started_wall) * 1000.0)

    async def sample_memory(self) -> None:
        """Sample the memory usage every 10 ms (where the cgroup's peak cannot be reset); cancel to stop."""
        assert self.probe is not None
        while True:
            self.probe.sample()
            await asyncio.sleep(0.01)
