"""Lambda's HTTP API (rest-json, the paths of botocore's service model), served by aiohttp."""

from __future__ import annotations

import base64
import binascii
import json
import logging

from aiohttp import web

from corral_emulator.errors import ApiError, invalid, not_found, too_large
from corral_emulator.functions import NAME_RE, parse_function_name
from corral_emulator.lambda_service import LambdaService

log = logging.getLogger("corral_emulator")

MAX_REQUEST_BYTES = 6291456  # Lambda's synchronous request payload limit
API_READ_LIMIT = 128 * 1024 * 1024
SERVICE = web.AppKey("lambda", LambdaService)
#: The paths of Lambda's API (the GCF API's, on the same port, do not collide with them).
PREFIXES = ("/2015-03-31/", "/2017-10-31/", "/2019-09-30/", "/corral/functions/")


def _service(request: web.Request) -> LambdaService:
    return request.app[SERVICE]


def _name(request: web.Request) -> str:
    name = parse_function_name(request.match_info["name"])
    qualifier = request.query.get("Qualifier")
    if qualifier not in (None, "$LATEST"):
        raise not_found(f"Function not found: {request.match_info['name']}:{qualifier}")
    return name


async def _json(request: web.Request) -> dict:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError("InvalidRequestContentException", 400, "Could not parse request body into json") from None
    if not isinstance(body, dict):
        raise ApiError("InvalidRequestContentException", 400, "The request body must be a JSON object")
    return body


def _ok(data: dict | None, status: int = 200) -> web.Response:
    if data is None:
        return web.Response(status=status)
    return web.json_response(data, status=status)


@web.middleware
async def aws_errors(request: web.Request, handler) -> web.StreamResponse:
    """Errors of Lambda's paths in AWS's JSON form (the other paths have their own)."""
    if not request.path.startswith(PREFIXES):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.body(), status=exc.status, headers={"X-Amzn-ErrorType": exc.code})
    except web.HTTPRequestEntityTooLarge:
        exc = too_large(f"Request must be smaller than {API_READ_LIMIT} bytes")
        return web.json_response(exc.body(), status=exc.status, headers={"X-Amzn-ErrorType": exc.code})
    except web.HTTPException:
        raise
    except Exception as exc:
        log.exception("internal error on %s %s", request.method, request.path)
        body = {"Type": "Service", "message": f"corral-emulator internal error: {exc}"}
        return web.json_response(body, status=500, headers={"X-Amzn-ErrorType": "ServiceException"})


# ------------------------------------------------------------------ functions
async def create_function(request: web.Request) -> web.Response:
    body = await _json(request)
    name = body.get("FunctionName")
    if not isinstance(name, str) or not name:
        raise invalid("FunctionName is required")
    name = parse_function_name(name)
    if not NAME_RE.match(name):
        raise invalid(f"Function name {name!r} is not valid")
    if body.get("PackageType", "Zip") != "Zip":
        raise invalid("corral-emulator supports PackageType Zip only")
    function = await _service(request).create_function(name, body)
    return _ok(function.configuration(), status=201)


async def list_functions(request: web.Request) -> web.Response:
    service = _service(request)
    names = sorted(service.functions)
    try:
        start = int(request.query.get("Marker") or 0)
        count = int(request.query.get("MaxItems") or 50)
    except ValueError:
        raise invalid("Marker and MaxItems must be numbers") from None
    if not 1 <= count <= 10000:
        raise invalid("MaxItems must be between 1 and 10000")
    page = names[start: start + count]
    data: dict = {"Functions": [service.functions[n].configuration() for n in page]}
    if start + count < len(names):
        data["NextMarker"] = str(start + count)
    return _ok(data)


async def get_function(request: web.Request) -> web.Response:
    function = _service(request).get(_name(request))
    host = request.host
    data = {
        "Configuration": function.configuration(),
        "Code": {"RepositoryType": "S3",
                 "Location": f"http://{host}/corral/functions/{function.name}/code.zip"},
        "Tags": dict(function.tags),
    }
    if function.reserved_concurrency is not None:
        data["Concurrency"] = {"ReservedConcurrentExecutions": function.reserved_concurrency}
    return _ok(data)


async def get_code_zip(request: web.Request) -> web.Response:
    function = _service(request).get(_name(request))
    return web.Response(body=function.zip_bytes, content_type="application/zip")


async def get_configuration(request: web.Request) -> web.Response:
    return _ok(_service(request).get(_name(request)).configuration())


async def update_configuration(request: web.Request) -> web.Response:
    body = await _json(request)
    function = await _service(request).update_configuration(_name(request), body)
    return _ok(function.configuration())


async def update_code(request: web.Request) -> web.Response:
    body = await _json(request)
    function = await _service(request).update_code(_name(request), body)
    return _ok(function.configuration())


async def delete_function(request: web.Request) -> web.Response:
    await _service(request).delete_function(_name(request))
    return _ok(None, status=204)


# ------------------------------------------------------------------ concurrency
async def put_concurrency(request: web.Request) -> web.Response:
    body = await _json(request)
    service = _service(request)
    function = service.get(_name(request))
    value = body.get("ReservedConcurrentExecutions")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid("ReservedConcurrentExecutions must be a whole number >= 0")
    if value > service.max_concurrency:
        raise invalid(f"Specified ReservedConcurrentExecutions for function exceeds the emulator's "
                      f"concurrency limit ({service.max_concurrency}).")
    function.reserved_concurrency = value
    return _ok({"ReservedConcurrentExecutions": value})


async def get_concurrency(request: web.Request) -> web.Response:
    function = _service(request).get(_name(request))
    if function.reserved_concurrency is None:
        return _ok({})
    return _ok({"ReservedConcurrentExecutions": function.reserved_concurrency})


async def delete_concurrency(request: web.Request) -> web.Response:
    _service(request).get(_name(request)).reserved_concurrency = None
    return _ok(None, status=204)


# ------------------------------------------------------------------ invoke
async def invoke(request: web.Request) -> web.Response:
    service = _service(request)
    name = _name(request)
    limit_message = f"Request must be smaller than {MAX_REQUEST_BYTES} bytes for the InvokeFunction operation"
    if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
        raise too_large(limit_message)
    payload = await request.read()
    if len(payload) > MAX_REQUEST_BYTES:
        raise too_large(limit_message)
    function = service.get(name)
    invocation_type = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
    if invocation_type not in ("RequestResponse", "Event", "DryRun"):
        raise invalid(f"Invalid InvocationType {invocation_type!r}")
    log_type = request.headers.get("X-Amz-Log-Type", "None")
    if log_type not in ("None", "Tail"):
        raise invalid(f"Invalid LogType {log_type!r}")
    if payload.strip():
        try:
            json.loads(payload)
        except ValueError as exc:
            raise ApiError("InvalidRequestContentException", 400,
                           f"Could not parse request body into json: {exc}") from None
    else:
        payload = b"{}"
    client_context = None
    if request.headers.get("X-Amz-Client-Context"):
        try:
            client_context = base64.b64decode(request.headers["X-Amz-Client-Context"]).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise invalid("Client context must be a valid Base64-encoded JSON object.") from None
    if invocation_type == "DryRun":
        return web.Response(status=204, headers={"X-Amz-Executed-Version": "$LATEST"})
    if invocation_type == "Event":
        request_id = service.submit_event(function, payload)
        return web.Response(status=202, headers={"X-Amzn-RequestId": request_id})
    result = await service.invoke(function, payload, client_context)
    return web.Response(
        status=200,
        body=result.outcome.payload,
        content_type="application/json",
        headers=result.headers(tail=log_type == "Tail"),
    )


def add_routes(app: web.Application, service: LambdaService) -> None:
    """Serve Lambda's API from ``app`` (which has ``aws_errors`` among its middlewares)."""
    app[SERVICE] = service
    r = app.router
    for base in ("/2015-03-31/functions", "/2015-03-31/functions/"):
        r.add_post(base, create_function)
        r.add_get(base, list_functions)
    f = "/2015-03-31/functions/{name}"
    r.add_get(f, get_function)
    r.add_delete(f, delete_function)
    r.add_get(f + "/configuration", get_configuration)
    r.add_put(f + "/configuration", update_configuration)
    r.add_put(f + "/code", update_code)
    r.add_post(f + "/invocations", invoke)
    r.add_put("/2017-10-31/functions/{name}/concurrency", put_concurrency)
    r.add_delete("/2017-10-31/functions/{name}/concurrency", delete_concurrency)
    r.add_get("/2019-09-30/functions/{name}/concurrency", get_concurrency)
    r.add_get("/corral/functions/{name}/code.zip", get_code_zip)
