"""The asyncio client: every method, errors, idempotency, concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import redis
import redis.asyncio

import tally_client as tc
from tally_client import AsyncTally, ClaimResult, CouponInfo, ReleaseResult, TransferResult, UsageInfo, UsageResult


@pytest.fixture
async def atally(server) -> AsyncIterator[AsyncTally]:
    t = AsyncTally(redis.asyncio.Redis(port=server.port))
    yield t
    await t.aclose()


async def test_asset_methods(atally: AsyncTally, raw: redis.Redis, key) -> None:
    k, k2 = key("{a}wallet"), key("{a}savings")
    assert await atally.asset_incr(k, {"BDP": 5200, "TRAINING": "3"}) == {"BDP": Decimal(5200), "TRAINING": Decimal(3)}
    assert await atally.asset_incr(k, {"BDP": "10.43", "TRAINING": Decimal("0.5")}, meta="m") == {
        "BDP": Decimal("5210.43"),
        "TRAINING": Decimal("3.5"),
    }
    assert await atally.asset_incr(k, {"x": "0.1"}) == {"x": Decimal("0.1")}
    assert await atally.asset_incr(k, {"x": "0.2"}) == {"x": Decimal("0.3")}
    big = "-12345678901234567890.123456789012345678"
    assert await atally.asset_incr(k, {"big": big}, nofloor=True) == {"big": Decimal(big)}
    assert await atally.asset_incr(k, {"f": -5}, floor=-5, ceil=10) == {"f": Decimal(-5)}
    assert await atally.asset_get(k, "BDP", "none") == {"BDP": Decimal("5210.43"), "none": Decimal(0)}
    assert list(await atally.asset_get(k)) == ["BDP", "TRAINING", "big", "f", "x"]
    assert await atally.asset_transfer(k, k2, "BDP", "0.43") == TransferResult(Decimal("5210"), Decimal("0.43"))
    assert raw.hget(k, "x") == "0.3" and raw.hget(k2, "BDP") == "0.43"
    with pytest.raises(TypeError):
        await atally.asset_incr(k, {"x": 0.1})  # type: ignore[dict-item]


async def test_coupon_and_usage_methods(atally: AsyncTally, key) -> None:
    camp = key("camp")
    await atally.coupon_create(camp, 2, per_user=1, end=2**42, meta="m")
    assert await atally.coupon_claim(camp, "alice") == ClaimResult(1, 1)
    assert await atally.coupon_release(camp, "alice") == ReleaseResult(1, 2)
    assert await atally.coupon_info(camp) == CouponInfo(2, 0, 2, 1, None, 2**42, 1)
    q = key("q")
    await atally.usage_limit(q, "1.5", period="day")
    assert await atally.usage_consume(q, "0.5") == UsageResult(Decimal("0.5"), Decimal(1))
    info = await atally.usage_get(q)
    assert isinstance(info, UsageInfo) and info.used == Decimal("0.5") and info.period == "day"


async def test_errors_and_idempotency(atally: AsyncTally, raw: redis.Redis, key) -> None:
    camp = key("camp")
    await atally.coupon_create(camp, 1)
    first = await atally.coupon_claim(camp, "alice", op_id="c-1")
    assert await atally.coupon_claim(camp, "alice", op_id="c-1") == first
    with pytest.raises(tc.Duplicate):
        await atally.coupon_claim(camp, "alice")
    with pytest.raises(tc.SoldOut):
        await atally.coupon_claim(camp, "bob")
    with pytest.raises(tc.Conflict):
        await atally.coupon_claim(camp, "bob", op_id="c-1")
    with pytest.raises(tc.NotFound):
        await atally.usage_get(key("none"))
    with pytest.raises(tc.Insufficient):
        await atally.asset_incr(key("a"), {"x": -1})
    with pytest.raises(tc.CommandError):
        await atally.coupon_create(camp, 1)
    assert raw.hget(camp, "issued") == "1"


async def test_concurrent_claims_exactly_total_win(atally: AsyncTally, key) -> None:
    camp = key("race")
    await atally.coupon_create(camp, 10)

    async def claim(user: str) -> int | None:
        try:
            return (await atally.coupon_claim(camp, user)).issue
        except tc.SoldOut:
            return None

    issues = await asyncio.gather(*(claim(f"user:{i}") for i in range(50)))
    won = sorted(i for i in issues if i is not None)
    assert won == list(range(1, 11))
    assert (await atally.coupon_info(camp)).remaining == 0


async def test_from_url_and_type_guard(server, key) -> None:
    t = await AsyncTally.from_url(server.url)
    assert isinstance(t.redis, redis.asyncio.Redis)
    assert await t.asset_incr(key("u"), {"x": 1}) == {"x": Decimal(1)}
    await t.aclose()
    with pytest.raises(TypeError, match="asyncio"):
        AsyncTally(redis.Redis(port=server.port))  # type: ignore[arg-type]
