"""Cloud Functions' side of the emulator: uploads, functions, operations, deploys and invocations.

A deploy (create or patch) is a long-running operation, as on GCF: unpack the uploaded zip, check the
source file, provide functions-framework for the image's Python, then start one instance and wait for
it to listen (GCF's health check: a function that cannot load fails its deploy, with its logs). That
instance stays warm in the pool. The API answers when the operation is done, or after ``operation_wait``
seconds with ``done: false`` (the client polls ``operations/{id}``).

An invocation goes through the pool every platform shares (``Engine.acquire``: max instances and the
emulator's ``max_concurrency``, 429 beyond), then to the instance (``GcfInstance.forward``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import docker.errors
from aiohttp import web

from corral_emulator import framework
from corral_emulator.engine import Engine, PoolFull
from corral_emulator.errors import ApiError, EmulatorError
from corral_emulator.functions import extract_zip
from corral_emulator.gcf_functions import (
    FUNCTION_ID_RE,
    FUNCTION_TYPE,
    GcfFunction,
    GcfOperation,
    InvalidArgument,
    Settings,
    apply_mask,
    project_number,
    revision_name,
    rfc3339,
    settable,
    validate,
)
from corral_emulator.gcf_instance import HOP_BY_HOP, MAX_BODY_BYTES, Answer, GcfInstance, read_limited
from corral_emulator.owner import owner_labels
from corral_emulator.sandbox import MB
from corral_emulator.tokens import TokenIssuer

log = logging.getLogger("corral_emulator")

#: Seconds the API waits for a deploy before answering ``done: false`` (GCF answers at once: 0).
OPERATION_WAIT = 5.0
MAX_SOURCE_BYTES = 100 * 1000 * 1000  # GCF: 100 MB compressed sources
MAX_UNZIPPED_BYTES = 500 * 1000 * 1000  # and 500 MB uncompressed
INVALID_ARGUMENT = 3  # google.rpc.Code


class GoogleError(Exception):
    """An error answer of the Functions API in Google's JSON shape."""

    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


class BuildError(Exception):
    """The deploy failed: the operation ends with this message (INVALID_ARGUMENT, as GCF's build errors)."""


def _plain(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=headers)


class GcfService:
    """The functions of the Cloud Functions v2 API, their uploads, operations and invocations."""

    def __init__(self, engine: Engine, operation_wait: float = OPERATION_WAIT) -> None:
        self.engine = engine
        self.operation_wait = operation_wait
        self.functions: dict[str, GcfFunction] = {}  # by resource name
        self.operations: dict[str, GcfOperation] = {}
        self.uploads: dict[str, tuple[str, str]] = {}  # upload token -> (bucket, object)
        self.objects: dict[tuple[str, str], Path] = {}  # (bucket, object) -> the uploaded zip
        self.root = engine.workdir / "gcf"
        self.tokens = TokenIssuer()
        self.base_url = ""  # the emulator's endpoint, set once it listens
        self.session: aiohttp.ClientSession | None = None
        self._python: tuple[str, str] | None = None
        self._framework_dir: Path | None = None
        self._framework_lock = asyncio.Lock()
        self.deploying: set[Path] = set()  # code folders of deploys in progress (new and previous)
        engine.code_in_use.append(lambda: [*(f.code_dir for f in self.functions.values()), *self.deploying])
        engine.closers.append(self.close)

    async def start(self) -> None:
        for folder in ("code", "uploads"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        # One connection per request: a kept-alive connection that the instance's server closed meanwhile
        # would look like a crashed instance.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def url(self, project: str, location: str, function_id: str) -> str:
        return f"{self.base_url}/gcf/{project}/{location}/{function_id}"

    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    # ---------------------------------------------------------------- uploads
    def generate_upload_url(self, project: str, location: str) -> dict:
        token = uuid.uuid4().hex
        bucket = f"gcf-v2-uploads-{project_number(project)}.{location}.cloudfunctions.appspot.com"
        name = f"{uuid.uuid4()}.zip"
        self.uploads[token] = (bucket, name)
        return {"uploadUrl": f"{self.base_url}/gcf-uploads/{token}",
                "storageSource": {"bucket": bucket, "object": name}}

    async def put_upload(self, token: str, data: bytes) -> None:
        bucket, name = self.uploads[token]
        path = self.root / "uploads" / f"{token}.zip"
        await self.engine.blocking(path.write_bytes, data)
        self.objects[(bucket, name)] = path

    # ---------------------------------------------------------------- functions
    def get(self, name: str) -> GcfFunction:
        function = self.functions.get(name)
        if function is None:
            raise GoogleError(404, "NOT_FOUND", f"Resource '{name}' was not found")
        return function

    def _check_source(self, settings: Settings) -> None:
        if (settings.bucket, settings.object) not in self.objects:
            raise InvalidArgument(f"buildConfig.source.storageSource gs://{settings.bucket}/{settings.object} does "
                                  "not exist: PUT the zip to the uploadUrl of generateUploadUrl first")

    def _operation(self, function: GcfFunction, verb: str) -> GcfOperation:
        op_id = f"operation-{int(time.time() * 1000)}-{uuid.uuid4().hex[:24]}"
        op = GcfOperation(name=f"projects/{function.project}/locations/{function.location}/operations/{op_id}",
                          target=function.resource_name, verb=verb)
        self.operations[op.name] = op
        return op

    async def create(self, project: str, location: str, function_id: str, body: dict) -> GcfOperation:
        if not FUNCTION_ID_RE.match(function_id or ""):
            raise InvalidArgument(f"Invalid function ID {function_id!r}: lowercase letters, digits and hyphens, "
                                  "starting with a letter, not ending with a hyphen, at most 63 characters")
        function = GcfFunction(project=project, location=location, function_id=function_id)
        if function.resource_name in self.functions:
            raise GoogleError(409, "ALREADY_EXISTS", f"Function {function_id} in region {location} in project "
                                                     f"{project} already exists")
        spec = settable(body)
        settings = validate(spec, function_id, project)
        self._check_source(settings)
        function.uri = self.url(project, location, function_id)
        function.busy = True
        self.functions[function.resource_name] = function
        op = self._operation(function, "create")
        await self._hold(self.engine.spawn(self._deploy(function, spec, settings, op, creating=True)))
        return op

    async def patch(self, name: str, body: dict, mask: str) -> GcfOperation:
        function = self.get(name)
        if function.busy:
            raise GoogleError(409, "ABORTED", f"An operation on function {name} is already in progress. "
                                              "Please try again later.")
        spec = apply_mask(function.spec, settable(body), mask)
        settings = validate(spec, function.function_id, function.project)
        self._check_source(settings)
        function.busy = True
        op = self._operation(function, "update")
        await self._hold(self.engine.spawn(self._deploy(function, spec, settings, op, creating=False)))
        return op

    async def delete(self, name: str) -> GcfOperation:
        function = self.get(name)
        if function.busy:
            raise GoogleError(409, "ABORTED", f"An operation on function {name} is already in progress. "
                                              "Please try again later.")
        op = self._operation(function, "delete")
        function.state = "DELETING"
        del self.functions[name]
        function.retired = True
        await self.engine.retire_stale(function)
        self.engine.spawn(self.engine.collect_code(function.code_dir))
        op.finish()
        return op

    async def _hold(self, task: asyncio.Task) -> None:
        if self.operation_wait > 0:
            await asyncio.wait({task}, timeout=self.operation_wait)

    # ---------------------------------------------------------------- deploys
    async def _deploy(self, function: GcfFunction, spec: dict, settings: Settings, op: GcfOperation,
                      creating: bool) -> None:
        previous = (function.spec, function.settings, function.code_dir, function.framework_dir, function.revision,
                    function.state)
        new_dir: Path | None = None
        if previous[2] is not None:
            self.deploying.add(previous[2])
        try:
            function.state = "DEPLOYING"
            new_dir = await self._unpack(function, settings)
            self.deploying.add(new_dir)
            python, _ = await self._image_python()
            if settings.python != python:
                raise BuildError(
                    f"Build failed: runtime {settings.runtime} needs Python {settings.python}, but the emulator's "
                    f"base image {self.engine.base_image} has Python {python}; deploy with runtime "
                    f"python{python.replace('.', '')} or start the emulator with a --base-image that has "
                    f"Python {settings.python}")
            framework_dir = await self._framework()
            function.spec, function.settings, function.code_dir = spec, settings, new_dir
            function.framework_dir = framework_dir
            function.generation += 1
            function.revision = revision_name(function.function_id, function.generation)
            function.build_id = str(uuid.uuid4())
            await self.engine.retire_stale(function)
            problem = await self._health_check(function)
            if problem:
                raise BuildError(problem)
            if previous[2] is not None:  # kept until now: a failed update goes back to it
                self.engine.spawn(self.engine.collect_code(previous[2]))
        except BuildError as exc:
            message = str(exc)
            if creating:
                function.state = "FAILED"
                function.state_messages = [{"severity": "ERROR", "type": "DeploymentFailed", "message": message}]
                if function.settings is None:
                    function.spec, function.settings = spec, settings
            else:  # the previous revision keeps serving
                (function.spec, function.settings, function.code_dir, function.framework_dir, function.revision,
                 function.state) = previous
                function.generation += 1
                await self.engine.retire_stale(function)
            if new_dir is not None:
                self.engine.spawn(self.engine.collect_code(new_dir))
            self.engine.write_log(function.log_name, f"{rfc3339()} deploy failed: {message}\n", function.function_id)
            op.finish(error=(INVALID_ARGUMENT, message))
            return
        except Exception as exc:  # an emulator bug: fail the operation, never leave it running
            log.exception("deploy of %s failed", function.resource_name)
            function.state = "FAILED" if creating else previous[5]
            op.finish(error=(13, f"corral-emulator internal error: {exc}"))
            return
        finally:
            function.busy = False
            self.deploying.difference_update({previous[2], new_dir})
        function.state = "ACTIVE"
        function.serving = True
        function.state_messages = []
        function.update_time = rfc3339()
        op.finish(response={"@type": FUNCTION_TYPE, **function.to_json()})

    async def _unpack(self, function: GcfFunction, settings: Settings) -> Path:
        path = self.objects[(settings.bucket, settings.object)]
        data = await self.engine.blocking(path.read_bytes)
        code_dir = self.root / "code" / f"{function.function_id}-{uuid.uuid4().hex[:12]}"
        try:
            await self.engine.blocking(extract_zip, data, code_dir, MAX_UNZIPPED_BYTES)
        except ApiError as exc:
            await self.engine.blocking(shutil.rmtree, code_dir, True)
            raise BuildError(f"Build failed: gs://{settings.bucket}/{settings.object}: {exc.message}") from None
        if not (code_dir / settings.source_file).is_file():
            await self.engine.blocking(shutil.rmtree, code_dir, True)
            raise BuildError(
                f"Build failed: missing {settings.source_file} at the root of the source zip and "
                "GOOGLE_FUNCTION_SOURCE not specified. Either create the function in main.py or specify "
                "GOOGLE_FUNCTION_SOURCE (buildConfig.environmentVariables) to point to the function implementation")
        return code_dir

    async def runtimes(self) -> list[dict]:
        """The runtimes this emulator can run: the one of its base image's Python."""
        try:
            python, _ = await self._image_python()
        except BuildError as exc:
            raise GoogleError(500, "INTERNAL", str(exc)) from None
        return [{"name": f"python{python.replace('.', '')}", "displayName": f"Python {python}", "stage": "GA",
                 "environment": "GEN_2"}]

    async def _image_python(self) -> tuple[str, str]:
        if self._python is None:
            labels = {"corral-emulator": self.engine.instance_id, **owner_labels()}
            try:
                self._python = await self.engine.blocking(framework.image_python, self.engine.docker,
                                                          self.engine.base_image, labels)
            except EmulatorError as exc:
                raise BuildError(f"Build failed: {exc}") from None
        return self._python

    async def _framework(self) -> Path:
        """functions-framework for the image's Python: installed on the first deploy, then cached."""
        async with self._framework_lock:
            if self._framework_dir is None:
                python, machine = await self._image_python()
                try:
                    self._framework_dir = await self.engine.blocking(framework.install, python, machine)
                except EmulatorError as exc:
                    raise BuildError(f"Build failed: {exc}") from None
            return self._framework_dir

    async def _health_check(self, function: GcfFunction) -> str | None:
        """Start one instance and wait for it to listen; None, or the deploy's error with its logs."""
        try:
            instance, cold = self.engine.acquire(function)
        except PoolFull:
            return None  # every slot is busy: the first request will start an instance
        if not cold:
            self.engine.release(instance)
            return None
        assert isinstance(instance, GcfInstance)
        problem = await self._start(instance)
        output = instance.read_output(0)
        instance.log_offset = len(output.encode())
        if output:
            self.engine.write_log(function.log_name, output if output.endswith("\n") else output + "\n",
                                  function.function_id)
        if problem is None:
            self.engine.release(instance)
            return None
        self.engine.release(instance, reusable=False)
        tail = "\n".join(output.strip().splitlines()[-30:])
        return (f"Could not create or update Cloud Run service {function.function_id}, Container Healthcheck "
                f"failed. Revision '{function.revision}' is not ready and cannot serve traffic. The user-provided "
                f"container failed to start and listen on the port defined provided by the PORT={instance.port} "
                f"environment variable ({problem}). Logs of the instance:\n{tail}")

    async def _start(self, instance: GcfInstance) -> str | None:
        try:
            await instance.start()
        except (docker.errors.DockerException, OSError) as exc:
            log.error("cannot start a container for %s: %s", instance.function_name, exc)
            return f"corral-emulator could not start a container: {exc}"
        return await instance.wait_ready(self.engine.init_timeout + instance.timeout)

    # ---------------------------------------------------------------- invocations
    async def invoke(self, request: web.Request, project: str, location: str, function_id: str,
                     path: str) -> web.StreamResponse:
        name = f"projects/{project}/locations/{location}/functions/{function_id}"
        function = self.functions.get(name)
        if function is None or not function.serving:
            return _plain(404, f"Error: Page not found. The requested URL {request.path} was not found on this "
                               "server (no deployed function of that name).")
        problem = self._authenticate(request, function)
        if problem:
            return _plain(401, f"Your client does not have permission to the requested URL: {problem}.",
                          {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'})
        body = await read_limited(request.content, request.content_length)
        if body is None:
            return self._too_large(request.content_length)
        engine = self.engine
        limit_message = ("Rate exceeded. The request was aborted because there was no available instance: "
                         "{detail}.")
        if engine.inject_throttle():
            return _plain(429, limit_message.format(detail="throttled by the emulator's fault hook (--throttle)"))
        try:
            instance, cold = engine.acquire(function)
        except PoolFull as full:
            detail = (f"all {full.limit} instances of {function_id} are busy (maxInstanceCount {full.limit})"
                      if full.scope == "function" else
                      f"the emulator runs at most {full.limit} requests at once (--max-concurrency)")
            return _plain(429, limit_message.format(detail=detail))
        assert isinstance(instance, GcfInstance)
        execution_id = uuid.uuid4().hex[:12]
        answer: Answer | None = None
        init_output = ""
        try:
            if cold:
                problem = await self._start(instance)
                init_output = instance.read_output(0)
                instance.log_offset = len(init_output.encode())
                if problem:
                    answer = Answer(503, (f"The request failed because the instance could not start: {problem}."
                                          ).encode(), {"Content-Type": "text/plain; charset=utf-8"},
                                    reusable=False, platform_log=f"The instance could not start: {problem}\n")
            if answer is None:
                assert self.session is not None
                headers = self._forwarded_headers(request, execution_id)
                query = f"?{request.query_string}" if request.query_string else ""
                answer = await instance.forward(self.session, request.method, (path or "/") + query, headers, body)
        finally:
            engine.release(instance, reusable=answer is not None and answer.reusable)
        return self._respond(function, instance, answer, cold, request, execution_id, init_output)

    def _authenticate(self, request: web.Request, function: GcfFunction) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            return (f"the request has no Authorization header; send 'Authorization: Bearer' with an ID token whose "
                    f"audience is {function.uri}")
        if scheme.lower() != "bearer" or not token.strip():
            return "the Authorization header is not 'Bearer <ID token>'"
        return self.tokens.check_id_token(token.strip(), {function.uri})

    def _too_large(self, size: int | None) -> web.Response:
        what = f"of {size} bytes " if size is not None else ""
        return _plain(413, f"Your client issued a request that was too large: the request body {what}exceeds "
                           f"the limit of {MAX_BODY_BYTES // MB} MiB ({MAX_BODY_BYTES} bytes).")

    def _forwarded_headers(self, request: web.Request, execution_id: str) -> dict[str, str]:
        # the body is forwarded as aiohttp decoded it: without its Content-Encoding
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() != "content-encoding"}
        authorization = headers.get("Authorization", "")
        if authorization.count(".") == 2:  # Cloud Run passes the ID token on without its signature
            headers["Authorization"] = authorization.rsplit(".", 1)[0] + ".SIGNATURE_REMOVED_BY_GOOGLE"
        peer = request.remote or "127.0.0.1"
        headers["X-Forwarded-For"] = peer
        headers["X-Forwarded-Proto"] = "http"
        headers["Forwarded"] = f'for="{peer}";proto=http'
        headers["Function-Execution-Id"] = execution_id
        headers.setdefault("X-Cloud-Trace-Context", f"{uuid.uuid4().hex}/{int(time.time() * 1e6)};o=0")
        return headers

    def _respond(self, function: GcfFunction, instance: GcfInstance, answer: Answer, cold: bool,
                 request: web.Request, execution_id: str, init_output: str) -> web.Response:
        settings = instance.settings
        peak = answer.peak_bytes
        used = None if peak is None else min(settings.memory_mib, max(1, round(peak / MB)))
        init_ms = instance.init_duration_ms() if cold else None
        output = instance.read_output(instance.log_offset)
        if output and not output.endswith("\n"):
            output += "\n"
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        line = (f"{stamp} {execution_id} {request.method} {answer.status} {request.path} "
                f"{answer.duration_ms:.2f} ms instance={instance.id} revision={instance.revision}")
        if used is not None:
            line += f" memory={used}/{settings.memory_mib} MiB"
        if init_ms is not None:
            line += f" cold-start={init_ms:.2f} ms"
        self.engine.write_log(function.log_name, f"{init_output}{output}{answer.platform_log}{line}\n",
                              function.function_id)
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        headers.update({
            "X-Corral-Instance": instance.id,
            "X-Corral-Revision": instance.revision,
            "X-Corral-Cold-Start": "true" if cold else "false",
            "X-Corral-Duration-Ms": f"{answer.duration_ms:.2f}",
            "X-Corral-Memory-Size-Mb": str(settings.memory_mib),
        })
        if used is not None:
            headers["X-Corral-Max-Memory-Used-Mb"] = str(used)
        if init_ms is not None:
            headers["X-Corral-Init-Duration-Ms"] = f"{init_ms:.2f}"
        return web.Response(status=answer.status, body=answer.body, headers=headers)
