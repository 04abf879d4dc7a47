"""The function's handler: ``corral_lambda.handler.handler`` runs one corral task per invocation.

Shipped inside the deployment package; it imports corral and the standard library only (no boto3).
"""

from __future__ import annotations

import os
from typing import Any

from corral import run_task

MiB = 1 << 20
#: Share of the function's memory a task may buffer before spilling (the rest: Python, the job, I/O).
MEMORY_SHARE = 0.4
SPILL_DIR = "/tmp/corral-spill"


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


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    return run_task(prepare(event, int(memory) if memory and memory.isdigit() else None))


_setup()
