"""The options every remote backend shares (``--memory``, ``--timeout``, ``--environment``, ``--region``,
``--runtime``, ``--function-name``) and their parsers: what a backend's plugin module needs to declare
its options, without ``corral.remote`` (the ``corral`` command loads every plugin, on every run)."""

from __future__ import annotations

import re
import sys
from typing import Any

from corral.options import Option, int_in_range

#: The oldest Python corral's own code runs on (its ``requires-python``).
MIN_PYTHON = (3, 11)

_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RUNTIME = re.compile(r"^(?:python)?(\d)\.?(\d+)$")


def parse_text(value: Any) -> str:
    """A non-empty setting, stripped (an option's parser)."""
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def parse_endpoint(value: Any) -> str:
    """An ``http(s)://`` URL of another endpoint of a platform's API (``--lambda-endpoint``…)."""
    text = parse_text(value)
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError(f"{text!r} is not an http(s):// URL")
    return text.rstrip("/")


def parse_environment(value: Any) -> dict[str, str]:
    """``KEY=VALUE`` items (a list from repeated flags, one item from CORRAL_ENVIRONMENT, or a TOML table)."""
    if isinstance(value, dict):
        items = [f"{k}={v}" for k, v in value.items()]
    else:
        items = list(value) if isinstance(value, list | tuple) else [value]
    env: dict[str, str] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key:
            raise ValueError(f"{item!r} is not KEY=VALUE")
        if not _ENV_KEY.match(key):
            raise ValueError(f"{key!r} is not a variable name (a letter or _, then letters, digits, _)")
        env[key] = text
    return env


def parse_runtime(value: Any) -> str:
    """``python3.X`` (also written ``python3X`` or ``3.X``) with X at least 11, as ``python3.X``."""
    text = str(value).strip()
    match = _RUNTIME.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a Python runtime (python3.11, python3.12, ...)")
    version = (int(match.group(1)), int(match.group(2)))
    if version < MIN_PYTHON:
        raise ValueError(
            f"{text} cannot run corral, which needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer "
            f"(use --runtime python{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or later)"
        )
    return f"python{version[0]}.{version[1]}"


def _function_name(value: Any) -> str:
    text = parse_text(value)
    if not _FUNCTION_NAME.match(text):
        raise ValueError(f"{text!r} is not a function name (1-64 of A-Z a-z 0-9 _ -)")
    return text


def host_runtime() -> str:
    """This Python as a runtime name: ``python3.11`` when corral runs on 3.11."""
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


def python_version(runtime: str) -> str:
    """``python3.12`` -> ``3.12``."""
    return runtime[len("python"):]


MEMORY: Option[int] = Option("memory", int_in_range(128, 32768), 512,
                "memory of each function instance in MB (lambda, docker: 128-10240; gcf: 128-32768; default 512)",
                "MB")
TIMEOUT: Option[int] = Option("timeout", int_in_range(1, 3600), 60,
                 "seconds a task may run before it is stopped (lambda, docker: 1-900; gcf: 1-3600; default 60)",
                 "SECONDS")
ENVIRONMENT: Option[dict[str, str] | None] = Option(
    "environment", parse_environment, None,
    "KEY=VALUE set in the function's environment (repeatable; values are redacted in the manifest)",
    "KEY=VALUE", repeat=True, secret=True)
REGION: Option[str | None] = Option("region", parse_text, None,
                "the function's region (lambda: default AWS_REGION, then us-east-1; gcf: default us-central1)",
                "REGION")
RUNTIME: Option[str | None] = Option("runtime", parse_runtime, None,
                 f"the function's Python, python3.11 or newer (default: this Python, {host_runtime()})", "RUNTIME")
FUNCTION_NAME: Option[str | None] = Option("function-name", _function_name, None,
                       "the function's name (default: corral-<job module>-<class>)", "NAME")
#: Every remote backend returns these from ``corral_options`` (declared once however many do).
OPTIONS: list[Option[Any]] = [MEMORY, TIMEOUT, ENVIRONMENT, REGION, RUNTIME, FUNCTION_NAME]


__all__ = [
    "ENVIRONMENT",
    "FUNCTION_NAME",
    "MEMORY",
    "MIN_PYTHON",
    "OPTIONS",
    "REGION",
    "RUNTIME",
    "TIMEOUT",
    "host_runtime",
    "parse_endpoint",
    "parse_environment",
    "parse_runtime",
    "parse_text",
    "python_version",
]
