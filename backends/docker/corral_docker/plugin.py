"""corral-docker's plugin (entry point ``docker`` in the group ``corral``).

Its ``--memory`` and ``--timeout`` are corral-lambda's options (this distribution depends on it):
an option name belongs to one Option object, which several plugins may return.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral import ExecutorSpec, Option, Settings, hookimpl

if TYPE_CHECKING:
    from corral_docker.executor import DockerExecutor


def _image(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


BASE_IMAGE = Option(
    "base-image", _image, None,
    "image the docker backend's functions run in (default corral-lambda-python:3.11, "
    "from `corral emulator build-base`)", "IMAGE",
)


def create_executor(settings: Settings) -> DockerExecutor:
    from corral_docker.executor import create_executor

    return create_executor(settings)


@hookimpl
def corral_executors() -> list[ExecutorSpec]:
    return [ExecutorSpec("docker", create_executor,
                         "Lambda-like containers on the local Docker engine (the Lambda code path, emulated)")]


@hookimpl
def corral_options() -> list[Option[Any]]:
    return [BASE_IMAGE]
