"""Helpers of the core tests: reading output folders, running the CLI in-process and as a command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import corral
from corral.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def parts(out: str | os.PathLike) -> list[Path]:
    """The part files of an output folder, in order."""
    return sorted(Path(out).glob("part-*"))


def part_lines(out: str | os.PathLike) -> list[list[str]]:
    """The lines of each part file (without their newline)."""
    result = []
    for path in parts(out):
        text = path.read_bytes().decode("utf-8")  # not read_text: no newline translation
        assert text == "" or text.endswith("\n"), f"{path} does not end with a newline"
        result.append(text.split("\n")[:-1])
    return result


def lines(out: str | os.PathLike) -> list[str]:
    return [line for part in part_lines(out) for line in part]


def counts(out: str | os.PathLike) -> dict[str, int]:
    """``word<TAB>count`` output as a dict (asserting each key appears once)."""
    result: dict[str, int] = {}
    for line in lines(out):
        key, _, value = line.rpartition("\t")
        assert key not in result, f"key {key!r} appears twice"
        result[key] = int(value)
    return result


def manifest(out: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(out) / "_corral" / "manifest.json").read_text())


def run(job: type[corral.Job], inputs: Any, out: Any, **settings: Any) -> dict[str, Any]:
    """corral.run on the threads backend unless told otherwise."""
    settings.setdefault("backend", "threads")
    inputs = [str(i) for i in inputs] if isinstance(inputs, list) else str(inputs)
    return corral.run(job, inputs, str(out), **settings)


def word_counter(text: str) -> Counter:
    return Counter(text.split())


def cli(capsys, *argv: Any) -> tuple[int, str, str]:
    """``corral ARGV`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = cli_main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def corral_command() -> str:
    path = str(Path(sys.executable).with_name("corral"))
    assert path, "the corral console script is not installed (pip install -e .)"
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(extra)
    return env


def run_command(*argv: Any, cwd: Any = None, env: dict[str, str] | None = None, timeout: float = 120):
    """The ``corral`` console script (or any command) as a subprocess."""
    args = [str(a) for a in argv]
    if args[0] == "corral":
        args[0] = corral_command()
    return subprocess.run(
        args, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout
    )


def install_plugin(site: Path, dist: str, module: str, source: str) -> None:
    """Install into ``site`` (a folder for PYTHONPATH) a distribution ``dist`` 0.1 with the module ``module``
    (``source``) and an entry point of the same name in the group ``corral``: what pip installs for a
    plugin, found by the plugin manager like any other."""
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[corral]\n{module} = {module}\n")


def corral_with(site: Path, *argv: Any, cwd: Any = None, **env: str):
    """The ``corral`` command with the plugins installed in ``site`` (see ``install_plugin``)."""
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return run_command("corral", *argv, cwd=cwd, env=clean_env(PYTHONPATH=path, **env))
