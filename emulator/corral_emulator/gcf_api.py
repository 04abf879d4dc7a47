"""The Cloud Functions v2 REST API (the subset corral-gcf uses), the upload URLs, ``/token`` and the functions' URLs.

Paths, as ``google-cloud-functions``' REST transport calls them (they do not collide with Lambda's):

- ``POST /v2/projects/{p}/locations/{l}/functions:generateUploadUrl``, then ``PUT /gcf-uploads/{token}``
- ``POST /v2/projects/{p}/locations/{l}/functions?functionId=ID``, ``GET`` (list)
- ``GET | PATCH | DELETE /v2/projects/{p}/locations/{l}/functions/{id}``
- ``GET /v2/projects/{p}/locations/{l}/operations/{op}``, ``GET .../operations`` (list)
- ``GET /v2/projects/{p}/locations/{l}/runtimes``
- ``POST /token``: OAuth 2.0 JWT-bearer grant (``tokens``)
- ``* /gcf/{p}/{l}/{id}[/path]``: the function's URL (``serviceConfig.uri``), with an ID token
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from corral_emulator.gcf_functions import InvalidArgument
from corral_emulator.gcf_service import MAX_SOURCE_BYTES, GcfService, GoogleError
from corral_emulator.tokens import TokenError

log = logging.getLogger("corral_emulator")

SERVICE = web.AppKey("gcf", GcfService)
PREFIX = "/v2/projects/{project}/locations/{location}"


def _service(request: web.Request) -> GcfService:
    return request.app[SERVICE]


def _parent(request: web.Request) -> tuple[str, str]:
    return request.match_info["project"], request.match_info["location"]


def _name(request: web.Request, kind: str = "functions", key: str = "function") -> str:
    project, location = _parent(request)
    return f"projects/{project}/locations/{location}/{kind}/{request.match_info[key]}"


@web.middleware
async def google_errors(request: web.Request, handler) -> web.StreamResponse:
    """Errors of the Functions API in Google's JSON shape (``{"error": {"code", "message", "status"}}``)."""
    if not request.path.startswith("/v2/"):
        return await handler(request)
    try:
        return await handler(request)
    except GoogleError as exc:
        return web.json_response(exc.body(), status=exc.code)
    except InvalidArgument as exc:
        return web.json_response(GoogleError(400, "INVALID_ARGUMENT", str(exc)).body(), status=400)
    except web.HTTPNotFound:
        error = GoogleError(404, "NOT_FOUND", f"{request.method} {request.path} is not part of the API "
                                              "corral-emulator serves")
        return web.json_response(error.body(), status=404)
    except web.HTTPMethodNotAllowed:
        error = GoogleError(405, "UNIMPLEMENTED", f"{request.method} {request.path} is not implemented")
        return web.json_response(error.body(), status=405)
    except web.HTTPException:
        raise
    except Exception as exc:
        log.exception("internal error on %s %s", request.method, request.path)
        error = GoogleError(500, "INTERNAL", f"corral-emulator internal error: {exc}")
        return web.json_response(error.body(), status=500)


async def _json(request: web.Request) -> dict:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidArgument("Invalid JSON payload received: the request body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidArgument("Invalid JSON payload received: the request body must be a JSON object")
    return body


# ------------------------------------------------------------------ the Functions API
async def generate_upload_url(request: web.Request) -> web.Response:
    await _json(request)
    return web.json_response(_service(request).generate_upload_url(*_parent(request)))


async def create_function(request: web.Request) -> web.Response:
    body = await _json(request)
    function_id = request.query.get("functionId", "")
    op = await _service(request).create(*_parent(request), function_id, body)
    return web.json_response(op.to_json())


async def list_functions(request: web.Request) -> web.Response:
    project, location = _parent(request)
    prefix = f"projects/{project}/locations/{location}/functions/" if location != "-" else f"projects/{project}/"
    functions = [f.to_json() for name, f in sorted(_service(request).functions.items()) if name.startswith(prefix)]
    return web.json_response({"functions": functions})


async def get_function(request: web.Request) -> web.Response:
    return web.json_response(_service(request).get(_name(request)).to_json())


async def patch_function(request: web.Request) -> web.Response:
    body = await _json(request)
    op = await _service(request).patch(_name(request), body, request.query.get("updateMask", ""))
    return web.json_response(op.to_json())


async def delete_function(request: web.Request) -> web.Response:
    op = await _service(request).delete(_name(request))
    return web.json_response(op.to_json())


async def get_operation(request: web.Request) -> web.Response:
    name = _name(request, "operations", "operation")
    op = _service(request).operations.get(name)
    if op is None:
        raise GoogleError(404, "NOT_FOUND", f"Operation '{name}' was not found")
    return web.json_response(op.to_json())


async def list_operations(request: web.Request) -> web.Response:
    project, location = _parent(request)
    prefix = f"projects/{project}/locations/{location}/operations/"
    ops = [op.to_json() for name, op in sorted(_service(request).operations.items()) if name.startswith(prefix)]
    return web.json_response({"operations": ops})


async def list_runtimes(request: web.Request) -> web.Response:
    return web.json_response({"runtimes": await _service(request).runtimes()})


# ------------------------------------------------------------------ uploads, tokens, invocations
async def put_upload(request: web.Request) -> web.Response:
    """The signed upload URL (on GCF, a GCS URL signed for ``Content-Type: application/zip``)."""
    service = _service(request)
    token = request.match_info["token"]
    if token not in service.uploads:
        return web.Response(status=404, text="NoSuchUpload: this upload URL was not issued by generateUploadUrl\n")
    if request.content_type != "application/zip":
        return web.Response(status=403, text=(
            "SignatureDoesNotMatch: the upload URL is signed for 'Content-Type: application/zip', and this "
            f"request has Content-Type {request.content_type!r}\n"))
    if request.content_length is not None and request.content_length > MAX_SOURCE_BYTES:
        return web.Response(status=413, text=f"EntityTooLarge: a source zip may have at most {MAX_SOURCE_BYTES} "
                                             "bytes\n")
    data = await request.read()
    await service.put_upload(token, data)
    return web.Response(status=200)


async def token(request: web.Request) -> web.Response:
    form = dict(await request.post())
    try:
        answer = _service(request).tokens.grant({k: str(v) for k, v in form.items()}, request.path)
    except TokenError as exc:
        return web.json_response({"error": exc.code, "error_description": exc.description}, status=400)
    return web.json_response(answer, headers={"Cache-Control": "no-store"})


async def invoke(request: web.Request) -> web.StreamResponse:
    info = request.match_info
    tail = info.get("tail")
    path = "/" + tail if tail is not None else "/"
    return await _service(request).invoke(request, info["project"], info["location"], info["function"], path)


def add_routes(app: web.Application, service: GcfService) -> None:
    """Serve the Cloud Functions API from ``app`` (which has ``google_errors`` among its middlewares)."""
    app[SERVICE] = service
    r = app.router
    r.add_post(PREFIX + "/functions:generateUploadUrl", generate_upload_url)
    r.add_post(PREFIX + "/functions", create_function)
    r.add_get(PREFIX + "/functions", list_functions)
    r.add_get(PREFIX + "/functions/{function}", get_function)
    r.add_patch(PREFIX + "/functions/{function}", patch_function)
    r.add_delete(PREFIX + "/functions/{function}", delete_function)
    r.add_get(PREFIX + "/operations/{operation}", get_operation)
    r.add_get(PREFIX + "/operations", list_operations)
    r.add_get(PREFIX + "/runtimes", list_runtimes)
    r.add_put("/gcf-uploads/{token}", put_upload)
    r.add_post("/token", token)
    r.add_route("*", "/gcf/{project}/{location}/{function}", invoke)
    r.add_route("*", "/gcf/{project}/{location}/{function}/{tail:.*}", invoke)
