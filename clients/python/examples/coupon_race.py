"""First-come coupons: 1,000 users race for 100 coupons, exactly 100 win.

The team's Spring service counted with INCR, checked the count, then queued the user to
Kafka: three steps that a crash or a retry can separate. COUPON.CLAIM checks the window,
the per-user limit and the stock, takes the coupon and logs the issue in one atomic
command, so exactly `total` claims succeed whatever the concurrency, and every win is in
tally's change log (XLEN tally:log) for the shipper to carry to the database.

    python examples/coupon_race.py [redis-url]   (or TALLY_REDIS_URL; default redis://127.0.0.1:6379)

Runs the race with asyncio (1,000 users, 200 of them clicking twice). Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid

from tally_client import AsyncTally, ClaimResult, Duplicate, SoldOut, async_with_retry

USERS = 1000
STOCK = 100


async def race(url: str) -> tuple[dict[str, object], int]:
    tally = await AsyncTally.from_url(url)
    campaign = f"coupon:spring-sale:{uuid.uuid4().hex[:8]}"
    await tally.coupon_create(campaign, STOCK, per_user=1, meta="spring sale")
    gate = asyncio.Semaphore(64)  # at most 64 requests in flight (64 connections)

    async def apply(user: str) -> tuple[str, ClaimResult | str]:
        async with gate:
            try:
                won = await async_with_retry(
                    lambda op_id: tally.coupon_claim(campaign, user, op_id=op_id)
                )
                return user, won
            except SoldOut:
                return user, "soldout"
            except Duplicate:
                return user, "duplicate"

    clicks = [f"user:{i}" for i in range(1, USERS + 1)]
    clicks += [f"user:{i}" for i in range(1, USERS + 1, USERS // 200)]  # 200 double clicks
    results = await asyncio.gather(*(apply(u) for u in clicks))

    winners = {user: r.issue for user, r in results if isinstance(r, ClaimResult)}
    info = await tally.coupon_info(campaign)
    await tally.aclose()
    print(f"{len(clicks)} requests from {USERS} users: {len(winners)} won, "
          f"{sum(r == 'soldout' for _, r in results)} sold out, "
          f"{sum(r == 'duplicate' for _, r in results)} duplicate clicks refused; "
          f"issued {info.issued}, remaining {info.remaining}")
    summary = {
        "campaign": campaign,
        "requests": len(clicks),
        "winners": winners,
        "issued": info.issued,
        "remaining": info.remaining,
    }
    return summary, len(winners)


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("TALLY_REDIS_URL", "redis://127.0.0.1:6379")
    summary, winners = asyncio.run(race(url))
    print(json.dumps(summary))
    return 0 if winners == STOCK else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
