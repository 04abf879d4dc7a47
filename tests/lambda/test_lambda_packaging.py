"""corral.packaging as the Lambda backend uses it: the package for a runtime and an architecture, and the
CodeSha256 Lambda reports (corral.packaging itself is tested in tests/core/test_packaging.py)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

import corral
from tests.packaging_project import make_project, source


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def test_code_sha256_is_what_lambda_reports(project, isolated):
    import base64
    import hashlib

    from corral_lambda.executor import code_sha256

    package = corral.build_package(source(project))
    assert code_sha256(package) == base64.b64encode(hashlib.sha256(package.zip_bytes).digest()).decode()


# --- the package for a Lambda runtime and architecture (corral_lambda builds it with these) ---------------
def lambda_build(project: Path, runtime: str, architecture: str, requirements: tuple[str, ...] = ()):
    from corral_lambda.executor import LambdaConfig, LambdaExecutor

    executor = LambdaExecutor(1, LambdaConfig(runtime=runtime, architecture=architecture))
    try:
        return executor.build(source(project, requirements))
    finally:
        executor.close()


def wheel_tags(package: corral.Package, dist: str) -> list[str]:
    archive = zipfile.ZipFile(io.BytesIO(package.zip_bytes))
    (wheel,) = [n for n in package.files if n.lower().startswith(dist) and n.endswith(".dist-info/WHEEL")]
    return [line.split(":", 1)[1].strip() for line in archive.read(wheel).decode().splitlines()
            if line.startswith("Tag:")]


def test_arm64_gets_aarch64_wheels_whatever_the_host(project, isolated):
    """Asked from this (x86_64) host for arm64: the binary wheels in the zip are manylinux aarch64 ones,
    for a pure-Python requirement (six) and a compiled one (markupsafe) alike."""
    package = lambda_build(project, "python3.11", "arm64", ("markupsafe", "six"))
    binaries = [f for f in package.files if f.endswith(".so")]
    assert "markupsafe/_speedups.cpython-311-aarch64-linux-gnu.so" in binaries
    assert any(f.startswith("msgpack/") for f in binaries)
    # a stable-ABI module (deflate's) names no platform: its wheel's tags do
    assert all("aarch64-linux-gnu" in f for f in binaries if not f.endswith(".abi3.so")), binaries
    for dist in ("markupsafe", "msgpack"):
        tags = wheel_tags(package, dist)
        assert tags and all(t.startswith("cp311-cp311-manylinux") and t.endswith("_aarch64") for t in tags), tags
    tags = wheel_tags(package, "deflate")
    assert tags and all("-abi3-manylinux" in t and t.endswith("_aarch64") for t in tags), tags
    assert wheel_tags(package, "six") == ["py2-none-any", "py3-none-any"] and "six.py" in package.files


def test_the_runtime_python_decides_the_wheels(project, isolated):
    package = lambda_build(project, "python3.12", "x86_64")
    binaries = [f for f in package.files if f.endswith(".so") and not f.endswith(".abi3.so")]
    assert binaries and all("cpython-312-x86_64-linux-gnu" in f for f in binaries), binaries
    tags = wheel_tags(package, "deflate")  # a stable-ABI wheel: for 3.11 and later, this platform
    assert tags and all("-abi3-manylinux" in t and t.endswith("_x86_64") for t in tags), tags


def test_a_requirement_without_a_linux_wheel_exits_2_naming_it(project, isolated):
    """pywin32 has Windows wheels only: the error names it (not the other requirements), before any
    call to AWS (none is reachable here, and none is needed to refuse)."""
    import subprocess
    import sys

    (isolated / "requirements.txt").write_text("# the job's extra packages\nsix\npywin32  # Windows only\n")
    done = subprocess.run(
        [Path(sys.executable).with_name("corral"), "deploy", str(project / "myjob.py"), "--backend", "lambda",
         "--requirements", "requirements.txt", "--architecture", "arm64"],
        capture_output=True, text=True, cwd=isolated, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith("corral: error: cannot install pywin32 for manylinux_2_26_aarch64 / Python 3.11")
    assert "six" not in first and "msgpack" not in first


