"""Build the base image offline from Debian packages: debootstrap a minimal bookworm with python3, import it.

No image registry is needed: ``debootstrap --variant=minbase --include=python3 bookworm DIR`` fetches
packages from the apt mirror the machine already uses, and ``tar -C DIR -c . | docker import - TAG``
turns the folder into an image (about 35 s).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker.errors

from corral_emulator.emulator import DEFAULT_BASE_IMAGE, docker_client
from corral_emulator.errors import EmulatorError

DEFAULT_MIRROR = "http://deb.debian.org/debian"
IMAGE_CHANGES = [
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
]


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def apt_mirror(suite: str = "bookworm", sources: list[str] | None = None) -> str:
    """The Debian mirror this machine's apt uses for ``suite`` (deb822 or one-line sources), or the default."""
    if sources is None:
        sources = [
            *sorted(glob.glob("/etc/apt/sources.list.d/*.sources")),
            "/etc/apt/sources.list",
            *sorted(glob.glob("/etc/apt/sources.list.d/*.list")),
        ]
    for path in sources:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
                    if fields.get("enabled", "yes").lower() != "no" and fields.get("uris"):
                        return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 3 and parts[0] == "deb":
                    rest = [p for p in parts[1:] if not p.startswith("[")]
                    if len(rest) >= 2 and rest[1] == suite:
                        return rest[0]
    return DEFAULT_MIRROR


def _split_tag(tag: str) -> tuple[str, str]:
    name, sep, version = tag.rpartition(":")
    if sep and "/" not in version:
        return name, version
    return tag, "latest"


def image_exists(tag: str) -> bool:
    client = docker_client()
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False
    finally:
        client.close()


def build_base_image(
    tag: str = DEFAULT_BASE_IMAGE,
    force: bool = False,
    mirror: str | None = None,
    suite: str = "bookworm",
    packages: tuple[str, ...] = ("python3",),
    log: Callable[[str], None] = _err,
) -> bool:
    """Build ``tag`` unless it exists (or ``force``). Returns True when it built the image."""
    client = docker_client(timeout=600)
    try:
        if not force:
            try:
                client.images.get(tag)
                log(f"base image {tag} exists (use --force to rebuild)")
                return False
            except docker.errors.ImageNotFound:
                pass
        debootstrap = shutil.which("debootstrap") or next(
            (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.path.exists(p)), None)
        if debootstrap is None:
            raise EmulatorError("debootstrap is not installed (apt-get install debootstrap)")
        if os.geteuid() != 0:
            raise EmulatorError("building the base image needs root (debootstrap); run it with sudo")
        mirror = mirror or apt_mirror(suite)
        started = time.monotonic()
        root = Path(tempfile.mkdtemp(prefix="corral-rootfs-"))
        try:
            log(f"debootstrap {suite} from {mirror} into {root} (python3, minbase)...")
            command = [debootstrap, "--variant=minbase", f"--include={','.join(packages)}", suite, str(root),
                       mirror]
            result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if result.returncode != 0:
                tail = "\n".join(result.stdout.splitlines()[-20:])
                raise EmulatorError(f"debootstrap failed (exit {result.returncode}):\n{tail}")
            log(f"debootstrap done in {time.monotonic() - started:.0f} s")
            for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_Packages", "var/log/*.log"):
                for path in root.glob(pattern):
                    path.unlink(missing_ok=True)
            log(f"importing {root} as {tag}...")
            repository, version = _split_tag(tag)
            tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."],
                                   stdout=subprocess.PIPE)
            try:
                assert tar.stdout is not None
                # In big chunks: a pipe handed over as is would be sent line by line.
                chunks = iter(lambda: tar.stdout.read(1 << 20), b"")  # type: ignore[union-attr]
                client.api.import_image_from_stream(chunks, repository=repository, tag=version,
                                                    changes=IMAGE_CHANGES)
            finally:
                if tar.stdout is not None:
                    tar.stdout.close()
                code = tar.wait()
            if code != 0:
                raise EmulatorError(f"tar of the root file system failed (exit {code})")
            client.images.get(tag)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        log(f"built {tag} in {time.monotonic() - started:.0f} s")
        return True
    finally:
        client.close()
