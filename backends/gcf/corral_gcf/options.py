"""Cloud Functions' own settings. ``--memory``, ``--timeout``, ``--environment``, ``--region``,
``--runtime`` and ``--function-name`` are corral.remote's, shared with every remote backend; their
Cloud Functions ranges are checked by ``GcfConfig.validate``."""

from __future__ import annotations

import re
from typing import Any

from corral import Option
from corral.remote_options import OPTIONS as REMOTE_OPTIONS
from corral.remote_options import parse_endpoint, parse_text

_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[a-z0-9.-]+:[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _project(value: Any) -> str:
    text = parse_text(value)
    if not _PROJECT.match(text):
        raise ValueError(f"{text!r} is not a Google Cloud project id (6-30 of a-z 0-9 -, starting with a letter)")
    return text


def _email(value: Any) -> str:
    text = parse_text(value)
    if not _EMAIL.match(text):
        raise ValueError(f"{text!r} is not a service account email (NAME@PROJECT.iam.gserviceaccount.com)")
    return text


PROJECT: Option[str | None] = Option(
    "project", _project, None,
    "Google Cloud project of the function (gcf; default: GOOGLE_CLOUD_PROJECT, then the credentials' project)",
    "PROJECT")
GCF_ENDPOINT: Option[str | None] = Option(
    "gcf-endpoint", parse_endpoint, None, "Cloud Functions API endpoint URL, e.g. a corral-emulator (gcf)", "URL")
SERVICE_ACCOUNT: Option[str | None] = Option(
    "gcf-service-account", _email, None,
    "existing service account the function runs as; corral then manages no IAM (gcf; default: a service "
    "account corral creates, least privilege)", "EMAIL")

#: Every option of the Cloud Functions code path (the ``corral_options`` of corral-gcf).
OPTIONS: list[Option[Any]] = [*REMOTE_OPTIONS, PROJECT, GCF_ENDPOINT, SERVICE_ACCOUNT]
