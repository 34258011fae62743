"""Usage billing: concurrent consumers never exceed the quota.

`if used < limit: used += 1` raced under concurrency, and counts batched in memory were
lost on SIGKILL. USAGE.CONSUME checks `used + amount <= limit` and adds in one atomic
command (stored in Redis, logged for billing), so 20 threads consuming 7.5 units at a
time stop exactly when the next 7.5 no longer fits.

    python examples/usage_quota.py [redis-url]   (or TALLY_REDIS_URL; default redis://127.0.0.1:6379)

Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from tally_client import LimitExceeded, Tally, with_retry

LIMIT = Decimal(1000)
UNITS = Decimal("7.5")
WORKERS = 20


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("TALLY_REDIS_URL", "redis://127.0.0.1:6379")
    tally = Tally.from_url(url)
    key = f"usage:api:acme:{uuid.uuid4().hex[:8]}"
    tally.usage_limit(key, LIMIT, period="month", meta="plan: business")

    def worker(_: int) -> int:
        accepted = 0
        while True:
            try:
                with_retry(lambda op_id: tally.usage_consume(key, UNITS, op_id=op_id))
            except LimitExceeded:
                return accepted
            accepted += 1

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        accepted = sum(pool.map(worker, range(WORKERS)))
    info = tally.usage_get(key)
    tally.close()
    print(f"{WORKERS} consumers: {accepted} calls of {UNITS} accepted, "
          f"used {info.used} of {info.limit}, remaining {info.remaining} ({info.period} {info.period_id})")
    print(json.dumps({
        "key": key,
        "accepted_calls": accepted,
        "units": str(UNITS),
        "used": str(info.used),
        "limit": str(info.limit),
        "remaining": str(info.remaining),
    }))
    return 0 if info.used <= info.limit else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
