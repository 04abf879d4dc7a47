"""The in-tree backends and the emulator are the proof that a third party can write one: they import only
names that ``corral`` (or ``corral.remote``, the layer serverless backends build on, and
``corral.remote_options``, the options they share) exports publicly."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PUBLIC_MODULES = ("corral", "corral.remote", "corral.remote_options")


def imports_of_corral(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) of every import of corral in a file (name None for ``import corral.x``)."""
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "corral" or node.module.startswith("corral.")):
            found.extend((node.lineno, node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, None) for alias in node.names if alias.name.startswith("corral."))
    return found


def test_backends_and_the_emulator_import_only_corrals_public_names():
    sources = [p for folder in ("backends", "emulator") for p in (REPO / folder).rglob("*.py")
               if ".egg-info" not in str(p) and "build" not in p.relative_to(REPO).parts]
    assert len(sources) > 20
    private = []
    for path in sources:
        for line, module, name in imports_of_corral(path):
            where = f"{path.relative_to(REPO)}:{line}"
            if module not in PUBLIC_MODULES:
                private.append(f"{where}: {module} is not a public module ({', '.join(PUBLIC_MODULES)})")
            elif name is not None and name != "*" and name not in importlib.import_module(module).__all__:
                private.append(f"{where}: {module}.{name} is not in {module}.__all__")
    assert private == []


def test_every_public_name_is_there():
    for module in PUBLIC_MODULES:
        loaded = importlib.import_module(module)
        missing = [name for name in loaded.__all__ if not hasattr(loaded, name)]
        assert missing == [], module


def test_loading_the_plugins_imports_no_remote_machinery():
    """The ``corral`` command loads every installed plugin on every run, a local one too: a backend's
    plugin module declares its options from ``corral.remote_options``, and ``corral.remote`` (its executor
    layer) loads only when a remote backend runs."""
    import subprocess
    import sys

    code = ("import json, sys, corral.cli; from corral.plugins import get_plugin_manager; pm = get_plugin_manager(); "
            "print(json.dumps([sorted(n for n, _ in pm.list_name_plugin()), 'corral.remote' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    plugins, remote = json.loads(done.stdout)
    assert {"lambda", "gcf", "docker"} <= set(plugins) and remote is False
