"""The in-container runtime for Python handlers (standard library only).

The emulator mounts this file read-only at ``/opt/corral/bootstrap.py`` and runs it with ``python3``, so
any image with a Python 3 interpreter serves as a Lambda sandbox. It speaks Lambda's Runtime API at
``$AWS_LAMBDA_RUNTIME_API`` like AWS's own runtime client: load ``$_HANDLER`` from ``$LAMBDA_TASK_ROOT``
(errors go to ``/init/error``), then loop on ``/invocation/next``, call ``handler(event, context)`` and
post the result to ``/response`` or the exception to ``/error``. Once the Runtime API has gone for good
(the emulator was killed: nothing else closes it while the container lives), it exits within seconds,
even mid-invocation, rather than running on for an emulator that will never read the result.
"""

from __future__ import annotations

import http.client
import importlib
import json
import os
import socket
import sys
import threading
import time
import traceback

API_PREFIX = "/2018-06-01/runtime"


class RuntimeClient:
    """A keep-alive HTTP/1.1 connection to the Runtime API (reconnects once on a broken connection)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host = host or "127.0.0.1"
        self.port = int(port)
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port)
            try:
                self.conn.request(method, API_PREFIX + path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                return response.status, response.headers, response.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def exit_when_gone(host: str, port: int, every: float = 1.0, misses: int = 3) -> None:
    """A daemon thread that ends the process once ``misses`` connections in a row to the Runtime API are
    refused (a slow answer is no miss: the emulator is busy, not gone)."""

    def watch() -> None:
        missed = 0
        while True:
            time.sleep(every)
            try:
                socket.create_connection((host, port), timeout=every).close()
                missed = 0
            except ConnectionRefusedError:
                missed += 1
                if missed >= misses:
                    print("[corral-emulator] the emulator is gone: stopping", flush=True)
                    os._exit(1)
            except OSError:
                missed = 0

    threading.Thread(target=watch, name="corral-emulator-watch", daemon=True).start()


class LambdaContext:
    """The ``context`` argument of a handler, with the attributes of AWS's Python runtime."""

    def __init__(self, request_id: str, headers) -> None:
        self.aws_request_id = request_id
        self.invoked_function_arn = headers.get("Lambda-Runtime-Invoked-Function-Arn")
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION")
        # A string, as in AWS's runtime (it comes from the environment).
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self._deadline_ms = int(headers.get("Lambda-Runtime-Deadline-Ms") or 0)
        self.identity = _json_or_none(headers.get("Lambda-Runtime-Cognito-Identity"))
        self.client_context = _json_or_none(headers.get("Lambda-Runtime-Client-Context"))

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))

    def __repr__(self) -> str:
        return f"LambdaContext(aws_request_id={self.aws_request_id!r}, function_name={self.function_name!r})"


def _json_or_none(text):
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


class InitError(Exception):
    def __init__(self, error_type: str, message: str, stack: list[str] | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.stack = stack or []


def load_handler(spec: str, task_root: str):
    if task_root not in sys.path:
        sys.path.insert(0, task_root)
    module_path, dot, function_name = spec.rpartition(".")
    if not dot or not module_path or not function_name:
        raise InitError("Runtime.MalformedHandlerName", f"Bad handler '{spec}': not enough values to unpack")
    module_name = module_path.replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as exc:
        raise InitError(
            "Runtime.UserCodeSyntaxError",
            f"Syntax error in module '{module_name}': {exc}",
            traceback.format_list(traceback.extract_tb(exc.__traceback__)),
        ) from exc
    except ImportError as exc:
        raise InitError(
            "Runtime.ImportModuleError",
            f"Unable to import module '{module_name}': {exc}",
            traceback.format_list(traceback.extract_tb(exc.__traceback__)),
        ) from exc
    handler = getattr(module, function_name, None)
    if handler is None:
        raise InitError(
            "Runtime.HandlerNotFound", f"Handler '{function_name}' missing on module '{module_name}'"
        )
    return handler


def error_body(exc: BaseException, request_id: str = "") -> dict:
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "requestId": request_id,
        "stackTrace": traceback.format_list(traceback.extract_tb(exc.__traceback__)),
    }


def log_error(body: dict) -> None:
    lines = "".join(body.get("stackTrace") or [])
    print(f"[ERROR] {body['errorType']}: {body['errorMessage']}\nTraceback (most recent call last):\n{lines}",
          file=sys.stdout, flush=True)


def main() -> int:
    client = RuntimeClient(os.environ["AWS_LAMBDA_RUNTIME_API"])
    exit_when_gone(client.host, client.port)
    task_root = os.environ.get("LAMBDA_TASK_ROOT", "/var/task")
    try:
        handler = load_handler(os.environ.get("_HANDLER", ""), task_root)
    except InitError as exc:
        body = {"errorMessage": exc.message, "errorType": exc.error_type, "requestId": "",
                "stackTrace": exc.stack}
        log_error(body)
        client.request("POST", "/init/error", json.dumps(body).encode(),
                       {"Lambda-Runtime-Function-Error-Type": exc.error_type})
        return 1
    except Exception as exc:
        body = error_body(exc)
        log_error(body)
        client.request("POST", "/init/error", json.dumps(body).encode(),
                       {"Lambda-Runtime-Function-Error-Type": "Runtime.Unknown"})
        return 1

    while True:
        status, headers, payload = client.request("GET", "/invocation/next")
        if status != 200:
            time.sleep(0.1)
            continue
        request_id = headers.get("Lambda-Runtime-Aws-Request-Id", "")
        trace_id = headers.get("Lambda-Runtime-Trace-Id")
        if trace_id:
            os.environ["_X_AMZN_TRACE_ID"] = trace_id
        else:
            os.environ.pop("_X_AMZN_TRACE_ID", None)
        context = LambdaContext(request_id, headers)
        try:
            event = json.loads(payload) if payload else {}
            result = handler(event, context)
        except Exception as exc:
            body = error_body(exc, request_id)
            log_error(body)
            client.request("POST", f"/invocation/{request_id}/error", json.dumps(body).encode(),
                           {"Lambda-Runtime-Function-Error-Type": "Unhandled", "Content-Type": "application/json"})
            continue
        try:
            data = json.dumps(result).encode()
        except (TypeError, ValueError) as exc:
            body = {"errorMessage": f"Unable to marshal response: {exc}", "errorType": "Runtime.MarshalError",
                    "requestId": request_id, "stackTrace": []}
            log_error(body)
            client.request("POST", f"/invocation/{request_id}/error", json.dumps(body).encode(),
                           {"Lambda-Runtime-Function-Error-Type": "Runtime.MarshalError"})
            continue
        # A 413 (response too large) is reported to the caller by the emulator; carry on.
        client.request("POST", f"/invocation/{request_id}/response", data, {"Content-Type": "application/json"})


if __name__ == "__main__":
    sys.exit(main())
