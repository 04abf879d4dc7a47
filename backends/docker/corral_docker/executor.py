"""The ``docker`` executor: a platform's own executor, pointed at a corral-emulator it starts itself.

``--platform lambda`` (the default) runs corral-lambda's code path, ``--platform gcf`` corral-gcf's:
the same package, deploy (create, or update only what changed), invocations and classification as
in the cloud. ``EmulatedFunctions`` is what this backend adds to either, once: the emulator's life
(started on ``deploy``, stopped on ``close``, and at once with its containers on ``cancel_all``) and
the bind mounts that let containers read and write the job's local inputs, output and working folder
at the same paths. Each platform's class then overrides what a local emulator does not have (AWS
credentials and IAM; Google credentials, ID tokens and service accounts).
"""

from __future__ import annotations

import glob
import logging
import os
import platform
import re
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from corral_emulator import Emulator, EmulatorError, default_base_image
from corral_lambda import LambdaConfig, LambdaExecutor

from corral import JobSource, Settings, UsageError, default_concurrency
from corral.remote import RemoteFunctionExecutor

log = logging.getLogger("corral.docker")

#: Idle containers live this long (the executor stops the whole emulator at the end of the run anyway).
IDLE_TIMEOUT = 600.0
#: The role a Lambda function of the emulator runs as (the emulator does not check roles).
EMULATOR_ROLE = "arn:aws:iam::000000000000:role/corral-lambda"


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


class EmulatedFunctions:
    """Mixed in before a ``corral.remote`` executor (whose config has an ``endpoint_url``): its
    functions run in a corral-emulator this executor starts, with the job's local folders mounted."""

    name = "docker"

    def __init__(self, *args: Any, base_image: str | None = None, idle_timeout: float = IDLE_TIMEOUT,
                 **kwargs: Any) -> None:
        self.base_image = base_image or default_base_image()
        self.idle_timeout = idle_timeout
        self.emulator: Emulator | None = None
        self.mounts: list[str] = []
        super().__init__(*args, **kwargs)

    def check_locations(self, job: JobSource) -> None:
        """Local paths are mounted; other URLs (s3://, gs://…) are reached from the containers directly."""

    def deploy(self, job: JobSource) -> None:
        if self.emulator is None:
            self.mounts = mounts_for([*job.locations, *([job.work] if job.work else [])])
            # cloud_cpu=False: tasks run at the host's speed (a 128 MB function would get 7 % of a CPU);
            # tmp_cap=False: /tmp on the container's disk, as Lambda's is, not a tmpfs whose pages count against
            # the memory limit (a map task's spills there were killed as out of memory where Lambda runs them);
            # memory, timeouts and the rest stay the platform's
            self.emulator = Emulator(base_image=self.base_image, max_concurrency=self.max_concurrency,  # type: ignore[attr-defined]
                                     mounts=self.mounts, idle_timeout=self.idle_timeout, cloud_cpu=False,
                                     tmp_cap=False)
            try:
                endpoint = self.emulator.start()
            except EmulatorError as exc:
                self.emulator = None
                raise UsageError(f"the docker backend cannot start its emulator: {exc}") from None
            log.info("emulator at %s (image %s), mounts: %s", endpoint, self.base_image, ", ".join(self.mounts))
            self.config = replace(self.config, endpoint_url=endpoint)  # type: ignore[has-type]
        super().deploy(job)  # type: ignore[misc]

    def undeploy(self, job: JobSource) -> None:
        """Nothing to remove: the emulator, and the functions in it, live only as long as one run."""

    def stop_emulator(self) -> None:
        if self.emulator is not None:
            self.emulator.stop()  # removes every container of this emulator
            self.emulator = None

    def cancel_all(self) -> None:
        """Abandon every invocation, then stop the emulator and this run's containers at once."""
        super().cancel_all()  # type: ignore[misc]
        self.stop_emulator()

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]
        finally:
            self.stop_emulator()


class DockerLambdaExecutor(EmulatedFunctions, LambdaExecutor):
    """``--platform lambda``: Lambda-like containers, reached through the Lambda API with boto3."""

    def client_arguments(self) -> dict[str, Any]:
        return {"aws_access_key_id": "corral", "aws_secret_access_key": "corral"}  # not checked by the emulator

    def ensure_identity(self, job: JobSource) -> str:
        return EMULATOR_ROLE  # no IAM here: the emulator does not check roles

    def remove_identity(self, name: str, found: Any | None) -> list[str]:
        return []


#: Kept for code written against the Lambda-only docker backend.
DockerExecutor = DockerLambdaExecutor


def create_executor(settings: Settings) -> RemoteFunctionExecutor:
    """One container per core by default (``--max-concurrency`` to change it), on ``--platform``'s path."""
    from corral_docker.plugin import BASE_IMAGE, PLATFORM

    base_image = settings.value(BASE_IMAGE) or default_base_image()
    runtime = f"python{image_python_version(base_image)}"
    concurrency = settings.max_concurrency or default_concurrency()
    if settings.value(PLATFORM) == "gcf":
        try:
            from corral_docker.gcf import create_gcf_executor
        except ImportError as exc:
            raise UsageError(f"--platform gcf needs corral-gcf ({exc}): pip install corral-gcf") from None
        return create_gcf_executor(settings, concurrency, base_image, runtime)
    architecture, _ = machine()  # containers run natively: wheels for this machine and the image's Python
    config = LambdaConfig.from_settings(settings, endpoint_url=None, architecture=architecture, platforms=None,
                                        runtime=runtime)
    return DockerLambdaExecutor(concurrency, config, base_image=base_image)
