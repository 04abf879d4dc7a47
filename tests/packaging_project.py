"""A job project with local modules and packages, for the packaging tests (tests/core and tests/lambda)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import corral

JOB = '''
import json
import os.path

import pytest  # installed in site-packages: not shipped as a local module

import corral
import helpers
from pkg import sub
from pkg.deep import leaf


class MyJob(corral.Job):
    def map(self, key, line):
        yield helpers.norm(line), sub.ONE + leaf.TWO
'''


def make_project(tmp_path: Path) -> Path:
    """``tmp_path/project``: myjob.py, its local modules and packages, and files it does not import."""
    folder = tmp_path / "project"
    files = {
        "myjob.py": JOB,
        "helpers.py": "def norm(text):\n    return text.strip().lower()\n",
        "pkg/__init__.py": "from . import other\n",
        "pkg/sub.py": "from .other import BASE\nONE = BASE\n",
        "pkg/other.py": "BASE = 1\n",
        "pkg/deep/__init__.py": "",
        "pkg/deep/leaf.py": "from ..other import BASE\nTWO = BASE + 1\n",
        "unused.py": "raise RuntimeError('never imported')\n",
        "json.py": "# shadows nothing: stdlib names are never local\n",
    }
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return folder


def source(project: Path, requirements: tuple[str, ...] = ()) -> corral.JobSource:
    ref = {"module": "myjob", "class": "MyJob", "path": str(project / "myjob.py")}
    return corral.JobSource(ref, requirements)
