"""Lambda's Runtime API, one small server per sandbox (its own port on 127.0.0.1).

The runtime in the container (our stdlib bootstrap or AWS's ``awslambdaric``) long-polls
``/invocation/next`` and posts the result to ``/invocation/{id}/response`` or ``/error``;
initialisation failures go to ``/init/error``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from corral_emulator.sandbox import Sandbox

PREFIX = "/2018-06-01/runtime"
MAX_RESPONSE_BYTES = 6291556  # Lambda's synchronous response limit
READ_LIMIT = 256 * 1024 * 1024

SANDBOX = web.AppKey("sandbox", object)


def _sandbox(request: web.Request) -> Sandbox:
    return request.app[SANDBOX]  # type: ignore[return-value]


def _error(status: int, error_type: str, message: str) -> web.Response:
    return web.json_response({"errorMessage": message, "errorType": error_type}, status=status)


async def next_invocation(request: web.Request) -> web.StreamResponse:
    sandbox = _sandbox(request)
    invocation = await sandbox.next_invocation()
    headers = {
        "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
        "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
        "Lambda-Runtime-Invoked-Function-Arn": invocation.function_arn,
        "Lambda-Runtime-Trace-Id": invocation.trace_id,
        "Content-Type": "application/json",
    }
    if invocation.client_context:
        headers["Lambda-Runtime-Client-Context"] = invocation.client_context
    return web.Response(body=invocation.payload, headers=headers)


async def _read(request: web.Request) -> bytes | None:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return None


async def invocation_response(request: web.Request) -> web.StreamResponse:
    sandbox = _sandbox(request)
    request_id = request.match_info["request_id"]
    if not sandbox.is_current(request_id):
        return _error(400, "InvalidRequestID", "Invalid request ID")
    body = await _read(request)
    size = len(body) if body is not None else (request.content_length or READ_LIMIT + 1)
    if size > MAX_RESPONSE_BYTES:
        sandbox.response_too_large(request_id, size)
        return _error(413, "RequestEntityTooLarge",
                      f"Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).")
    sandbox.complete(request_id, body or b"", None)
    return web.json_response({"status": "OK"}, status=202)


async def invocation_error(request: web.Request) -> web.StreamResponse:
    sandbox = _sandbox(request)
    request_id = request.match_info["request_id"]
    if not sandbox.is_current(request_id):
        return _error(400, "InvalidRequestID", "Invalid request ID")
    body = await _read(request) or b""
    header_type = request.headers.get("Lambda-Runtime-Function-Error-Type", "Unhandled")
    sandbox.complete(request_id, normalize_error(body, header_type), "Unhandled")
    return web.json_response({"status": "OK"}, status=202)


async def init_error(request: web.Request) -> web.StreamResponse:
    sandbox = _sandbox(request)
    body = await _read(request) or b""
    header_type = request.headers.get("Lambda-Runtime-Function-Error-Type", "Runtime.Unknown")
    sandbox.init_failed(normalize_error(body, header_type))
    return web.json_response({"status": "OK"}, status=202)


def normalize_error(body: bytes, error_type: str) -> bytes:
    """The runtime's error document, or one built from the error-type header if it sent none."""
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "errorType" in doc:
        return body
    if isinstance(doc, dict):
        doc.setdefault("errorType", error_type)
        doc.setdefault("errorMessage", "")
        return json.dumps(doc).encode()
    return json.dumps({"errorMessage": body.decode("utf-8", "replace"), "errorType": error_type}).encode()


def make_app(sandbox: Sandbox) -> web.Application:
    app = web.Application(client_max_size=READ_LIMIT)
    app[SANDBOX] = sandbox
    app.router.add_get(PREFIX + "/invocation/next", next_invocation)
    app.router.add_post(PREFIX + "/invocation/{request_id}/response", invocation_response)
    app.router.add_post(PREFIX + "/invocation/{request_id}/error", invocation_error)
    app.router.add_post(PREFIX + "/init/error", init_error)
    return app
