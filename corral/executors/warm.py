"""Imported once by the process pool's fork server, so every worker forked from it starts warm:
the plugins loaded and the local filesystem ready, instead of each worker paying for them."""

import fsspec.implementations.local  # noqa: F401

import corral.tasks
import corral.worker  # noqa: F401
from corral.plugins import get_plugin_manager

get_plugin_manager()
