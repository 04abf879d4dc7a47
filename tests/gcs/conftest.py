"""gcp-storage-emulator: a real GCS HTTP endpoint on 127.0.0.1 that every process of a test can reach
(the fixtures live in ``tests/gcs_fixtures.py``, shared with the GCF backend's tests)."""

from __future__ import annotations

from tests.gcs_fixtures import gcs, gcs_bucket, gcs_emulator  # noqa: F401 - fixtures
