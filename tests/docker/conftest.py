"""The docker backend's tests: a real Docker engine, the real emulator, real boto3, the `corral` command.

Without a Docker engine (or the base image, which is built when missing) the tests are skipped, except
in CI (``CI=true``) where that fails them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.requirements import need

REPO = Path(__file__).resolve().parents[2]
CORRAL = str(Path(sys.executable).with_name("corral"))


@pytest.fixture(scope="session")
def docker_engine(docker_engine):  # the shared fixture (tests/conftest.py), plus the backend's packages
    need("corral_docker", "corral_lambda", "boto3")
    return docker_engine


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(extra)
    return env


def corral(*args, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180):
    """``corral ARGS`` as the user types it: the console script, in a subprocess."""
    return subprocess.run([CORRAL, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env or clean_env(), timeout=timeout)


@pytest.fixture
def workdir(tmp_path, docker_engine) -> Path:
    return tmp_path
