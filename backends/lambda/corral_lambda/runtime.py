"""Lambda's architectures (``--architecture``) and the wheels a runtime takes.

The package is built *for the runtime*, not for this machine: manylinux wheels for the runtime's Python
and the architecture's machine (``x86_64`` or ``aarch64``), for the glibc of the runtime's operating
system (python3.11 runs on Amazon Linux 2, glibc 2.26; python3.12 and later on Amazon Linux 2023,
glibc 2.34). ``--runtime`` itself is corral.remote's (python3.11 or newer).
"""

from __future__ import annotations

from corral.remote_options import python_version

ARCHITECTURES = {"x86_64": "x86_64", "arm64": "aarch64"}  # Lambda's name -> the wheels' machine


def parse_architecture(value: object) -> str:
    text = str(value).strip()
    if text not in ARCHITECTURES:
        raise ValueError(f"{text!r} is not a Lambda architecture (x86_64 or arm64)")
    return text


def glibc_minor(runtime: str) -> int:
    """The glibc 2.N of the runtime's OS: Amazon Linux 2 (2.26) up to python3.11, else AL2023 (2.34)."""
    minor = int(python_version(runtime).split(".")[1])
    return 26 if minor <= 11 else 34


def platform_tags(runtime: str, architecture: str) -> list[str]:
    """The pip platform tags of wheels that run on ``runtime`` / ``architecture``, newest glibc first."""
    from corral import manylinux_platforms  # corral.packaging: not imported for --help or a local run

    return manylinux_platforms(ARCHITECTURES[architecture], glibc_minor(runtime))
