"""Which Lambda API operation a request is, for the answer to one the emulator does not serve.

The names come from botocore's model of the Lambda API (the same one boto3 and the AWS CLI call with),
when botocore is installed; without it, the answer names the method and path only.
"""

from __future__ import annotations

import functools
import re

from corral_emulator.errors import ApiError

UNSUPPORTED_CODE = "UnsupportedOperationException"


@functools.lru_cache(maxsize=1)
def _routes() -> tuple[tuple[str, re.Pattern[str], int, str], ...]:
    """(method, path pattern, literal characters, operation name) of every operation in botocore's model."""
    try:
        from botocore.loaders import create_loader

        model = create_loader().load_service_model("lambda", "service-2")
    except Exception:  # botocore missing or its data unreadable: answer without the name
        return ()
    routes = []
    for name, operation in model.get("operations", {}).items():
        http = operation.get("http") or {}
        uri = str(http.get("requestUri", "")).split("?", 1)[0]
        if not uri:
            continue
        pattern, literal, position = "", 0, 0
        for match in re.finditer(r"\{([^}]+)\}", uri):
            fixed = uri[position: match.start()]
            pattern += re.escape(fixed) + (".+" if match.group(1).endswith("+") else "[^/]+")
            literal += len(fixed)
            position = match.end()
        pattern += re.escape(uri[position:])
        literal += len(uri) - position
        routes.append((str(http.get("method", "GET")).upper(), re.compile(f"^{pattern}/?$"), literal, name))
    return tuple(routes)


def operation_name(method: str, path: str) -> str | None:
    """The Lambda operation of ``method path`` (the most specific match), or None."""
    matches = [(literal, name) for verb, pattern, literal, name in _routes()
               if verb == method.upper() and pattern.match(path)]
    return max(matches)[1] if matches else None


def unsupported(method: str, path: str) -> ApiError:
    """501 with AWS's JSON error shape: boto3 raises ``UnsupportedOperationException`` and the AWS CLI prints
    "An error occurred (UnsupportedOperationException) when calling the X operation: <this message>"."""
    name = operation_name(method, path)
    if name:
        what = f"the Lambda operation {name} ({method} {path})"
    else:
        what = f"{method} {path}, which is no operation of the Lambda API it knows"
    return ApiError(UNSUPPORTED_CODE, 501, f"corral-emulator does not support {what}; its README lists the "
                                           "operations it serves")
