"""Lambda's own settings. ``--memory``, ``--timeout``, ``--environment``, ``--region``, ``--runtime`` and
``--function-name`` are corral.remote's, shared with every remote backend; Lambda's ranges for them are
checked by ``LambdaConfig.validate``."""

from __future__ import annotations

import re
from typing import Any

from corral import Option, int_in_range
from corral.remote_options import OPTIONS as REMOTE_OPTIONS
from corral.remote_options import parse_endpoint, parse_text
from corral_lambda.runtime import parse_architecture

ROLE = re.compile(r"^arn:aws[a-zA-Z-]*:iam::\d{12}:role/\S+$")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _bucket(value: Any) -> str:
    text = parse_text(value)
    if not BUCKET.match(text):
        raise ValueError(f"{text!r} is not an S3 bucket name")
    return text


def _role_arn(value: Any) -> str:
    text = parse_text(value)
    if not ROLE.match(text):
        raise ValueError(f"{text!r} is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)")
    return text


LAMBDA_ENDPOINT = Option("lambda-endpoint", parse_endpoint, None,
                         "Lambda API endpoint URL, e.g. a corral-emulator (lambda)", "URL")
ROLE_ARN = Option("lambda-role-arn", _role_arn, None,
                  "existing IAM role the function runs as; corral then manages no IAM (lambda; default: "
                  "a role corral creates, least privilege)", "ARN")
EPHEMERAL_STORAGE = Option("ephemeral-storage", int_in_range(512, 10240), 512,
                           "/tmp size of each function instance in MB, 512-10240 (lambda; default 512)", "MB")
ARCHITECTURE = Option("architecture", parse_architecture, "x86_64",
                      "x86_64 or arm64: the function's CPU and its wheels' (lambda; default x86_64)", "ARCH")
DEPLOY_BUCKET = Option("deploy-bucket", _bucket, None,
                       "S3 bucket the code goes through when the zip is over 50 MB (lambda)", "BUCKET")

#: Every option of the Lambda code path (the ``corral_options`` of corral-lambda).
OPTIONS = [*REMOTE_OPTIONS, LAMBDA_ENDPOINT, ROLE_ARN, EPHEMERAL_STORAGE, ARCHITECTURE, DEPLOY_BUCKET]
