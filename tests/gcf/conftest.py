"""Tests of corral-gcf (``--backend gcf``) and of ``--backend docker --platform gcf``.

What is stood in for, and nothing else: Google's control plane (the Cloud Functions v2 API, its
long-running operations, the upload URL and the OAuth token endpoint) is corral-emulator's, which runs
the functions for real in Docker containers under functions-framework; Cloud Storage is
gcp-storage-emulator; Google's IAM API is a stand-in HTTP server (``iam_standin``). Google's own client
(google-cloud-functions, REST transport), google-auth (service-account key, ID tokens) and gcsfs are
used unchanged, pointed there by ``--gcf-endpoint``, the key's ``token_uri`` and ``STORAGE_EMULATOR_HOST``.

Without Docker or the GCS emulator the tests that need them are skipped, except in CI (``CI=true``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gcs_fixtures import gcs, gcs_bucket, gcs_emulator  # noqa: F401 - fixtures
from tests.manifests import attempts  # noqa: F401 - the gcf tests import it from here
from tests.requirements import need

REPO = Path(__file__).resolve().parents[2]
WORDCOUNT = REPO / "examples" / "wordcount.py"
PROJECT = "corral-test"
#: The service account the functions of these tests run as (--gcf-service-account: Google's IAM, which
#: corral would otherwise call to create one, cannot run here; test_gcf_iam.py covers that path).
ACCOUNT = "corral-tests@corral-test.iam.gserviceaccount.com"


@pytest.fixture(autouse=True)
def _gcf_backend_installed():
    need("corral_gcf", "google.cloud.functions_v2", "google.auth")


@pytest.fixture(scope="package")
def gcf_emulator(docker_engine, gcs_emulator):  # noqa: F811 - the GCS emulator first: its variables pass through
    """corral-emulator serving the Cloud Functions API (its containers reach the GCS emulator)."""
    need("corral_emulator")
    from corral_emulator import Emulator

    with Emulator(max_concurrency=4, idle_timeout=120) as emulator:
        yield emulator


@pytest.fixture(scope="package")
def key_file(gcf_emulator, tmp_path_factory) -> Path:
    """A service-account key file whose token_uri is the emulator's: google-auth mints tokens there."""
    path = tmp_path_factory.mktemp("credentials") / "key.json"
    path.write_text(json.dumps(gcf_emulator.service_account_key(project=PROJECT, email=ACCOUNT)))
    return path


def environment(key: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: no CORRAL_* settings, Google's credentials from ``key``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORRAL_", "GOOGLE_"))}
    if key is not None:
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(key)
    env.update(extra)
    return env


def corral(*args, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``corral ARGS`` as a user types it: the console script, in a subprocess."""
    command = str(Path(sys.executable).with_name("corral"))
    assert command, "the corral console script is not installed"
    return subprocess.run([command, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def gcf_flags(emulator) -> list[str]:
    return ["--backend", "gcf", "--gcf-endpoint", emulator.endpoint, "--project", PROJECT,
            "--gcf-service-account", ACCOUNT]


@pytest.fixture(scope="package")
def functions_client(gcf_emulator):
    """Google's client of the emulator's Functions API (anonymous, as the emulator allows), to look."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import functions_v2

    return functions_v2.FunctionServiceClient(transport="rest", credentials=AnonymousCredentials(),
                                              client_options={"api_endpoint": gcf_emulator.endpoint})


def function_path(name: str) -> str:
    return f"projects/{PROJECT}/locations/us-central1/functions/{name}"


def manifest_of(out: Path) -> dict:
    return json.loads((out / "_corral" / "manifest.json").read_text())
