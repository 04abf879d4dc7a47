"""The settings of the Lambda code path. ``--memory`` and ``--timeout`` are defined here once and also
serve every backend built on this one (``--backend docker``). Another plugin may return these same
Option objects from its ``corral_options``; a new Option with one of these names is refused."""

from __future__ import annotations

import re
from typing import Any

from corral import Option, int_in_range
from corral_lambda.runtime import host_runtime, parse_architecture, parse_runtime

FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ROLE_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:iam::\d{12}:role/\S+$")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ENV_KEY = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]+$")
#: Variables Lambda sets itself and refuses in a function's configuration.
RESERVED_ENV = frozenset({
    "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
})
MAX_ENV_BYTES = 4096


def _text(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _url(value: Any) -> str:
    text = _text(value)
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError(f"{text!r} is not an http(s):// URL")
    return text.rstrip("/")


def _function_name(value: Any) -> str:
    text = _text(value)
    if not FUNCTION_NAME.match(text):
        raise ValueError(f"{text!r} is not a Lambda function name (1-64 of A-Z a-z 0-9 _ -)")
    return text


def _environment(value: Any) -> dict[str, str]:
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
        if not ENV_KEY.match(key):
            raise ValueError(f"{key!r} is not a variable name Lambda accepts (a letter, then letters, digits, _)")
        if key in RESERVED_ENV:
            raise ValueError(f"{key} is set by Lambda itself and cannot be configured")
        env[key] = text
    if sum(len(k) + len(v) for k, v in env.items()) > MAX_ENV_BYTES:
        raise ValueError(f"the variables exceed Lambda's {MAX_ENV_BYTES // 1024} KB limit")
    return env


def _bucket(value: Any) -> str:
    text = _text(value)
    if not BUCKET.match(text):
        raise ValueError(f"{text!r} is not an S3 bucket name")
    return text


def _role_arn(value: Any) -> str:
    text = _text(value)
    if not ROLE_ARN.match(text):
        raise ValueError(f"{text!r} is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)")
    return text


MEMORY = Option("memory", int_in_range(128, 10240), 512,
                "memory of each function instance in MB, 128-10240 (lambda, docker; default 512)", "MB")
TIMEOUT = Option("timeout", int_in_range(1, 900), 60,
                 "seconds a task may run before it is stopped, 1-900 (lambda, docker; default 60)", "SECONDS")
LAMBDA_ENDPOINT = Option("lambda-endpoint", _url, None,
                         "Lambda API endpoint URL, e.g. a corral-emulator (lambda)", "URL")
FUNCTION_NAME_OPTION = Option("function-name", _function_name, None,
                              "Lambda function name (default: corral-<job module>-<class>)", "NAME")
ROLE_ARN_OPTION = Option("lambda-role-arn", _role_arn, None,
                         "existing IAM role the function runs as; corral then manages no IAM (lambda; default: "
                         "a role corral creates, least privilege)", "ARN")
REGION = Option("region", _text, None, "AWS region (lambda; default: AWS_REGION, then us-east-1)", "REGION")
EPHEMERAL_STORAGE = Option("ephemeral-storage", int_in_range(512, 10240), 512,
                           "/tmp size of each function instance in MB, 512-10240 (lambda; default 512)", "MB")
ENVIRONMENT = Option("environment", _environment, None,
                     "KEY=VALUE set in the function's environment (lambda; repeatable)", "KEY=VALUE", repeat=True)
ARCHITECTURE = Option("architecture", parse_architecture, "x86_64",
                      "x86_64 or arm64: the function's CPU and its wheels' (lambda; default x86_64)", "ARCH")
RUNTIME = Option("runtime", parse_runtime, None,
                 f"python3.X runtime of the function, 3.11 or newer (lambda; default: this Python, "
                 f"{host_runtime()})", "RUNTIME")
DEPLOY_BUCKET = Option("deploy-bucket", _bucket, None,
                       "S3 bucket the code goes through when the zip is over 50 MB (lambda)", "BUCKET")

#: Every option of the Lambda code path (the ``corral_options`` of corral-lambda).
OPTIONS = [MEMORY, TIMEOUT, LAMBDA_ENDPOINT, FUNCTION_NAME_OPTION, ROLE_ARN_OPTION, REGION, EPHEMERAL_STORAGE,
           ENVIRONMENT, ARCHITECTURE, RUNTIME, DEPLOY_BUCKET]
