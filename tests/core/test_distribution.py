"""The core distribution as pip builds it: one version (corral/_version.py), the typing marker, the C module."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version

import corral
from corral._version import __version__

from ..requirements import in_ci
from .util import REPO


def test_one_version_everywhere():
    assert corral.__version__ == __version__ == version("corral-mapreduce")


def test_the_wheel_ships_py_typed_the_version_and_the_compiled_speedups(tmp_path):
    source = tmp_path / "src"  # a copy: building leaves build/ and *.egg-info next to pyproject.toml
    shutil.copytree(REPO / "corral", source / "corral", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("corral_mapreduce-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert {"corral/py.typed", "corral/_version.py", "corral/settings.py", "corral/_speedups.pyi"} <= names
    # built from corral/_speedups.c where a compiler is (always in CI), not copied: *.so were left out of the copy
    compiled = [n for n in names if n.startswith("corral/_speedups.") and n.endswith(".so")]
    assert compiled or not (in_ci() or shutil.which("cc") or shutil.which("gcc")), sorted(names)
    assert f"\nVersion: {__version__}\n" in metadata
