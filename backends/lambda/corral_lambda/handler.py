"""The function's handler: ``corral_lambda.handler.handler`` runs one corral task per invocation.

Shipped inside the deployment package; it imports corral and the standard library only (no boto3).

Payloads stay far below Lambda's 6 MB limits both ways. The event is the task's payload, except for
two optional keys the executor adds:

- ``_corral_payload``: the URL of the payload, stored in the job's working folder because it was large;
- ``_corral_results``: ``{"url": folder URL, "limit": bytes}``; a result larger than ``limit`` bytes is
  written in that folder and the function returns ``{"_corral_result": URL}`` instead, which the
  executor reads back (and removes).

Importing this module does nothing else (the executor imports it for these names); the first
invocation prepares the spill folder.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from corral import get_filesystem, run_task

MiB = 1 << 20
#: Share of the function's memory a task may buffer before spilling (the rest: Python, the job, I/O).
MEMORY_SHARE = 0.4
SPILL_DIR = "/tmp/corral-spill"
#: Results larger than this (JSON bytes) go through storage unless the event says otherwise (Lambda's
#: response limit is 6 MB).
INLINE_RESULT_LIMIT = 1 * MiB
PAYLOAD_KEY = "_corral_payload"
RESULTS_KEY = "_corral_results"
RESULT_KEY = "_corral_result"


def _setup() -> None:
    os.environ.setdefault("CORRAL_SPILL_DIR", SPILL_DIR)
    os.makedirs(os.environ["CORRAL_SPILL_DIR"], exist_ok=True)


def _packaged(module: str) -> bool:
    root = os.environ.get("LAMBDA_TASK_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = os.path.join(root, *module.split("."))
    return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))


def prepare(event: dict[str, Any], memory_mb: int | None) -> dict[str, Any]:
    """The payload to run: the memory budget capped to this function's size, the packaged job module."""
    event = dict(event)
    if memory_mb:
        cap = int(memory_mb * MEMORY_SHARE * MiB)
        budget = event.get("memory_budget")
        event["memory_budget"] = min(int(budget), cap) if budget else cap
    job = event.get("job")
    # Run the code that was deployed, even where the driver's path to the job file is visible too.
    if isinstance(job, dict) and job.get("path") and _packaged(job["module"]):
        event["job"] = {**job, "path": None}
    return event


def unwrap(event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(payload, where large results go)``: the payload read from storage when the event points to it."""
    event = dict(event)
    ref = event.pop(PAYLOAD_KEY, None)
    results = event.pop(RESULTS_KEY, None)
    if ref:
        event = json.loads(get_filesystem(ref).read_bytes(ref))
    return event, results


def wrap(result: dict[str, Any], results: dict[str, Any] | None) -> dict[str, Any]:
    """``result``, or a reference to it in storage when it is too large to return."""
    if not results or not results.get("url"):
        return result
    data = json.dumps(result, separators=(",", ":")).encode("utf-8")
    if len(data) <= int(results.get("limit") or INLINE_RESULT_LIMIT):
        return result
    url = f"{str(results['url']).rstrip('/')}/result-{uuid.uuid4().hex}.json"
    get_filesystem(url).write_bytes(url, data)
    return {RESULT_KEY: url, "bytes": len(data)}


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    _setup()
    memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    payload, results = unwrap(event)
    return wrap(run_task(prepare(payload, int(memory) if memory and memory.isdigit() else None)), results)
