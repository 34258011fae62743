"""The asyncio client: every method, errors, idempotency, concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import redis
import redis.asyncio

import tally_client as tc
from servers import async_wait_until
from tally_client import (
    AsyncTally,
    Availability,
    ClaimResult,
    CouponInfo,
    HoldResult,
    ReleaseResult,
    SettleResult,
    TransferResult,
    UsageCancelResult,
    UsageInfo,
    UsageReservation,
    UsageResult,
    VoidResult,
)


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


async def test_hold_methods(atally: AsyncTally, raw: redis.Redis, key) -> None:
    k = key("wallet")
    await atally.asset_incr(k, {"gold": 100})
    h = await atally.asset_hold(k, "gold", 30, ttl=60_000, op_id="h-1")
    assert h == await atally.asset_hold(k, "gold", 30, ttl=60_000, op_id="h-1") == HoldResult("1", Decimal(70))
    assert await atally.asset_available(k) == {"gold": Availability(Decimal(100), Decimal(30), Decimal(70))}
    assert [x.hold_id for x in await atally.asset_holds(k)] == ["1"]
    assert await atally.asset_settle(k, "1", "25") == SettleResult(Decimal(25), Decimal(75))
    with pytest.raises(tc.NotFound) as e:
        await atally.asset_void(k, "1")
    assert e.value.reason == "settled"
    h2 = await atally.asset_hold(k, "gold", 5, ttl=60_000)
    assert await atally.asset_void(k, h2.hold_id) == VoidResult(Decimal(5), Decimal(75))
    assert (await atally.asset_hold(k, "gold", 75, ttl=100)).available == Decimal(0)

    async def expired() -> bool:
        return await atally.asset_holds(k) == []

    await async_wait_until(expired, "the hold to expire", timeout=10)
    assert (await atally.asset_available(k, "gold"))["gold"].available == Decimal(75)

    camp = key("camp")
    await atally.coupon_create(camp, 2)
    assert await atally.coupon_reserve(camp, "alice", ttl=60_000) == ClaimResult(1, 1)
    assert await atally.coupon_confirm(camp, "alice", 1) == ClaimResult(1, 1)
    assert raw.hget(camp, "c:alice") == "1"
    assert await atally.coupon_reserve(camp, "bob", ttl=60_000) == ClaimResult(2, 0)
    assert await atally.coupon_cancel(camp, "bob", 2) == ReleaseResult(2, 1)
    assert (await atally.coupon_info(camp)).reserved == 0

    q = key("q")
    await atally.usage_limit(q, 10)
    r = await atally.usage_reserve(q, 4, ttl=60_000)
    assert r == UsageReservation("1", Decimal(0), Decimal(4), Decimal(6))
    assert (await atally.usage_get(q)).reserved == Decimal(4)
    assert await atally.usage_commit(q, r.reservation_id, "2.5") == UsageResult(Decimal("2.5"), Decimal("7.5"))
    r2 = await atally.usage_reserve(q, 1, ttl=60_000)
    assert await atally.usage_cancel(q, r2.reservation_id) == UsageCancelResult(Decimal(1), Decimal("7.5"))


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
