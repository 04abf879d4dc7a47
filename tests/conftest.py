"""Fixtures shared by every test folder: the Docker engine (emulator, docker backend, AWS tests), and
real headless Chromium (Debian's ``chromium``, driven by Playwright: never a downloaded browser)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

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


CHROMIUM = os.environ.get("CORRAL_TEST_CHROMIUM", "/usr/bin/chromium")
#: DESIGN.md's flags for headless Chromium here.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    need("playwright.sync_api", "aiohttp", "aiohttp_sse")
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A page whose console errors and uncaught exceptions are collected in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda message: page.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()
