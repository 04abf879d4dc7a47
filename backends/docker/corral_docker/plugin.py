"""corral-docker's plugin (entry point ``docker`` in the group ``corral``).

``--memory``, ``--timeout`` and the other options of remote functions are corral.remote's, the same
objects corral-lambda and corral-gcf return: one setting however many plugins declare it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral import ExecutorSpec, Option, Settings, hookimpl
from corral.remote_options import OPTIONS as REMOTE_OPTIONS

if TYPE_CHECKING:
    from corral.remote import RemoteFunctionExecutor

PLATFORMS = ("lambda", "gcf")


def _image(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _platform(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in PLATFORMS:
        raise ValueError(f"{text!r} is not a platform the docker backend emulates ({' or '.join(PLATFORMS)})")
    return text


BASE_IMAGE: Option[str | None] = Option(
    "base-image", _image, None,
    "image the docker backend's functions run in (default corral-lambda-python:3.11, "
    "from `corral emulator build-base`)", "IMAGE",
)
PLATFORM: Option[str] = Option(
    "platform", _platform, "lambda",
    "the code path the docker backend runs locally: lambda (AWS Lambda's, default) or gcf (Google Cloud "
    "Functions', needs corral-gcf)", "NAME",
)


def create_executor(settings: Settings) -> RemoteFunctionExecutor:
    from corral_docker.executor import create_executor

    return create_executor(settings)


@hookimpl
def corral_executors() -> list[ExecutorSpec]:
    return [ExecutorSpec("docker", create_executor,
                         "cloud-function containers on the local Docker engine (the Lambda or GCF code path, "
                         "emulated)")]


@hookimpl
def corral_options() -> list[Option[Any]]:
    return [*REMOTE_OPTIONS, BASE_IMAGE, PLATFORM]
