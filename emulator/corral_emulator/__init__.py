"""corral-emulator: a local AWS Lambda and Google Cloud Functions (2nd gen), functions in Docker containers.

The names below load on first use, so importing the package (as corral's plugin loader does) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_BASE_IMAGE": "corral_emulator.emulator",
    "Emulator": "corral_emulator.emulator",
    "default_base_image": "corral_emulator.emulator",
    "remove_containers": "corral_emulator.emulator",
    "EmulatorError": "corral_emulator.errors",
    "build_base_image": "corral_emulator.image",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'corral_emulator' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
