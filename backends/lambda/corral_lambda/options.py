"""The settings of the Lambda code path. ``--memory`` and ``--timeout`` are defined here once and also
serve every backend built on this one (``--backend docker``), which must not define them again."""

from __future__ import annotations

import re
from typing import Any

from corral import Option, int_in_range

FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ROLE_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:iam::\d{12}:role/\S+$")


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
                         "IAM role the function runs as (lambda; required on AWS for a new function)", "ARN")
REGION = Option("region", _text, None, "AWS region (lambda; default: AWS_REGION, then us-east-1)", "REGION")

#: Every option of the Lambda code path (the ``corral_options`` of corral-lambda).
OPTIONS = [MEMORY, TIMEOUT, LAMBDA_ENDPOINT, FUNCTION_NAME_OPTION, ROLE_ARN_OPTION, REGION]
