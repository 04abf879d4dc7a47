"""``--backend docker --platform gcf``: corral-gcf's code path on the emulator's Cloud Functions API.

Imported only for that platform (it needs corral-gcf). Everything is corral-gcf's (the package with its
``main.py``, the Functions API calls through Google's client, the upload, the invocations with an ID
token, the classification of answers) except what a local emulator does not have: Google's credentials
(the emulator's control plane takes anonymous calls; ID tokens come from a service-account key the
emulator issues, through google-auth as on Google) and IAM (no service account is created).
"""

from __future__ import annotations

from typing import Any

from corral_gcf import GcfConfig, GcfExecutor

from corral import JobSource, Settings
from corral_docker.executor import EmulatedFunctions

#: The project of the emulated functions (any name works: the emulator keeps no projects).
PROJECT = "corral-local"


class DockerGcfExecutor(EmulatedFunctions, GcfExecutor):
    """Cloud Functions-like containers (functions-framework) on the local Docker engine."""

    def credentials(self) -> tuple[Any, str | None]:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials(), PROJECT

    def id_token_credentials(self, audience: str) -> Any:
        from google.oauth2 import service_account

        assert self.emulator is not None
        key = self.emulator.service_account_key(project=self.project)
        return service_account.IDTokenCredentials.from_service_account_info(key, target_audience=audience)

    def ensure_identity(self, job: JobSource) -> str | None:
        return None  # no IAM here: the functions run as the emulator's default identity

    def remove_identity(self, name: str, found: Any | None) -> list[str]:
        return []


def create_gcf_executor(settings: Settings, concurrency: int, base_image: str, runtime: str) -> DockerGcfExecutor:
    config = GcfConfig.from_settings(settings, endpoint_url=None, runtime=runtime, project=PROJECT,
                                     service_account=None)
    return DockerGcfExecutor(concurrency, config, base_image=base_image)
