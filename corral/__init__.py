"""corral: MapReduce jobs written once in Python, run on threads, processes, local Lambda and Cloud
Functions emulators, AWS Lambda or Google Cloud Functions, with data in any fsspec filesystem.

Serverless backends build on ``corral.remote`` (``RemoteFunctionExecutor``, ``run_remote``)."""

from __future__ import annotations

from typing import Any

from corral._version import __version__
from corral.hookspecs import hookimpl
from corral.job import Job, Step

# Everything else loads on first use: every worker and every `corral` command imports this package,
# so it stays cheap to import (a tiny job runs end to end in a fraction of a second).
_LAZY = {
    "corral.errors": ("CorralError", "InputError", "JobFailed", "UsageError"),
    "corral.executor": (
        "CANCELLED", "DISK_FULL", "INFRASTRUCTURE", "INPUT_ERROR", "OUT_OF_MEMORY", "THROTTLED", "TIMEOUT",
        "USER_ERROR", "Executor", "ExecutorSpec", "Failure", "JobSource", "Outcome", "default_concurrency",
        "outcome_from_result",
    ),
    "corral.fs": ("FileInfo", "FileSystem", "ProtocolInfo", "get_filesystem"),
    "corral.options": ("Command", "Option", "int_in_range", "parse_bool", "parse_size"),
    "corral.packaging": ("Package", "PackagingError", "build_package", "manylinux_platforms"),
    "corral.remote": ("RemoteConfig", "RemoteFunctionExecutor", "run_remote"),
    "corral.settings": ("Settings",),
    "corral.sizing": ("MemorySizing",),
    "corral.worker": ("run_task",),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def run(job_class: type[Job], inputs: list[str] | str, out: str, **settings: Any) -> dict[str, Any]:
    """Run ``job_class`` on ``inputs`` into ``out`` from Python; return the manifest.

    ``settings`` are the CLI's options by name (``backend="threads"``, ``reducers=4``,
    ``split_size="1MB"``), resolved like flags (over ``CORRAL_*`` variables and config files).
    Raises ``JobFailed`` if a task fails after its retries, ``UsageError`` for bad input.
    """
    from corral.config import load_settings
    from corral.driver import Driver

    settings.setdefault("quiet", True)
    resolved = load_settings(settings)
    return Driver(job_class, [inputs] if isinstance(inputs, str) else list(inputs), out, resolved).run()


__all__ = [
    "CANCELLED",
    "DISK_FULL",
    "INFRASTRUCTURE",
    "INPUT_ERROR",
    "OUT_OF_MEMORY",
    "THROTTLED",
    "TIMEOUT",
    "USER_ERROR",
    "Command",
    "CorralError",
    "Executor",
    "ExecutorSpec",
    "Failure",
    "FileInfo",
    "FileSystem",
    "InputError",
    "Job",
    "JobFailed",
    "JobSource",
    "MemorySizing",
    "Option",
    "Outcome",
    "Package",
    "PackagingError",
    "ProtocolInfo",
    "RemoteConfig",
    "RemoteFunctionExecutor",
    "Settings",
    "Step",
    "UsageError",
    "__version__",
    "build_package",
    "default_concurrency",
    "get_filesystem",
    "hookimpl",
    "int_in_range",
    "manylinux_platforms",
    "outcome_from_result",
    "parse_bool",
    "parse_size",
    "run",
    "run_remote",
    "run_task",
]
