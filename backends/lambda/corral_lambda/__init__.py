"""corral's AWS Lambda backend: ``--backend lambda``.

``corral_lambda.handler`` runs inside the function; ``corral_lambda.executor`` deploys and invokes it
from the driver (boto3). The names below load on first use, so that importing this package (as the
plugin loader and the function's handler do) imports neither boto3 nor the executor.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "HANDLER": "corral_lambda.executor",
    "LambdaConfig": "corral_lambda.executor",
    "LambdaExecutor": "corral_lambda.executor",
    "code_sha256": "corral_lambda.executor",
    "handler": "corral_lambda.handler",
    "PRICES": "corral_lambda.pricing",
    "PRICES_READ": "corral_lambda.pricing",
    "estimate": "corral_lambda.pricing",
    "job_policy": "corral_lambda.iam",
    "invoke_stats": "corral_lambda.results",
    "outcome_from_invoke": "corral_lambda.results",
    "parse_report": "corral_lambda.results",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'corral_lambda' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
