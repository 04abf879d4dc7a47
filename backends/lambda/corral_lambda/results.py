"""Turning a Lambda Invoke answer into a corral Outcome: measurements, results and failure kinds.

Plain functions of plain data (no boto3), shared by every backend on the Lambda code path.
Measurements come from the emulator's ``X-Corral-*`` headers when present, else from the ``REPORT``
line of the log tail (``LogType=Tail``), as AWS writes it::

    REPORT RequestId: 8f5… Duration: 102.25 ms Billed Duration: 103 ms Memory Size: 128 MB
    Max Memory Used: 38 MB Init Duration: 120.54 ms
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from corral import INFRASTRUCTURE, OUT_OF_MEMORY, TIMEOUT, USER_ERROR, Failure, Outcome, outcome_from_result
from corral.remote import emulator_stats, number

_REPORT_FIELDS = {
    "duration_ms": re.compile(r"(?<!Billed )(?<!Init )Duration:\s*([\d.]+)\s*ms"),
    "billed_ms": re.compile(r"Billed Duration:\s*([\d.]+)\s*ms"),
    "memory_size_mb": re.compile(r"Memory Size:\s*([\d.]+)\s*MB"),
    "max_memory_used_mb": re.compile(r"Max Memory Used:\s*([\d.]+)\s*MB"),
    "init_ms": re.compile(r"Init Duration:\s*([\d.]+)\s*ms"),
}
_TIMED_OUT = re.compile(r"Task timed out after\s*([\d.]+)\s*seconds")


def parse_report(log: str) -> dict[str, Any]:
    """The measurements of the last ``REPORT`` line in ``log`` (empty if there is none).

    Keys: ``duration_ms``, ``billed_ms``, ``memory_size_mb``, ``max_memory_used_mb``, ``init_ms`` (cold
    starts only) and ``cold_start`` (whether an ``Init Duration`` was reported).
    """
    lines = [line for line in log.splitlines() if line.startswith("REPORT ")]
    if not lines:
        return {}
    line = lines[-1]
    stats: dict[str, Any] = {}
    for key, pattern in _REPORT_FIELDS.items():
        match = pattern.search(line)
        if match:
            stats[key] = number(match.group(1))
    stats["cold_start"] = "init_ms" in stats
    return stats


def invoke_stats(headers: Mapping[str, str], log: str = "") -> dict[str, Any]:
    """An invocation's measurements: the emulator's ``X-Corral-*`` headers, else the REPORT line."""
    lowered = {k.lower(): v for k, v in headers.items()}
    stats = {**parse_report(log), **emulator_stats(headers)}
    if "x-corral-cold-start" not in lowered and stats:
        stats["cold_start"] = "init_ms" in stats
    request_id = lowered.get("x-amzn-requestid")
    if request_id:
        stats["request_id"] = request_id
    return stats


def outcome_from_invoke(
    payload: bytes,
    function_error: str | None,
    stats: dict[str, Any],
    memory_mb: int,
    timeout_s: float,
) -> Outcome:
    """Classify one RequestResponse Invoke: the task's result, or a failure of the right kind.

    - no ``FunctionError``: the payload is ``corral.run_task``'s answer (which may itself be a user
      error, with the user's traceback);
    - ``Runtime.OutOfMemory`` (or the runtime killed at its memory size, or a ``MemoryError``):
      out of memory, with the limit and the peak;
    - ``Task timed out after N seconds`` / ``Sandbox.Timedout``: timed out, with the limit;
    - other ``Runtime.*`` / ``Sandbox.*`` / ``Function.*`` errors: infrastructure (the package or the
      runtime, not the user's code); anything else: a user error with the remote stack trace.
    """
    if not function_error:
        try:
            result = json.loads(payload or b"null")
        except ValueError:
            result = None
        if not isinstance(result, dict) or "ok" not in result:
            text = payload[:500].decode("utf-8", "replace")
            return Outcome(failure=Failure(INFRASTRUCTURE, f"unexpected answer from the function: {text}"),
                           stats=stats)
        outcome = outcome_from_result(result, stats)
        error = result.get("error") or {}
        if not outcome.ok and error.get("type") == "MemoryError":
            outcome.failure = Failure(OUT_OF_MEMORY, outcome.failure.message if outcome.failure else "MemoryError",
                                      error.get("traceback"), limit=memory_mb,
                                      peak=stats.get("max_memory_used_mb"))
        return outcome
    try:
        body = json.loads(payload or b"{}")
    except ValueError:
        body = {"errorMessage": payload[:2000].decode("utf-8", "replace")}
    if not isinstance(body, dict):
        body = {"errorMessage": str(body)}
    error_type = str(body.get("errorType") or function_error)
    message = str(body.get("errorMessage") or "")
    stack = body.get("stackTrace")
    traceback = "".join(stack) if isinstance(stack, list) else (str(stack) if stack else None)
    peak = stats.get("max_memory_used_mb")
    if _is_out_of_memory(error_type, message, peak, memory_mb):
        return Outcome(
            failure=Failure(OUT_OF_MEMORY, f"{error_type}: {message}", traceback, limit=memory_mb, peak=peak),
            stats=stats,
        )
    if error_type == "Sandbox.Timedout" or _TIMED_OUT.search(message):
        return Outcome(failure=Failure(TIMEOUT, message, traceback, limit=timeout_s), stats=stats)
    kind = INFRASTRUCTURE if error_type.split(".")[0] in ("Runtime", "Sandbox", "Function") else USER_ERROR
    text = f"{error_type}: {message}" if message else error_type
    if traceback and not traceback.startswith("Traceback"):
        traceback = "Traceback (most recent call last) on the function:\n" + traceback
    return Outcome(failure=Failure(kind, text, traceback), stats=stats)


def _is_out_of_memory(error_type: str, message: str, peak: float | None, memory_mb: int) -> bool:
    if error_type in ("Runtime.OutOfMemory", "MemoryError"):
        return True
    # AWS reports a sandbox killed at its limit as "Runtime exited with error: signal: killed" with
    # Max Memory Used at (or just under) the Memory Size.
    killed = "signal: killed" in message
    return killed and peak is not None and peak >= 0.95 * memory_mb
