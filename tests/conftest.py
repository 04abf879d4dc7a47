"""Fixtures shared by every test folder: the Docker engine (emulator, docker backend, AWS tests)."""

from __future__ import annotations

import os

import pytest

# before anything imports gcsfs (`corral backends` does): without it, every access to a bucket of the GCS
# emulator (tests/gcs_fixtures.py) waits 60 s on a gRPC call the emulator cannot answer
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

from tests.requirements import need, unavailable


@pytest.fixture(scope="session")
def docker_engine():
    """A Docker engine that answers, with the emulator's base image (built offline if it is missing).
    Skipped without one on a user's machine; a failure in CI."""
    need("docker", "corral_emulator")
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:
        unavailable(f"no Docker engine answers: {exc}")
    from corral_emulator import EmulatorError, build_base_image, default_base_image

    image = default_base_image()
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        try:
            build_base_image(image)
        except EmulatorError as exc:
            unavailable(f"base image {image} is missing and cannot be built: {exc}")
    yield client
    client.close()
