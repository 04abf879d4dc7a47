"""Lambda's HTTP API (rest-json, the paths of botocore's service model), served by aiohttp."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re

from aiohttp import web

from corral_emulator.errors import ApiError, invalid, too_large
from corral_emulator.functions import NAME_RE, Function, parse_function_name, parse_function_ref
from corral_emulator.lambda_operations import unsupported
from corral_emulator.lambda_service import LambdaService, check_tags

log = logging.getLogger("corral_emulator")

MAX_REQUEST_BYTES = 6291456  # Lambda's synchronous request payload limit
MAX_EVENT_BYTES = 1024 * 1024  # Lambda's asynchronous one (1 MB since 2025; 256 KB before)
API_READ_LIMIT = 128 * 1024 * 1024
SERVICE = web.AppKey("lambda", LambdaService)
#: The paths of Lambda's API: every operation's starts with an API date (the GCF API's, on the same port,
#: do not collide with them).
DATED_PATH = re.compile(r"^/\d{4}-\d{2}-\d{2}/")
OWN_PREFIX = "/corral/functions/"


def _service(request: web.Request) -> LambdaService:
    return request.app[SERVICE]


def _name(request: web.Request) -> str:
    """The function of an operation on the function itself (no version or alias)."""
    name = parse_function_name(request.match_info["name"])
    if request.query.get("Qualifier") not in (None, "$LATEST"):
        raise invalid(f"This operation does not take a Qualifier ({request.query['Qualifier']})")
    return name


def _qualifier(request: web.Request) -> str | None:
    qualifier = request.query.get("Qualifier")
    if qualifier is not None and not re.fullmatch(r"[a-zA-Z0-9$_-]{1,128}", qualifier):
        raise invalid(f"1 validation error detected: Value '{qualifier}' at 'qualifier' failed to satisfy "
                      "constraint: Member must satisfy regular expression pattern: (|[a-zA-Z0-9$_-]+)")
    return qualifier


def _target(request: web.Request, pick: bool = False) -> tuple[Function, Function, str]:
    """($LATEST, the version a Qualifier or a qualified ARN names, the ARN as given) of the request."""
    return _service(request).resolve(request.match_info["name"], _qualifier(request), pick=pick)


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


def _error(exc: ApiError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers={"X-Amzn-ErrorType": exc.code})


@web.middleware
async def aws_errors(request: web.Request, handler) -> web.StreamResponse:
    """Errors of Lambda's paths in AWS's JSON form (the other paths have their own)."""
    if not (DATED_PATH.match(request.path) or request.path.startswith(OWN_PREFIX)):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        return _error(unsupported(request.method, request.path))
    except web.HTTPRequestEntityTooLarge:
        return _error(too_large(f"Request must be smaller than {API_READ_LIMIT} bytes"))
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
    return _ok(_published(request, function, body).configuration(), status=201)


def _published(request: web.Request, function: Function, body: dict) -> Function:
    """With ``"Publish": true`` (CreateFunction, UpdateFunctionCode), a version is published from the new
    $LATEST and its configuration answered, as on Lambda; else $LATEST itself."""
    publish = body.get("Publish", False)
    if not isinstance(publish, bool):
        raise invalid(f"Publish must be true or false, not {publish!r}")
    return _service(request).publish_version(function.name, {}) if publish else function


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


def _configuration(version: Function, invoked_arn: str) -> dict:
    """A version's configuration, with the ARN it was asked by (an alias's, for an alias)."""
    data = version.configuration()
    if invoked_arn != version.arn and not invoked_arn.endswith(":$LATEST"):
        data["FunctionArn"] = invoked_arn
    return data


async def get_function(request: web.Request) -> web.Response:
    function, version, invoked = _target(request)
    host = request.host
    query = "" if version is function else f"?Qualifier={version.version}"
    data = {
        "Configuration": _configuration(version, invoked),
        "Code": {"RepositoryType": "S3",
                 "Location": f"http://{host}/corral/functions/{function.name}/code.zip{query}"},
        "Tags": dict(function.tags),
    }
    if function.reserved_concurrency is not None:
        data["Concurrency"] = {"ReservedConcurrentExecutions": function.reserved_concurrency}
    return _ok(data)


async def get_code_zip(request: web.Request) -> web.Response:
    _, version, _ = _target(request)
    return web.Response(body=version.zip_bytes, content_type="application/zip")


async def get_configuration(request: web.Request) -> web.Response:
    _, version, invoked = _target(request)
    return _ok(_configuration(version, invoked))


async def update_configuration(request: web.Request) -> web.Response:
    body = await _json(request)
    function = await _service(request).update_configuration(_name(request), body)
    return _ok(function.configuration())


async def update_code(request: web.Request) -> web.Response:
    body = await _json(request)
    function = await _service(request).update_code(_name(request), body)
    return _ok(_published(request, function, body).configuration())


async def delete_function(request: web.Request) -> web.Response:
    name, in_name = parse_function_ref(request.match_info["name"])  # a version's ARN names the version
    qualifier = _qualifier(request)
    if in_name is not None and qualifier is not None and in_name != qualifier:
        raise invalid("The derived qualifier from the function name does not match the specified qualifier.")
    await _service(request).delete_function(name, qualifier or in_name)
    return _ok(None, status=204)


# ------------------------------------------------------------------ versions and aliases
async def publish_version(request: web.Request) -> web.Response:
    body = await _json(request)
    return _ok(_service(request).publish_version(_name(request), body).configuration(), status=201)


def _page(request: web.Request, items: list) -> tuple[list, str | None]:
    try:
        start = int(request.query.get("Marker") or 0)
        count = int(request.query.get("MaxItems") or 50)
    except ValueError:
        raise invalid("Marker and MaxItems must be numbers") from None
    if not 1 <= count <= 10000:
        raise invalid("MaxItems must be between 1 and 10000")
    return items[start: start + count], str(start + count) if start + count < len(items) else None


async def list_versions(request: web.Request) -> web.Response:
    versions, marker = _page(request, _service(request).list_versions(_name(request)))
    data: dict = {"Versions": [dict(v.configuration(), FunctionArn=v.qualified_arn) for v in versions]}
    if marker:
        data["NextMarker"] = marker
    return _ok(data)


async def create_alias(request: web.Request) -> web.Response:
    body = await _json(request)
    return _ok(_service(request).create_alias(_name(request), body).configuration(), status=201)


async def list_aliases(request: web.Request) -> web.Response:
    function = _service(request).get(_name(request))
    wanted = request.query.get("FunctionVersion")
    aliases = [a for a in function.aliases.values() if wanted is None or a.points_at(wanted)]
    page, marker = _page(request, sorted(aliases, key=lambda a: a.name))
    data: dict = {"Aliases": [a.configuration() for a in page]}
    if marker:
        data["NextMarker"] = marker
    return _ok(data)


async def get_alias(request: web.Request) -> web.Response:
    return _ok(_service(request).get_alias(_name(request), request.match_info["alias"]).configuration())


async def update_alias(request: web.Request) -> web.Response:
    body = await _json(request)
    alias = _service(request).update_alias(_name(request), request.match_info["alias"], body)
    return _ok(alias.configuration())


async def delete_alias(request: web.Request) -> web.Response:
    _service(request).delete_alias(_name(request), request.match_info["alias"])
    return _ok(None, status=204)


# ------------------------------------------------------------------ tags and the account
async def tag_resource(request: web.Request) -> web.Response:
    body = await _json(request)
    function = _service(request).tagged(request.match_info["arn"])
    if not body.get("Tags"):
        raise invalid("Tags are required: a map of at least one key to a value")
    tags = check_tags(body["Tags"])
    if len({**function.tags, **tags}) > 50:
        raise invalid("A function can have at most 50 tags")
    function.tags.update(tags)
    return _ok(None, status=204)


async def list_tags(request: web.Request) -> web.Response:
    return _ok({"Tags": dict(_service(request).tagged(request.match_info["arn"]).tags)})


async def untag_resource(request: web.Request) -> web.Response:
    function = _service(request).tagged(request.match_info["arn"])
    keys = request.query.getall("tagKeys", [])
    if not keys:
        raise invalid("TagKeys are required")
    for key in keys:
        function.tags.pop(key, None)
    return _ok(None, status=204)


async def account_settings(request: web.Request) -> web.Response:
    return _ok(_service(request).account_settings())


# ------------------------------------------------------------------ asynchronous invocation configs
async def put_event_config(request: web.Request) -> web.Response:
    body = await _json(request)
    config = _service(request).put_event_config(request.match_info["name"], _qualifier(request), body,
                                                replace=request.method == "PUT")
    return _ok(config.shape())


async def get_event_config(request: web.Request) -> web.Response:
    return _ok(_service(request).event_config(request.match_info["name"], _qualifier(request)).shape())


async def delete_event_config(request: web.Request) -> web.Response:
    _service(request).delete_event_config(request.match_info["name"], _qualifier(request))
    return _ok(None, status=204)


async def list_event_configs(request: web.Request) -> web.Response:
    configs = _service(request).event_configs(request.match_info["name"])
    return _ok({"FunctionEventInvokeConfigs": [c.shape() for c in configs]})


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
    limit_message = f"Request must be smaller than {MAX_REQUEST_BYTES} bytes for the InvokeFunction operation"
    if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
        raise too_large(limit_message)
    payload = await request.read()
    if len(payload) > MAX_REQUEST_BYTES:
        raise too_large(limit_message)
    function, version, invoked = _target(request, pick=True)
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
        return web.Response(status=204, headers={"X-Amz-Executed-Version": version.version})
    if invocation_type == "Event":
        if len(payload) > MAX_EVENT_BYTES:
            raise too_large(f"Request must be smaller than {MAX_EVENT_BYTES} bytes for the InvokeFunction "
                            "operation (an asynchronous invocation)")
        qualifier = _qualifier(request) or parse_function_ref(request.match_info["name"])[1]
        request_id = service.submit_event(function.name, qualifier, payload)
        return web.Response(status=202, headers={"X-Amzn-RequestId": request_id})
    result = await service.invoke(function, version, invoked, payload, client_context)
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
    r.add_post(f + "/versions", publish_version)
    r.add_get(f + "/versions", list_versions)
    r.add_post(f + "/aliases", create_alias)
    r.add_get(f + "/aliases", list_aliases)
    r.add_get(f + "/aliases/{alias}", get_alias)
    r.add_put(f + "/aliases/{alias}", update_alias)
    r.add_delete(f + "/aliases/{alias}", delete_alias)
    r.add_put("/2017-10-31/functions/{name}/concurrency", put_concurrency)
    r.add_delete("/2017-10-31/functions/{name}/concurrency", delete_concurrency)
    r.add_get("/2019-09-30/functions/{name}/concurrency", get_concurrency)
    r.add_post("/2017-03-31/tags/{arn}", tag_resource)
    r.add_get("/2017-03-31/tags/{arn}", list_tags)
    r.add_delete("/2017-03-31/tags/{arn}", untag_resource)
    r.add_get("/2016-08-19/account-settings", account_settings)
    r.add_get("/2016-08-19/account-settings/", account_settings)
    e = "/2019-09-25/functions/{name}/event-invoke-config"
    r.add_put(e, put_event_config)
    r.add_post(e, put_event_config)
    r.add_get(e, get_event_config)
    r.add_delete(e, delete_event_config)
    r.add_get(e + "/list", list_event_configs)
    r.add_get("/corral/functions/{name}/code.zip", get_code_zip)
