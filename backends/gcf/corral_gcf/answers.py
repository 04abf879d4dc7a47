"""Turning a Cloud Functions HTTP answer into a corral Outcome: measurements, results, failure kinds.

Plain functions of plain data (no Google library). A 2nd-gen function answers as Cloud Run does:

- 200: the body is ``corral.remote.run_remote``'s answer (the task's result, or the user's exception
  with its traceback, which may be a ``MemoryError``: out of memory);
- 500 with ``X-Google-Status: crash``: the entry point raised (corral's ``main.py`` returns the
  traceback in the body): the user's error;
- 500 ``Memory limit of N MiB exceeded with M MiB used.``: out of memory at N MB, peak M;
- 504 (or 408) ``... reached the maximum request timeout of N seconds``: timed out at ``--timeout``;
- 413, or 500 ``Response size was too large``: a request or response over the 32 MB limit;
- 429, or 503 "no available instance": throttled; other 5xx: server errors. The executor retries
  those before they get here (``is_throttle``, ``is_server_error``).

Measurements: the emulator's ``X-Corral-*`` headers when present (duration, cgroup peak, cold start),
else the handler's own (``duration_ms``, ``peak_memory_mb``, ``cold_start`` in its answer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from corral import INFRASTRUCTURE, OUT_OF_MEMORY, TIMEOUT, USER_ERROR, Failure, Outcome, outcome_from_result
from corral.remote import number
from corral_gcf.pricing import billed_ms

CRASH_HEADER = "x-google-status"
_MEMORY = re.compile(r"Memory limit of ([\d.]+) MiB exceeded with ([\d.]+) MiB used")
_TIMEOUT = re.compile(r"maximum request timeout of ([\d.]+) seconds")
_NO_INSTANCE = re.compile(r"no available instance", re.IGNORECASE)
def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def is_throttle(status: int, body: bytes) -> bool:
    """429, or a 503 saying there was no instance to take the request: backpressure."""
    return status == 429 or (status == 503 and bool(_NO_INSTANCE.search(body[:2000].decode("utf-8", "replace"))))


def is_answer(status: int, headers: Mapping[str, str], body: bytes) -> bool:
    """Whether an HTTP answer is the function's (to classify), not one to retry or to fail the call on."""
    if status in (200, 408, 413, 504):
        return True
    if status == 500:
        text = body[:2000].decode("utf-8", "replace")
        return (CRASH_HEADER in _lowered(headers) or bool(_MEMORY.search(text))
                or "Response size was too large" in text)
    return False


def _text(body: bytes, limit: int = 2000) -> str:
    return body[:limit].decode("utf-8", "replace").strip()


def outcome_from_answer(status: int, headers: Mapping[str, str], body: bytes, stats: dict[str, Any],
                        memory_mb: int, timeout_s: float) -> Outcome:
    """Classify one invocation's answer (see the module); ``stats`` gets billed_ms and the handler's
    own measurements when the platform did not give them."""
    result: Any = None
    if status in (200, 500):
        try:
            result = json.loads(body or b"null")
        except ValueError:
            result = None
    if isinstance(result, dict) and "ok" in result:  # the handler answered (200; 500: it caught a crash)
        for key, value in (("duration_ms", result.get("duration_ms")),
                           ("max_memory_used_mb", result.get("peak_memory_mb")),
                           ("cold_start", result.get("cold_start"))):
            if value is not None:
                stats.setdefault(key, value)
    duration = stats.get("duration_ms")
    if duration is None:
        duration = float(stats.get("seconds") or 0) * 1000
    stats.setdefault("billed_ms", billed_ms(duration))
    stats.setdefault("memory_size_mb", memory_mb)
    text = _text(body)
    if status == 200:
        if not isinstance(result, dict) or "ok" not in result:
            return Outcome(failure=Failure(INFRASTRUCTURE, f"unexpected answer from the function: {text[:500]}"),
                           stats=stats)
        outcome = outcome_from_result(result, stats)
        error = result.get("error") or {}
        if not outcome.ok and error.get("type") == "MemoryError":
            outcome.failure = Failure(OUT_OF_MEMORY, outcome.failure.message if outcome.failure else "MemoryError",
                                      error.get("traceback"), limit=memory_mb, peak=stats.get("max_memory_used_mb"))
        return outcome
    memory = _MEMORY.search(text)
    if status == 500 and memory:
        stats["max_memory_used_mb"] = number(memory.group(2))
        return Outcome(failure=Failure(OUT_OF_MEMORY, memory.group(0), limit=number(memory.group(1)),
                                       peak=number(memory.group(2))), stats=stats)
    if status in (504, 408):
        stats["billed_ms"] = billed_ms(max(float(duration), timeout_s * 1000))
        found = _TIMEOUT.search(text)
        limit = number(found.group(1)) if found else timeout_s
        return Outcome(failure=Failure(TIMEOUT, text or f"HTTP {status}", limit=limit), stats=stats)
    if status == 500 and CRASH_HEADER in _lowered(headers):
        if isinstance(result, dict) and "ok" in result:
            return outcome_from_result(result, stats)
        return Outcome(failure=Failure(USER_ERROR, f"the function crashed: {text or 'HTTP 500'}"), stats=stats)
    return Outcome(failure=Failure(INFRASTRUCTURE, f"HTTP {status}: {text}"), stats=stats)
