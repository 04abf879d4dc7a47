"""Cloud Functions (2nd gen) prices, and the estimated cost of a run's invocations.

A 2nd-gen function is a Cloud Run service billed per request ("CPU only allocated during request
processing"): each request's time, rounded up to 100 ms, is billed as vCPU-seconds and GiB-seconds of
the instance's size, plus a price per request. The prices are the Tier 1 regions' (us-central1 and the
others of its tier) list prices, as published on https://cloud.google.com/run/pricing (Cloud Run
functions' pricing page points there), checked on the date below against copies of that page:
$0.00002400 per vCPU-second, $0.00000250 per GiB-second, $0.40 per million requests. They ignore the
free tier (180,000 vCPU-seconds, 360,000 GiB-seconds and 2 million requests a month), committed-use
discounts, Tier 2 regions (dearer), Cloud Build and Artifact Registry (deploys), and the job's Cloud
Storage requests and network traffic.

    cost = vCPU-seconds x price per vCPU-second     (vCPU-s = billed ms / 1000 x the instance's vCPUs)
         + GiB-seconds x price per GiB-second       (GiB-s = billed ms / 1000 x memory MB / 1024)
         + requests x price per request

The vCPUs of an instance follow its memory, as Cloud Functions sets them (the tiers below, from
https://cloud.google.com/functions/docs/configuring/memory): 128 MB .083 vCPU, 256 MB .167, 512 MB .333,
1 GB .583, 2 GB 1, 4 GB 2, 8 GB 2, 16 GB 4, 32 GB 8; a size between two tiers gets the larger's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from corral import MemorySizing

#: When the prices below were checked (https://cloud.google.com/run/pricing, Tier 1, request-based billing).
PRICES_READ = "2026-12-01"
REGION = "Tier 1 (us-central1)"
SOURCE = "https://cloud.google.com/run/pricing"
BILLING_INCREMENT_MS = 100
#: Memory tiers (MB = MiB) and the vCPUs each gets.
TIERS: tuple[tuple[int, float], ...] = (
    (128, 0.083), (256, 0.167), (512, 0.333), (1024, 0.583), (2048, 1.0), (4096, 2.0), (8192, 2.0),
    (16384, 4.0), (32768, 8.0),
)


@dataclass(frozen=True)
class Price:
    vcpu_second: float  # USD per vCPU-second of billed time
    gib_second: float  # USD per GiB-second of billed time
    request: float  # USD per request


PRICE = Price(vcpu_second=0.000024, gib_second=0.0000025, request=0.40 / 1_000_000)


def vcpus_for(memory_mb: int) -> float:
    """The vCPUs Cloud Functions gives an instance of ``memory_mb`` (the tier at or above it)."""
    return next((cpu for size, cpu in TIERS if size >= memory_mb), TIERS[-1][1])


def billed_ms(duration_ms: float) -> int:
    """A request's billed time: its duration rounded up to 100 ms."""
    increments = -(-max(0.0, float(duration_ms)) // BILLING_INCREMENT_MS)
    return int(max(1.0, increments) * BILLING_INCREMENT_MS)


def estimate(invocations: int, gib_seconds: float, vcpu_seconds: float) -> dict[str, Any]:
    """The estimated cost (USD) of ``invocations`` totalling these GiB- and vCPU-seconds, itemised."""
    cpu = vcpu_seconds * PRICE.vcpu_second
    memory = gib_seconds * PRICE.gib_second
    requests = invocations * PRICE.request
    return {
        "estimated_cost_usd": round(cpu + memory + requests, 8),
        "cost_usd": {"cpu": round(cpu, 8), "memory": round(memory, 8), "requests": round(requests, 8)},
        "prices": {**asdict(PRICE), "region": REGION, "read": PRICES_READ, "source": SOURCE},
    }


def sizing(memory_mb: int) -> MemorySizing:
    """Cloud Functions' memory tiers and prices, for the cost so far and the right-sizing advice."""
    return MemorySizing(
        platform="Google Cloud Functions", memory_mb=memory_mb, min_mb=TIERS[0][0], max_mb=TIERS[-1][0],
        sizes_mb=tuple(size for size, _ in TIERS), vcpus=tuple(cpu for _, cpu in TIERS),
        usd_per_gb_second=PRICE.gib_second, usd_per_vcpu_second=PRICE.vcpu_second, usd_per_request=PRICE.request,
        billing_increment_ms=BILLING_INCREMENT_MS, option="--memory",
        prices=f"{REGION} list prices of {PRICES_READ}",
    )
