"""AWS Lambda's price table, and the estimated cost of a run's invocations.

The prices are the us-east-1 (N. Virginia) list prices of the first monthly tier, per architecture, as
published on https://aws.amazon.com/lambda/pricing/ (checked on the date below, against copies of that
page: they have not changed since arm64 launched in 2021). They ignore the free tier
(400,000 GB-s and 1M requests a month), Savings Plans and the cheaper tiers past 6 billion GB-s a month,
and the data transfer and S3 requests the job makes: the estimate is what these invocations cost at list
price. Other regions cost the same or a little more.

    cost = GB-seconds x price per GB-second                  (GB-s = billed ms / 1000 x memory MB / 1024)
         + invocations x price per request
         + ephemeral GB-seconds x price per ephemeral GB-s    (storage above the free 512 MB only)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from corral import MemorySizing
from corral.remote import gb_seconds  # noqa: F401 - GB-s = billed ms / 1000 x memory MB / 1024

#: When the prices below were checked (us-east-1, https://aws.amazon.com/lambda/pricing/).
PRICES_READ = "2026-11-21"
REGION = "us-east-1"
SOURCE = "https://aws.amazon.com/lambda/pricing/"


@dataclass(frozen=True)
class Price:
    architecture: str
    gb_second: float  # USD per GB-second of billed duration (first tier)
    request: float  # USD per invocation ($0.20 per million)
    ephemeral_gb_second: float  # USD per GB-second of ephemeral storage above 512 MB


PRICES = {
    "x86_64": Price("x86_64", gb_second=0.0000166667, request=0.20 / 1_000_000, ephemeral_gb_second=0.0000000309),
    "arm64": Price("arm64", gb_second=0.0000133334, request=0.20 / 1_000_000, ephemeral_gb_second=0.0000000309),
}
FREE_EPHEMERAL_MB = 512
#: Lambda's memory settings, and the CPU that comes with them: one vCPU at 1769 MB, up to 6 at 10240 MB.
MIN_MEMORY_MB, MAX_MEMORY_MB = 128, 10240
MB_PER_VCPU, MAX_VCPUS = 1769, 6.0


def estimate(
    architecture: str, invocations: int, gb_s: float, ephemeral_gb_s: float = 0.0
) -> dict[str, Any]:
    """The estimated cost (USD) of ``invocations`` totalling ``gb_s`` GB-seconds, itemised."""
    price = PRICES[architecture]
    duration = gb_s * price.gb_second
    requests = invocations * price.request
    ephemeral = ephemeral_gb_s * price.ephemeral_gb_second
    return {
        "estimated_cost_usd": round(duration + requests + ephemeral, 8),
        "cost_usd": {
            "duration": round(duration, 8),
            "requests": round(requests, 8),
            "ephemeral_storage": round(ephemeral, 8),
        },
        "prices": {**asdict(price), "region": REGION, "read": PRICES_READ, "source": SOURCE},
    }


def sizing(architecture: str, memory_mb: int, platform: str = "AWS Lambda") -> MemorySizing:
    """Lambda's memory settings and prices, for the cost so far and the right-sizing advice."""
    price = PRICES[architecture]
    return MemorySizing(
        platform=platform, memory_mb=memory_mb, min_mb=MIN_MEMORY_MB, max_mb=MAX_MEMORY_MB, step_mb=1,
        mb_per_vcpu=MB_PER_VCPU, max_vcpus=MAX_VCPUS, usd_per_gb_second=price.gb_second,
        usd_per_request=price.request, billing_increment_ms=1, option="--memory",
        prices=f"{REGION} list prices of {PRICES_READ} ({architecture})",
    )
