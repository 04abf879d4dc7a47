"""The ``docker`` executor: corral-lambda's executor, pointed at a corral-emulator it starts itself.

Everything on the Lambda path is reused as is: the package, the deploy (CreateFunction /
UpdateFunctionCode only when the code changed), the invocations and their classification. What this
adds: the emulator's life (started on ``deploy``, stopped on ``close``) and the bind mounts that let
containers read and write the job's local inputs, output and working folder at the same paths.
"""

from __future__ import annotations

import glob
import logging
import os
import platform
import re
from collections.abc import Iterable
from dataclasses import replace

from corral_emulator import Emulator, EmulatorError, default_base_image
from corral_lambda.executor import LambdaConfig, LambdaExecutor

from corral import JobSource, Settings, UsageError
from corral_docker.plugin import BASE_IMAGE

log = logging.getLogger("corral.docker")

#: Idle containers live this long (the executor stops the whole emulator at the end of the run anyway).
IDLE_TIMEOUT = 600.0


def machine() -> tuple[str, str]:
    """(Lambda architecture, manylinux machine) of this host: containers run natively."""
    arch = platform.machine().lower()
    if arch in ("arm64", "aarch64"):
        return "arm64", "aarch64"
    return "x86_64", "x86_64"


def image_python_version(image: str, default: str = "3.11") -> str:
    """The Python version a base image's tag names (``corral-lambda-python:3.12`` -> 3.12), else 3.11."""
    match = re.search(r":(?:.*?-)?(3\.\d+)(?:[.-]|$)", image)
    return match.group(1) if match else default


def local_path(location: str) -> str | None:
    """The local path of ``location`` (absolute), or None for a URL of another filesystem."""
    if location.startswith("file://"):
        return os.path.abspath(location[len("file://"):])
    if "://" in location:
        return None
    return os.path.abspath(os.path.expanduser(location))


def mounts_for(locations: Iterable[str]) -> list[str]:
    """The folders to bind-mount so that containers see every local location at the same path.

    An existing folder is mounted itself, a file through its folder, a glob through the folder its
    fixed part names, and a location that does not exist yet (the output, the working folder) is
    created and mounted. Folders inside another mounted folder are left out.
    """
    folders: set[str] = set()
    for location in locations:
        path = local_path(location)
        if path is None:
            continue
        if glob.has_magic(path):
            fixed = re.split(r"[*?\[]", path, maxsplit=1)[0]
            path = fixed if fixed.endswith(os.sep) else os.path.dirname(fixed)
            while path and not os.path.isdir(path):
                path = os.path.dirname(path)
        elif os.path.isfile(path):
            path = os.path.dirname(path)
        elif not os.path.exists(path):
            os.makedirs(path, exist_ok=True)
        folders.add(os.path.realpath(path))
    chosen: list[str] = []
    for folder in sorted(folders, key=lambda f: (f.count(os.sep), f)):
        if not any(folder == c or folder.startswith(c.rstrip(os.sep) + os.sep) for c in chosen):
            chosen.append(folder)
    return sorted(chosen)


class DockerExecutor(LambdaExecutor):
    """Runs tasks in Lambda-like containers on the local Docker engine, through the Lambda API."""

    name = "docker"

    def __init__(self, max_concurrency: int, config: LambdaConfig, base_image: str | None = None,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.base_image = base_image or default_base_image()
        architecture, _ = machine()
        config = replace(
            config,
            architecture=architecture,  # containers run natively: wheels for this machine and the image's Python
            platforms=None,
            runtime=f"python{image_python_version(self.base_image)}",
            credentials=("corral", "corral"),  # the emulator does not check signatures
            manage_iam=False,  # no IAM here: the emulator does not check roles
        )
        super().__init__(max_concurrency, config)
        self.idle_timeout = idle_timeout
        self.emulator: Emulator | None = None
        self.mounts: list[str] = []

    def check_locations(self, job: JobSource) -> None:
        """Local paths are mounted; other URLs (s3://…) are reached from the containers directly."""

    def deploy(self, job: JobSource) -> None:
        self.mounts = mounts_for([*job.locations, *([job.work] if job.work else [])])
        self.emulator = Emulator(
            base_image=self.base_image,
            max_concurrency=self.max_concurrency,
            mounts=self.mounts,
            idle_timeout=self.idle_timeout,
        )
        try:
            endpoint = self.emulator.start()
        except EmulatorError as exc:
            self.emulator = None
            raise UsageError(f"the docker backend cannot start its Lambda emulator: {exc}") from None
        log.info("emulator at %s (image %s), mounts: %s", endpoint, self.base_image, ", ".join(self.mounts))
        self.config = replace(self.config, endpoint_url=endpoint)
        super().deploy(job)

    def undeploy(self, job: JobSource) -> None:
        """Nothing to remove: the emulator, and the functions in it, live only as long as one run."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.emulator is not None:
                self.emulator.stop()
                self.emulator = None


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def create_executor(settings: Settings) -> DockerExecutor:
    """One container per core by default (``--max-concurrency`` to change it)."""
    return DockerExecutor(settings.max_concurrency or cores(), LambdaConfig.from_settings(settings, endpoint_url=None),
                          base_image=settings.value(BASE_IMAGE))
