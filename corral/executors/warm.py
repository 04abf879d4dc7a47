"""Imported once by the process pool's fork server, so every worker forked from it starts warm:
the plugins loaded, instead of each worker paying for them. (Not fsspec: the local disk is served
without it, and a run on an object store imports its filesystem in the driver first.)"""

import corral.tasks
import corral.worker  # noqa: F401
from corral.plugins import get_plugin_manager

get_plugin_manager()
