"""The plugin manager: corral's built-in plugins first, then entry points of the group ``corral``.

Every plugin is checked against ``corral.hookspecs`` as it loads: a hook implementation whose name
matches no hook (a typo) or whose arguments differ from the hook's is a usage error naming the plugin,
its distribution and the hook, rather than an implementation that silently never runs.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from functools import cache

import pluggy

from corral import hookspecs
from corral.errors import UsageError
from corral.hookspecs import hookimpl

#: Built-in plugins, registered through the same hooks as external ones.
DEFAULT_PLUGINS = (
    "corral.filesystems.local",
    "corral.filesystems.fsspec",
    "corral.executors.local",
    "corral.progress",
    "corral.advice",
    "corral.ui.plugin",
)

CORE_DISTRIBUTION = "corral-mapreduce"


@cache
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built once; plugins load lazily on first use)."""
    pm = pluggy.PluginManager("corral")
    pm.add_hookspecs(hookspecs)
    try:
        for name in DEFAULT_PLUGINS:
            pm.register(importlib.import_module(name), name=name)
        pm.load_setuptools_entrypoints("corral")
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise UsageError(_invalid_plugin(pm, exc)) from None
    return pm


def registered_while(name: str, make: Callable[[], object], wanted: bool) -> None:
    """Keep the plugin ``name`` (made by ``make``) registered exactly while ``wanted``: a built-in
    plugin's per-task hooks are registered only while it shows something, so that a run nobody
    watches makes no task event (corral.ui.plugin, corral.progress)."""
    manager = get_plugin_manager()
    if wanted and not manager.has_plugin(name):
        manager.register(make(), name=name)
    elif not wanted and manager.has_plugin(name):
        manager.unregister(name=name)


def _invalid_plugin(pm: pluggy.PluginManager, exc: pluggy.PluginValidationError) -> str:
    """One line naming the plugin, its distribution and what is wrong with which hook."""
    plugin = exc.plugin
    name = (pm.get_name(plugin) if pm.is_registered(plugin) else None) or getattr(plugin, "__name__", repr(plugin))
    dist = _distribution(pm, plugin)
    where = f"plugin {name!r}" + (f" (distribution {dist})" if dist else "")
    message = str(exc)
    hook = re.search(r"hook '([^']+)'", message)
    if message.startswith("unknown hook ") and hook:  # pluggy: "unknown hook 'x' in plugin <module …>"
        return f"{where} implements {hook.group(1)!r}, which is not a corral hook (see corral.hookspecs)"
    reason = " ".join(message.splitlines()[-1].split())  # pluggy: "Plugin …\nhookimpl definition: …\nreason"
    return f"{where}: invalid implementation of {hook.group(1) if hook else 'a hook'!r}: {reason}"


def _distribution(pm: pluggy.PluginManager, plugin: object) -> str | None:
    """``name version`` of the distribution whose entry point is ``plugin`` (None for a built-in)."""
    for registered, dist in pm.list_plugin_distinfo():
        if registered is plugin:
            return f"{dist.metadata['Name']} {dist.version}"
    # a plugin refused while registering is not in pm's list yet: find its entry point
    from importlib.metadata import entry_points

    module = getattr(plugin, "__name__", None)
    for ep in entry_points(group="corral"):
        if ep.dist is not None and ep.module == module and not ep.attr:
            return f"{ep.dist.metadata['Name']} {ep.dist.version}"
    return None


def plugin_distribution(plugin: object) -> str:
    """The name of the distribution that provides ``plugin`` (corral's own for built-ins)."""
    for registered, dist in get_plugin_manager().list_plugin_distinfo():
        if registered is plugin:
            return str(dist.metadata["Name"])
    return CORE_DISTRIBUTION


__all__ = ["DEFAULT_PLUGINS", "get_plugin_manager", "hookimpl", "plugin_distribution"]
