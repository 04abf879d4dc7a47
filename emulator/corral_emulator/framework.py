"""functions-framework for the containers: installed once per Python version into a cached host folder.

The base image has python3 but no pip and no network, and a GCF deployment package holds only the
user's code (Google's build adds functions-framework). So the emulator installs functions-framework and
its dependencies for the image's Python and machine (``pip install --target``, binary wheels only) into
``$CORRAL_EMULATOR_CACHE`` (default ``~/.cache/corral-emulator``), mounts that folder read-only into
every GCF container and puts it on ``PYTHONPATH`` after the function's own folder (a package that vendors
its own functions-framework uses that one, as on GCF). Never into the user's zip.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from corral_emulator.errors import EmulatorError

#: The functions-framework release the containers run (``$CORRAL_EMULATOR_FUNCTIONS_FRAMEWORK``: any pip
#: requirement, e.g. ``functions-framework==3.9.2`` or a local wheel).
FUNCTIONS_FRAMEWORK = "functions-framework==3.10.2"

_PROBE = "import platform, sys; print('%d.%d' % sys.version_info[:2], platform.machine())"


def cache_root() -> Path:
    """``$CORRAL_EMULATOR_CACHE``, else ``$XDG_CACHE_HOME/corral-emulator`` (``~/.cache/corral-emulator``)."""
    if os.environ.get("CORRAL_EMULATOR_CACHE"):
        return Path(os.environ["CORRAL_EMULATOR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "corral-emulator"


def requirement() -> str:
    return os.environ.get("CORRAL_EMULATOR_FUNCTIONS_FRAMEWORK") or FUNCTIONS_FRAMEWORK


def image_python(client, image: str, labels: dict[str, str]) -> tuple[str, str]:
    """(Python version, machine) of ``image``'s ``python3``, e.g. ("3.11", "x86_64"); cached by image id.

    Runs ``python3`` once in a throw-away container the first time an image is seen. Blocking.
    """
    import docker.errors

    try:
        image_id = client.images.get(image).id
    except docker.errors.DockerException as exc:
        raise EmulatorError(f"cannot inspect the base image {image!r}: {exc}") from None
    record = cache_root() / "images" / f"{image_id.replace(':', '-')}.json"
    try:
        found = json.loads(record.read_text())
        return found["python"], found["machine"]
    except (OSError, ValueError, KeyError):
        pass
    try:
        output = client.containers.run(image, ["python3", "-c", _PROBE], remove=True, network_mode="none",
                                       labels=labels, user=f"{os.getuid()}:{os.getgid()}")
    except docker.errors.DockerException as exc:
        raise EmulatorError(f"cannot run python3 in the base image {image!r}: {exc}") from None
    match = re.match(r"(3\.\d+) (\S+)", output.decode().strip())
    if not match:
        raise EmulatorError(f"the base image {image!r} answered {output[-200:]!r} for its Python version")
    python, machine = match.groups()
    record.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(record, json.dumps({"image": image, "python": python, "machine": machine}))
    return python, machine


def install(python: str, machine: str) -> Path:
    """A folder with functions-framework installed for ``python`` on ``machine`` (cached). Blocking.

    Concurrent installs (two emulators) each build in a folder of their own; the first rename wins.
    """
    wanted = requirement()
    key = hashlib.sha256(f"{wanted}\n{python}\n{machine}".encode()).hexdigest()[:16]
    target = cache_root() / "functions-framework" / f"cp{python.replace('.', '')}-{machine}-{key}"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        site = work / "site"
        command = [
            sys.executable, "-m", "pip", "install", "--target", str(site), "--no-compile",
            "--no-warn-script-location", "--disable-pip-version-check", "--no-input", "--quiet",
            "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
            "--platform", f"manylinux2014_{machine}", "--platform", f"manylinux_2_17_{machine}", wanted,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EmulatorError(f"cannot run pip to install {wanted}: {exc}") from None
        if done.returncode != 0:
            reason = "\n".join(line for line in done.stderr.strip().splitlines()
                               if not line.startswith("WARNING"))[-1500:]
            raise EmulatorError(f"cannot install {wanted} for Python {python} on {machine} "
                                f"(pip install --target, from PyPI or PIP_INDEX_URL):\n{reason}")
        (site / ".requirement").write_text(wanted + "\n", encoding="utf-8")
        (site / ".complete").touch()
        for path in [site, *site.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
        try:
            site.rename(target)
        except OSError:  # another emulator got there first
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
