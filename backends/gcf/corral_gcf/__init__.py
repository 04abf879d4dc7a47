"""corral's Google Cloud Functions backend: ``--backend gcf`` (Cloud Functions 2nd gen).

``corral_gcf.main`` is the function's entry point (shipped as the source's ``main.py``);
``corral_gcf.executor`` deploys and invokes it from the driver (google-cloud-functions, google-auth).
The names below load on first use, so that importing this package (as the plugin loader does)
imports no Google library.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ENTRY_POINT": "corral_gcf.executor",
    "GcfConfig": "corral_gcf.executor",
    "GcfExecutor": "corral_gcf.executor",
    "outcome_from_answer": "corral_gcf.answers",
    "PRICES_READ": "corral_gcf.pricing",
    "estimate": "corral_gcf.pricing",
    "vcpus_for": "corral_gcf.pricing",
    "job_bindings": "corral_gcf.iam",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'corral_gcf' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
