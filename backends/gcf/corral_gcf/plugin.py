"""corral-gcf's plugin (entry point ``gcf`` in the group ``corral``): the executor and its options."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral import ExecutorSpec, Option, Settings, hookimpl
from corral_gcf.options import OPTIONS

if TYPE_CHECKING:
    from corral_gcf.executor import GcfExecutor


def create_executor(settings: Settings) -> GcfExecutor:
    from corral.remote import DEFAULT_CONCURRENCY
    from corral_gcf.executor import GcfConfig, GcfExecutor

    return GcfExecutor(settings.max_concurrency or DEFAULT_CONCURRENCY, GcfConfig.from_settings(settings))


@hookimpl
def corral_executors() -> list[ExecutorSpec]:
    return [ExecutorSpec("gcf", create_executor,
                         "Google Cloud Functions (2nd gen), deployed from the job (google-cloud-functions)")]


@hookimpl
def corral_options() -> list[Option[Any]]:
    return list(OPTIONS)
