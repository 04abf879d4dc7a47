"""moto in server mode: a real S3 HTTP endpoint on 127.0.0.1 that every process of a test can reach
(the fixtures live in ``tests/moto_fixtures.py``, shared with the Lambda tests)."""

from __future__ import annotations

from tests.moto_fixtures import bucket, moto_server, s3  # noqa: F401 - fixtures
