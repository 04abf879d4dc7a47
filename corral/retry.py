"""The retry policy: whether a failed attempt is tried again, and after how long.

Kept apart from the driver's scheduling so that the rules read in one place: failures count toward
``--retries``; throttling never does, but cannot outlast the job's ``--deadline``; bad input fails the
same way every time, so it is never retried; a full disk is retried once (another worker, or space freed
meanwhile), not ``--retries`` times; a cancelled attempt is the driver's own doing.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from corral.executor import CANCELLED, DISK_FULL, INPUT_ERROR, THROTTLED, Failure


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3  # failures of a task tolerated before the job fails
    deadline: float = float("inf")  # time.time() after which throttled tasks are not retried
    base: float = 0.1  # backoff: base * 2**(failures-1), capped, with jitter on the upper half
    cap: float = 30.0

    def counts(self, failure: Failure) -> bool:
        """Whether ``failure`` counts toward ``--retries``."""
        return failure.kind not in (THROTTLED, CANCELLED)

    def delay(self, failure: Failure, failures: int) -> float | None:
        """Seconds to wait before the next attempt of a task that has failed ``failures`` times
        (counted ones, this one included), or None when the task must not be tried again."""
        if failure.kind == INPUT_ERROR or failures > self.retries or (failure.kind == DISK_FULL and failures > 1):
            return None
        if failure.kind == THROTTLED and time.time() >= self.deadline:
            return None
        return min(self.cap, self.base * 2 ** max(0, failures - 1)) * (0.5 + random.random() / 2)
