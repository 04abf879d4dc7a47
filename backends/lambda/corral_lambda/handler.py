"""The function's handler: ``corral_lambda.handler.handler`` runs one corral task per invocation.

Shipped inside the deployment package; it imports corral and the standard library only (no boto3).
Everything it does is ``corral.remote.run_remote``'s: this adds where Lambda says the function's
memory size and code folder are.
"""

from __future__ import annotations

import os
from typing import Any

from corral.remote import run_remote


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    root = os.environ.get("LAMBDA_TASK_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return run_remote(event, int(memory) if memory and memory.isdigit() else None, root)
