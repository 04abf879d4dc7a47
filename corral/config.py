"""Settings: defaults < ``[tool.corral]`` in pyproject.toml < corral.toml < ``CORRAL_*`` variables < flags.

Both files are looked up in the current folder. Every value is validated by its Option's parser, and
an invalid one is rejected with a message naming the setting and where it came from; the resolved
``corral.Settings`` remembers each value's source (``settings.source("backend")``) for later messages.
The options themselves (corral's and how to add one) are in ``corral.settings``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from corral.errors import UsageError
from corral.options import Option
from corral.settings import CORE_OPTIONS, Settings

if TYPE_CHECKING:
    from pluggy import HookImpl


def all_options() -> list[Option[Any]]:
    """corral's own options, then those plugins add through ``corral_options``, each once.

    Several plugins may return the same Option object (remote backends sharing ``--memory``); two
    different Option objects with one name are a UsageError naming both plugins and the option.
    """
    from corral.plugins import get_plugin_manager

    pm = get_plugin_manager()
    options = list(CORE_OPTIONS)
    declared: dict[str, tuple[Option[Any], HookImpl | None]] = {o.name: (o, None) for o in options}  # None: corral's
    for impl in reversed(pm.hook.corral_options.get_hookimpls()):  # the order pluggy calls them in
        for option in cast("list[Option[Any]]", impl.function()):
            first = declared.get(option.name)
            if first is None:
                declared[option.name] = (option, impl)
                options.append(option)
            elif first[0] is not option:
                raise UsageError(f"option --{option.name} is declared twice, by {_by(first[1])} and by {_by(impl)}: "
                                 "plugins share an option by returning the same Option object")
    return options


def _by(impl: HookImpl | None) -> str:
    """Who declared an option: corral itself (``impl`` None) or a plugin and its distribution (read
    from its metadata only for this message: ``all_options`` runs at every start)."""
    from corral.plugins import CORE_DISTRIBUTION, plugin_distribution

    if impl is None:
        return f"corral itself ({CORE_DISTRIBUTION})"
    return f"plugin {impl.plugin_name!r} ({plugin_distribution(impl.plugin)})"


def _file_settings(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(source name, table)`` from pyproject.toml's [tool.corral], then corral.toml (later wins)."""
    found = []
    for name in ("pyproject.toml", "corral.toml"):
        path = folder / name
        if not path.is_file():
            continue
        import tomllib

        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
        table = data.get("tool", {}).get("corral", {}) if name == "pyproject.toml" else data
        if not isinstance(table, dict):
            raise UsageError(f"{path}: [tool.corral] must be a table")
        found.append((str(path), table))
    return found


def load_settings(
    flags: Mapping[str, Any] | None = None,
    folder: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every option from its sources; ``flags`` maps option dests to values (None = not given)."""
    options = all_options()
    by_key = {o.name: o for o in options} | {o.dest: o for o in options}
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {o.dest: o.default for o in options}
    sources: dict[str, str] = {}

    def apply(option: Option[Any], raw: Any, source: str) -> None:
        try:
            values[option.dest] = option.parse(raw)
        except ValueError as exc:
            raise UsageError(f"invalid value for {source}: {exc}") from None
        sources[option.dest] = source

    for path, table in _file_settings(Path(folder or os.getcwd())):
        for key, raw in table.items():
            option = by_key.get(key)
            if option is None:
                raise UsageError(f"unknown setting {key!r} in {path}")
            apply(option, raw, f"{key} in {path}")  # as the user wrote it (- or _)
    for option in options:
        if option.env in environ:
            apply(option, environ[option.env], option.env)
    for dest, raw in (flags or {}).items():
        option = by_key.get(dest)
        if option is None:
            raise UsageError(f"unknown setting {dest!r}")
        if raw is not None:
            apply(option, raw, "--" + option.name)
    core = {option.dest: values.pop(option.dest) for option in CORE_OPTIONS}
    return Settings(
        **core,
        progress=not core["quiet"] and sys.stderr.isatty(),
        explicit=frozenset(sources),
        sources=MappingProxyType(sources),
        plugin_values=MappingProxyType(values),
    )
