"""gcp-storage-emulator: a real GCS JSON-API endpoint on 127.0.0.1 that every process of a test (and every
container, through host networking) can reach. It stands in for Google Cloud Storage, which cannot run here.

Nothing is mocked on corral's side: gcsfs talks HTTP to the emulator, found through the standard
``STORAGE_EMULATOR_HOST`` variable, as Google's own libraries do. A conftest imports these fixtures to use
them (``from tests.gcs_fixtures import gcs, gcs_bucket, gcs_emulator  # noqa: F401``); the emulator lives
as long as the test package that uses it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.moto_fixtures import bucket_name
from tests.requirements import need, unavailable

# gcsfs reads this once, when it is imported: left at its default ("true"), every bucket access waits
# 60 s on a gRPC call (Google's storage-control API) that the emulator cannot answer.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"


@dataclass(frozen=True)
class GcsEmulator:
    url: str  #: http://127.0.0.1:PORT
    env: dict[str, str]  #: what a process (or container) needs to use it, already set in os.environ


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(port: int) -> subprocess.Popen:
    """``gcp-storage-emulator start`` on ``port``, once it answers (or exited)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port),
         "--in-memory", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/storage/v1/b", timeout=2):
                return process
        except OSError:
            time.sleep(0.1)
    return process


@pytest.fixture(scope="package")
def gcs_emulator() -> Iterator[GcsEmulator]:
    need("gcsfs", "gcp_storage_emulator")
    for _ in range(3):  # a free port can be taken by another process before the emulator binds it
        port = _free_port()
        process = _start(port)
        if process.poll() is None:
            break
        error = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
    else:
        unavailable(f"gcp-storage-emulator did not start: {error[-500:]}")
    url = f"http://127.0.0.1:{port}"
    env = {
        "STORAGE_EMULATOR_HOST": url,
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        # fsspec's configuration for gs:// in every process: no credentials (gcsfs would otherwise look for
        # Google's, and ask a metadata server that does not exist here)
        "FSSPEC_GS_TOKEN": "anon",
        "FSSPEC_GCS_TOKEN": "anon",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec.config

    saved_conf = {p: fsspec.config.conf.get(p) for p in ("gs", "gcs")}
    for protocol in ("gs", "gcs"):
        fsspec.config.conf[protocol] = {**(saved_conf[protocol] or {}), "token": "anon"}
    _forget_gcs_clients()
    try:
        yield GcsEmulator(url, env)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for protocol, conf in saved_conf.items():
            if conf is None:
                fsspec.config.conf.pop(protocol, None)
            else:
                fsspec.config.conf[protocol] = conf
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _forget_gcs_clients()


def _forget_gcs_clients() -> None:
    """fsspec caches gcsfs instances (and their endpoint) per process: one made for another emulator must
    not be reused once that emulator is gone."""
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()


@pytest.fixture
def gcs(gcs_emulator):
    """A gcsfs client of the emulator (anonymous, as Google's libraries are against an emulator)."""
    import gcsfs

    return gcsfs.GCSFileSystem(token="anon", endpoint_url=gcs_emulator.url)


@pytest.fixture
def gcs_bucket(gcs, request) -> str:
    """A fresh, empty bucket named after the test."""
    name = bucket_name(request.node.name)
    if gcs.exists(name):
        gcs.rm(name, recursive=True)
    gcs.mkdir(name)
    return name
