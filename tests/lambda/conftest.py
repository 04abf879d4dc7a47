"""Tests of the Lambda code path without Docker: boto3's Stubber where Lambda must answer, moto in server
mode for IAM, STS and S3 (tests marked ``moto``)."""

from __future__ import annotations

import os

import pytest

from tests.moto_fixtures import bucket, moto_server, s3  # noqa: F401 - fixtures
from tests.requirements import need


@pytest.fixture(autouse=True)
def _lambda_backend_installed():
    need("corral_lambda", "boto3", "tenacity")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Run from an empty folder with no CORRAL_* or AWS_* variables (nothing of the developer's leaks in)."""
    for key in list(os.environ):
        if key.startswith(("CORRAL_", "AWS_")) and key != "CORRAL_CACHE_DIR":
            monkeypatch.delenv(key)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd
