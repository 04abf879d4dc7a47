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
