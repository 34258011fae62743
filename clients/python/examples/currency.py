"""In-app currency (the seed's updateAllUserAsset): two assets changed at once, exactly.

The team's Node code called HINCRBYFLOAT twice in Promise.all: two commands (one could
fail alone), floats (5200 + 10.43 printed 5210.43000000000000016), and Kafka message ids
from timestamp + user that merged two grants of the same millisecond. Here each grant is
ONE ASSET.INCR of both fields (both or neither), amounts are Decimal strings, and each
grant has its own op-id, so a retry or a redelivered message never pays twice.

    python examples/currency.py [redis-url]    (or TALLY_REDIS_URL; default redis://127.0.0.1:6379)

Prints one JSON line: the keys it used and the balances it read back.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from tally_client import Amount, Insufficient, Tally, with_retry


def update_all_user_asset(
    tally: Tally, user_seq: str, added_bdp: Amount, added_training: Amount, *, op_id: str
) -> dict[str, Decimal]:
    """The seed's updateAllUserAsset: both fields in one atomic, idempotent command."""
    return tally.asset_incr(
        f"user.asset.{user_seq}",
        {"BDP": added_bdp, "TRAINING": added_training},
        op_id=op_id,
        meta="chat bonus",
    )


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("TALLY_REDIS_URL", "redis://127.0.0.1:6379")
    run = uuid.uuid4().hex[:8]  # fresh users on every run
    tally = Tally.from_url(url)

    # 1. One user: 5200 + 10.43 is 5210.43, and TRAINING moves in the same command.
    user = f"{run}-42"
    tally.asset_incr(f"user.asset.{user}", {"BDP": "5200", "TRAINING": "3"}, op_id=f"signup-{user}")
    grant = f"chat-bonus-{run}-1-{user}"  # one op-id per grant, never timestamp + user
    first = update_all_user_asset(tally, user, Decimal("10.43"), Decimal("0.5"), op_id=grant)
    print(f"user.asset.{user}: BDP {first['BDP']}, TRAINING {first['TRAINING']}")
    # The same grant delivered again (a retry, a redelivered message) is answered, not paid.
    assert update_all_user_asset(tally, user, Decimal("10.43"), Decimal("0.5"), op_id=grant) == first
    # Spending more BDP than held is refused, and TRAINING is not touched either.
    try:
        tally.asset_incr(f"user.asset.{user}", {"BDP": "-6000", "TRAINING": "-1"})
    except Insufficient as e:
        print(f"refused: {e}")

    # 2. A chat of 500 users gets the bonus twice at the same moment (two chat servers):
    # 1,000 grants from 16 threads, each retried on connection errors with its own op-id.
    chat = [f"{run}-chat-{i}" for i in range(500)]
    grants = [(u, n) for u in chat for n in (1, 2)]

    def pay(u: str, n: int) -> dict[str, Decimal]:
        return with_retry(
            lambda op_id: update_all_user_asset(tally, u, "10.43", "0.5", op_id=op_id),
            op_id=f"chat-bonus-{run}-{n}-{u}",
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda g: pay(*g), grants))
    seen = {tuple(tally.asset_get(f"user.asset.{u}", "BDP", "TRAINING").values()) for u in chat}
    print(f"{len(chat)} chat users, (BDP, TRAINING) balances: {sorted(tuple(map(str, s)) for s in seen)}")

    print(
        json.dumps(
            {
                "user_key": f"user.asset.{user}",
                "user": {k: str(v) for k, v in tally.asset_get(f"user.asset.{user}").items()},
                "chat_keys": [f"user.asset.{u}" for u in chat],
            }
        )
    )
    tally.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
