"""The plugin manager: corral's built-in plugins first, then entry points of the group ``corral``."""

from __future__ import annotations

import importlib
from functools import cache

import pluggy

from corral import hookspecs

hookimpl = pluggy.HookimplMarker("corral")

#: Built-in plugins, registered through the same hooks as external ones.
DEFAULT_PLUGINS = (
    "corral.filesystems.fsspec",
    "corral.executors.local",
    "corral.progress",
)


@cache
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built once; plugins load lazily on first use)."""
    pm = pluggy.PluginManager("corral")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    pm.load_setuptools_entrypoints("corral")
    return pm


def plugin_distribution(plugin: object) -> str:
    """The name of the distribution that provides ``plugin`` (corral's own for built-ins)."""
    for registered, dist in get_plugin_manager().list_plugin_distinfo():
        if registered is plugin:
            return dist.metadata["Name"]
    return "corral-mapreduce"
