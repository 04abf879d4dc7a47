"""The function's runtime (``--runtime``) and architecture (``--architecture``), and the wheels they take.

The decision: the package is built *for the runtime*, not for this machine. Its third-party packages are
downloaded as manylinux wheels for the runtime's Python version and the architecture's machine
(``x86_64`` or ``aarch64``), whatever the host's OS, Python or CPU, and only for the glibc of the
runtime's operating system (python3.11 runs on Amazon Linux 2, glibc 2.26; python3.12 and later on
Amazon Linux 2023, glibc 2.34). What cannot be made to fit is refused before anything is deployed:

- a runtime older than corral itself supports (Python 3.11) or not a ``python3.X`` runtime;
- a requirement without a wheel for that Python and machine (and not pure Python);
- a job module whose syntax is newer than the runtime's Python (when the runtime is older than the host).

The default runtime is the host's Python (``python3.11`` when corral runs on 3.11).
"""

from __future__ import annotations

import re
import sys

#: The oldest Python corral's own code runs on (its ``requires-python``).
MIN_PYTHON = (3, 11)
ARCHITECTURES = {"x86_64": "x86_64", "arm64": "aarch64"}  # Lambda's name -> the wheels' machine
_RUNTIME = re.compile(r"^python(\d+)\.(\d+)$")


def host_runtime() -> str:
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


def parse_runtime(value: object) -> str:
    """``python3.X`` with X at least 11; a ValueError saying why otherwise (the option's parser)."""
    text = str(value).strip()
    match = _RUNTIME.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a Python runtime of Lambda (python3.11, python3.12, ...)")
    version = (int(match.group(1)), int(match.group(2)))
    if version < MIN_PYTHON:
        raise ValueError(
            f"{text} cannot run corral, which needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer "
            f"(use --runtime python{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or later)"
        )
    return text


def parse_architecture(value: object) -> str:
    text = str(value).strip()
    if text not in ARCHITECTURES:
        raise ValueError(f"{text!r} is not a Lambda architecture (x86_64 or arm64)")
    return text


def python_version(runtime: str) -> str:
    """``python3.12`` -> ``3.12``."""
    return runtime[len("python"):]


def glibc_minor(runtime: str) -> int:
    """The glibc 2.N of the runtime's OS: Amazon Linux 2 (2.26) up to python3.11, else AL2023 (2.34)."""
    minor = int(python_version(runtime).split(".")[1])
    return 26 if minor <= 11 else 34


def platform_tags(runtime: str, architecture: str) -> list[str]:
    """The pip platform tags of wheels that run on ``runtime`` / ``architecture``, newest glibc first.

    ``manylinux_2_N`` down to 2_18 (pip does not expand those), then ``manylinux2014`` (2_17, which pip
    expands to manylinux2010 and manylinux1).
    """
    machine = ARCHITECTURES[architecture]
    newest = glibc_minor(runtime)
    return [*(f"manylinux_2_{n}_{machine}" for n in range(newest, 17, -1)), f"manylinux2014_{machine}"]
