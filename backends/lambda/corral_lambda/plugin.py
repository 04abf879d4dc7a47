"""corral-lambda's plugin (entry point ``lambda`` in the group ``corral``): the executor and its options."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral import ExecutorSpec, Option, Settings, hookimpl
from corral_lambda.options import OPTIONS

if TYPE_CHECKING:
    from corral_lambda.executor import LambdaExecutor


def create_executor(settings: Settings) -> LambdaExecutor:
    from corral.remote import DEFAULT_CONCURRENCY
    from corral_lambda.executor import LambdaConfig, LambdaExecutor

    return LambdaExecutor(settings.max_concurrency or DEFAULT_CONCURRENCY, LambdaConfig.from_settings(settings))


@hookimpl
def corral_executors() -> list[ExecutorSpec]:
    return [ExecutorSpec("lambda", create_executor, "AWS Lambda functions, deployed from the job (boto3)")]


@hookimpl
def corral_options() -> list[Option[Any]]:
    return list(OPTIONS)
