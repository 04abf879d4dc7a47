"""A serverless platform's memory settings and prices, as plain data: what the cost so far (live page)
and the memory right-sizing advice need to know about a backend, without the core importing it.

A remote executor returns one from ``Executor.sizing()``; the driver stores it in the manifest
(``executor.sizing``), so that ``corral report`` can price a finished run again. Two pricing shapes
fit: memory-proportional (AWS Lambda: GB-seconds, CPU share growing with memory, 1 vCPU at 1769 MB)
and separate CPU and memory prices over fixed tiers (Cloud Functions 2nd gen).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class MemorySizing:
    """The memory settings a platform allows, the CPU each gets, and what a billed second costs.

    Sizes are either a range (``min_mb``..``max_mb`` in steps of ``step_mb``, e.g. Lambda's 128-10240
    MB in 1 MB steps) or a list of tiers (``sizes_mb``, with their vCPUs in ``vcpus``). A range's CPU
    is proportional to memory: ``memory / mb_per_vcpu`` vCPUs, at most ``max_vcpus``.
    """

    platform: str  # "AWS Lambda"
    memory_mb: int  # this run's setting
    min_mb: int = 128
    max_mb: int = 10240
    step_mb: int = 1
    sizes_mb: tuple[int, ...] = ()  # tiers, instead of the range
    vcpus: tuple[float, ...] = ()  # vCPUs of each tier
    mb_per_vcpu: float | None = None  # a range's CPU share: one vCPU per this many MB
    max_vcpus: float | None = None
    usd_per_gb_second: float = 0.0  # per GB (1024 MB) of memory per billed second
    usd_per_vcpu_second: float = 0.0  # per vCPU per billed second (0 where memory pays for CPU)
    usd_per_request: float = 0.0
    billing_increment_ms: int = 1  # billed durations are rounded up to this
    option: str = "--memory"  # the flag that sets the memory
    prices: str = ""  # where the prices come from, e.g. "us-east-1 list prices of 2026-11-21"

    def choices(self) -> list[int]:
        """Every allowed setting, smallest first (for a range: its ends; use ``smallest_fitting``)."""
        return sorted(self.sizes_mb) if self.sizes_mb else [self.min_mb, self.max_mb]

    def smallest_fitting(self, needed_mb: float) -> int | None:
        """The smallest allowed setting of at least ``needed_mb``; None if even the largest is smaller."""
        if self.sizes_mb:
            return next((size for size in sorted(self.sizes_mb) if size >= needed_mb), None)
        size = max(self.min_mb, self.min_mb + math.ceil(max(0.0, needed_mb - self.min_mb) / self.step_mb)
                   * self.step_mb)
        return size if size <= self.max_mb else None

    def vcpu(self, memory_mb: int) -> float | None:
        """The vCPUs a function of ``memory_mb`` gets (None if the platform does not say)."""
        if self.sizes_mb and self.vcpus:
            tiers = sorted(zip(self.sizes_mb, self.vcpus, strict=True))
            return next((cpu for size, cpu in tiers if size >= memory_mb), tiers[-1][1])
        if self.mb_per_vcpu:
            share = memory_mb / self.mb_per_vcpu
            return min(share, self.max_vcpus) if self.max_vcpus else share
        return None

    def cost(self, billed_ms: Iterable[float], memory_mb: int | None = None) -> float:
        """USD for invocations of these billed durations at ``memory_mb`` (default: this run's setting)."""
        memory_mb = memory_mb or self.memory_mb
        per_second = (memory_mb / 1024 * self.usd_per_gb_second
                      + (self.vcpu(memory_mb) or 0.0) * self.usd_per_vcpu_second)
        increment = max(1, self.billing_increment_ms)
        total = 0.0
        for ms in billed_ms:
            billed = math.ceil(max(0.0, float(ms)) / increment) * increment
            total += billed / 1000 * per_second + self.usd_per_request
        return total

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["sizes_mb"], data["vcpus"] = list(self.sizes_mb), list(self.vcpus)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MemorySizing:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["sizes_mb"] = tuple(values.get("sizes_mb") or ())
        values["vcpus"] = tuple(values.get("vcpus") or ())
        return cls(**values)
