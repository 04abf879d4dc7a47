"""``Emulator``: the Lambda API, the Cloud Functions API and their container pool, served from a background thread."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
import threading
import uuid
from pathlib import Path
from typing import TextIO

import docker
import docker.errors
from aiohttp import web

from corral_emulator import gcf_api, lambda_api
from corral_emulator.engine import Engine
from corral_emulator.errors import EmulatorError
from corral_emulator.gcf_service import GcfService
from corral_emulator.lambda_service import LambdaService
from corral_emulator.owner import LABEL, owner_gone

log = logging.getLogger("corral_emulator")

DEFAULT_BASE_IMAGE = "corral-lambda-python:3.11"


def default_base_image() -> str:
    """``$CORRAL_EMULATOR_BASE_IMAGE``, else the image ``corral emulator build-base`` builds."""
    return os.environ.get("CORRAL_EMULATOR_BASE_IMAGE") or DEFAULT_BASE_IMAGE


def docker_client(timeout: int = 120, pool: int = 64) -> docker.DockerClient:
    """A client of the local Docker engine, or ``EmulatorError`` saying why there is none."""
    try:
        client = docker.from_env(timeout=timeout, max_pool_size=pool)
        client.ping()
    except docker.errors.DockerException as exc:
        raise EmulatorError(f"no Docker engine answers ({exc}); start dockerd or set DOCKER_HOST") from exc
    return client


class Emulator:
    """A local AWS Lambda and Google Cloud Functions (2nd gen).

    ``start()`` serves both APIs on ``http://host:port`` (``port=0`` picks a free port) and returns that
    URL: for ``boto3.client("lambda", endpoint_url=url)``, and for ``functions_v2.FunctionServiceClient``
    with ``api_endpoint`` = its host:port (REST transport, http). Functions run in containers of
    ``base_image`` (any image with ``python3``) with their memory capped at the function's; at most
    ``max_concurrency`` requests run at once across both platforms (more are answered 429; the function's
    reserved concurrency or max instances too). A Lambda function's failed ``Event`` invocations are
    retried after ``event_retry_delay`` seconds and then twice that (Lambda: 60). ``throttle_fraction`` (default
    ``$CORRAL_EMULATOR_THROTTLE``, else 0) is a fault hook for tests: that fraction of invocations is
    answered 429 TooManyRequestsException (reason ConcurrentInvocationLimitExceeded) whatever the load,
    drawn from a generator seeded with ``throttle_seed`` (the same sequence on every run). Idle
    containers are removed after ``idle_timeout`` seconds. ``mounts`` are host folders bind-mounted
    read-write at the same path in every container. ``cloud_cpu`` (on by default) caps each container's
    CPU as the platform would (Lambda: one vCPU at 1769 MB; GCF: ``availableCpu``); off, every container
    may use all of the host's CPUs. ``tmp_cap`` (on by default) makes a Lambda function's ``/tmp`` a tmpfs
    of its ``EphemeralStorage`` size, so that writing past it fails with ENOSPC as on Lambda; a tmpfs's
    pages count against the memory cap (Lambda's disk does not), so off, ``/tmp`` is on the container's
    disk, uncapped, and a task that spills there needs no memory for it. ``stop()`` removes every
    container this instance started. ``service_account_key()`` gives a key file for google-auth whose
    ``token_uri`` is this emulator (the functions' URLs need ID tokens). A GCF create or patch answers
    when its deploy is done, or after ``operation_wait`` seconds with ``done: false`` (0: at once, as GCF).
    """

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        base_image: str | None = None,
        max_concurrency: int = 10,
        mounts: list[str] | tuple[str, ...] = (),
        idle_timeout: float = 300.0,
        init_timeout: float = 10.0,
        region: str | None = None,
        account_id: str = "000000000000",
        cloud_cpu: bool = True,
        tmp_cap: bool = True,
        workdir: str | os.PathLike | None = None,
        log_dir: str | os.PathLike | None = None,
        log_stream: TextIO | None = None,
        throttle_fraction: float | None = None,
        throttle_seed: int = 0,
        operation_wait: float = 5.0,
        event_retry_delay: float = 60.0,
    ) -> None:
        if max_concurrency < 1:
            raise EmulatorError("max_concurrency must be at least 1")
        if not event_retry_delay >= 0:
            raise EmulatorError(f"event_retry_delay must be at least 0 seconds, not {event_retry_delay}")
        self.event_retry_delay = event_retry_delay
        if throttle_fraction is None:
            try:
                throttle_fraction = float(os.environ.get("CORRAL_EMULATOR_THROTTLE") or 0)
            except ValueError:
                raise EmulatorError("CORRAL_EMULATOR_THROTTLE must be a fraction, e.g. 0.33") from None
        if not 0 <= throttle_fraction < 1:
            raise EmulatorError(f"throttle_fraction must be at least 0 and below 1, not {throttle_fraction}")
        self.throttle_fraction = throttle_fraction
        self.throttle_seed = throttle_seed
        self.operation_wait = operation_wait
        self.port = port
        self.host = host
        self.base_image = base_image or default_base_image()
        self.max_concurrency = max_concurrency
        self.mounts = []
        for path in mounts:
            real = os.path.realpath(os.fspath(path))
            if not os.path.isdir(real):
                raise EmulatorError(f"mount {path!r} is not a folder")
            self.mounts.append(real)
        self.idle_timeout = idle_timeout
        self.init_timeout = init_timeout
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.account_id = account_id
        self.cloud_cpu = cloud_cpu
        self.tmp_cap = tmp_cap
        self.instance_id = uuid.uuid4().hex[:16]
        self._workdir_arg = workdir
        self._log_dir_arg = log_dir
        self.log_stream = log_stream
        self.workdir: Path | None = None
        self.engine: Engine | None = None
        self.lambda_service: LambdaService | None = None
        self.gcf: GcfService | None = None
        self.endpoint: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._docker: docker.DockerClient | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> str:
        """Check Docker and the base image, serve the API; return the endpoint URL."""
        if self.endpoint:
            return self.endpoint
        self._docker = docker_client(pool=max(16, 2 * self.max_concurrency + 4))
        pruned = prune_orphans(self._docker)  # an emulator killed with kill -9 (its driver's) left them
        if pruned:
            log.info("removed %d containers of emulators that were killed", pruned)
        try:
            self._docker.images.get(self.base_image)
        except docker.errors.ImageNotFound:
            raise EmulatorError(
                f"base image {self.base_image!r} not found; build it with `corral emulator build-base` "
                "or pass another image with python3 (--base-image / CORRAL_EMULATOR_BASE_IMAGE)") from None
        if self._workdir_arg is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"corral-emulator-{self.instance_id[:8]}-"))
        else:
            self.workdir = Path(self._workdir_arg) / self.instance_id
            self.workdir.mkdir(parents=True)
        self.workdir.chmod(0o755)
        self._thread = threading.Thread(target=self._serve, name="corral-emulator", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._cleanup_files()
            raise EmulatorError(f"the emulator could not start: {self._error}") from self._error
        return self.endpoint  # type: ignore[return-value]

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.exception("the emulator stopped on an error")

    async def _main(self) -> None:
        assert self.workdir is not None and self._docker is not None
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self.engine = Engine(
            instance_id=self.instance_id,
            workdir=self.workdir,
            base_image=self.base_image,
            region=self.region,
            max_concurrency=self.max_concurrency,
            idle_timeout=self.idle_timeout,
            init_timeout=self.init_timeout,
            mounts=self.mounts,
            cloud_cpu=self.cloud_cpu,
            tmp_cap=self.tmp_cap,
            log_dir=Path(self._log_dir_arg) if self._log_dir_arg else self.workdir / "logs",
            log_stream=self.log_stream,
            docker_client=self._docker,
            throttle_fraction=self.throttle_fraction,
            throttle_seed=self.throttle_seed,
        )
        await self.engine.start()
        self.lambda_service = LambdaService(self.engine, self.account_id, self.event_retry_delay)
        await self.lambda_service.start()
        self.gcf = GcfService(self.engine, self.operation_wait)
        await self.gcf.start()
        app = web.Application(middlewares=[lambda_api.aws_errors, gcf_api.google_errors],
                              client_max_size=lambda_api.API_READ_LIMIT)
        lambda_api.add_routes(app, self.lambda_service)
        gcf_api.add_routes(app, self.gcf)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            site = web.SockSite(runner, sock)
            await site.start()
            port = sock.getsockname()[1]
            host = f"[{self.host}]" if ":" in self.host else self.host
            self.endpoint = f"http://{host}:{port}"
            self.port = port
            self.gcf.base_url = self.endpoint
            self._ready.set()
            await self._stop_event.wait()
        finally:
            await self.engine.close()
            await runner.cleanup()

    def service_account_key(self, project: str = "corral-emulator", email: str | None = None) -> dict:
        """A service-account key file (JSON data, with a fresh RSA key) whose ``token_uri`` is this emulator's.

        Written to a file and named by ``GOOGLE_APPLICATION_CREDENTIALS`` (or given to
        ``google.oauth2.service_account``), it lets google-auth mint access tokens and the ID tokens that
        the functions' URLs require, from this emulator.
        """
        if self.gcf is None or not self.endpoint:
            raise EmulatorError("start the emulator first")
        return self.gcf.tokens.service_account_key(self.gcf.token_uri(), project, email)

    def stop(self) -> None:
        """Stop serving and remove every container of this instance (and its temporary files)."""
        if self._thread is not None:
            if self._loop is not None and self._stop_event is not None and not self._loop.is_closed():
                try:
                    self._loop.call_soon_threadsafe(self._stop_event.set)
                except RuntimeError:
                    pass
            self._thread.join(timeout=60)
            self._thread = None
        if self._docker is not None:
            remove_containers(self._docker, self.instance_id)
            self._docker.close()
            self._docker = None
        self._cleanup_files()
        self.endpoint = None

    def _cleanup_files(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def wait(self) -> None:
        """Block until the emulator stops."""
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Emulator(endpoint={self.endpoint!r}, base_image={self.base_image!r})"


def remove_containers(client: docker.DockerClient, instance_id: str | None = None) -> int:
    """Remove the containers of one emulator instance (or, with None, of every instance). Returns how many."""
    label = f"{LABEL}={instance_id}" if instance_id else LABEL
    removed = 0
    for container in client.containers.list(all=True, sparse=True, filters={"label": label}):
        try:
            container.remove(force=True)
            removed += 1
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                log.warning("cannot remove container %s: %s", container.id, exc)
    return removed


def prune_orphans(client: docker.DockerClient) -> int:
    """Remove containers left by emulators of this host whose process has gone (``corral_emulator.owner``);
    every other container is left alone (other emulators', other hosts' on a shared engine)."""
    removed = 0
    for container in client.containers.list(all=True, sparse=True, filters={"label": LABEL}):
        if not owner_gone(container.attrs.get("Labels") or {}):
            continue
        try:
            container.remove(force=True)
            removed += 1
        except docker.errors.DockerException:
            pass
    return removed
