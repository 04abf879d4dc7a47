"""The Cloud Functions entry point corral deploys: ``corral_task`` runs one corral task per request.

Shipped as ``main.py`` at the root of the function's source, next to corral, the job and their
packages (Linux wheels, unpacked), which it puts first on ``sys.path``. It imports corral and the
standard library only; functions-framework (GCF's, or the emulator's) serves it. Everything it does is
``corral.remote.run_remote``'s; this adds where the function's memory size (``CORRAL_MEMORY_MB``, set
by corral at deploy) and code folder are, and answers an exception that escapes the task (a job
calling ``sys.exit``) as functions-framework would, 500 with ``X-Google-Status: crash``, but with the
traceback in the body, so that the driver can show it.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path[:1]:
    sys.path.insert(0, HERE)

from corral.remote import run_remote  # noqa: E402 - after the package's folder is on sys.path

JSON = {"Content-Type": "application/json"}


def corral_task(request: Any) -> tuple[str, int, dict[str, str]]:
    try:
        event = json.loads(request.get_data())
    except ValueError as exc:
        return json.dumps({"error": f"the request is not a corral task: {exc}"}), 400, JSON
    memory = os.environ.get("CORRAL_MEMORY_MB", "")
    try:
        result = run_remote(event, int(memory) if memory.isdigit() else None, HERE)
    except BaseException as exc:  # raised past run_task (SystemExit, KeyboardInterrupt): the user's code
        error = {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc(),
                 "kind": "user"}
        return json.dumps({"ok": False, "error": error}), 500, {**JSON, "X-Google-Status": "crash"}
    return json.dumps(result, separators=(",", ":")), 200, JSON
