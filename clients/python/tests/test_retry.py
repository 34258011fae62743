"""A lost reply retried with the same op-id changes the balance once.

The proxy lets each command reach the server, which runs it, then drops the reply and
closes the connection: the client sees a ConnectionError and cannot tell whether its
change happened."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

import tally_client as tc
from proxy import LossyProxy
from tally_client import AsyncTally, Tally, async_with_retry, with_retry


@pytest.fixture
def lossy(server) -> Iterator[LossyProxy]:
    p = LossyProxy(server.port, trigger=b"ASSET.INCR", drops=1)
    yield p
    p.close()


def via(proxy: LossyProxy, retries: int, auto_op_id: bool = True) -> Tally:
    # retry_on_error: redis-py 5 retries only the errors listed there; 6+ retries
    # ConnectionError and TimeoutError by default.
    client = redis.Redis(
        port=proxy.port,
        retry=Retry(NoBackoff(), retries),
        retry_on_error=[redis.ConnectionError] if retries else None,
        socket_timeout=5,
    )
    return Tally(client, auto_op_id=auto_op_id)


def test_with_retry_after_a_lost_reply_applies_once(lossy: LossyProxy, raw: redis.Redis, key) -> None:
    k = key("user.asset.7")
    before = raw.xlen("tally:log")
    with via(lossy, retries=0) as t:
        # Without a retry the caller only sees the connection drop...
        with pytest.raises(redis.ConnectionError):
            t.asset_incr(k, {"BDP": "10.43"}, op_id="lost-1")
        assert lossy.dropped == 1
        assert raw.hget(k, "BDP") == "10.43"  # ...although the change was applied.
        lossy.drops_left = 1
        got = with_retry(lambda op_id: t.asset_incr(k, {"BDP": "10.43"}, op_id=op_id), backoff=0.01)
    assert lossy.dropped == 2
    assert got == {"BDP": Decimal("20.86")}
    assert raw.hget(k, "BDP") == "20.86"  # two grants, each applied exactly once
    assert raw.xlen("tally:log") == before + 2


def test_without_an_op_id_a_retried_lost_reply_is_applied_twice(lossy: LossyProxy, raw: redis.Redis, key) -> None:
    # The hazard op-ids remove, shown with redis-py's own retry (on by default since 6.0).
    k = key("user.asset.8")
    before = raw.xlen("tally:log")
    with via(lossy, retries=1, auto_op_id=False) as t:
        got = t.asset_incr(k, {"BDP": "10.43"})
    assert lossy.dropped == 1
    assert got == {"BDP": Decimal("20.86")}
    assert raw.hget(k, "BDP") == "20.86"
    assert raw.xlen("tally:log") == before + 2


def test_redis_py_retry_with_the_automatic_op_id_applies_once(lossy: LossyProxy, raw: redis.Redis, key) -> None:
    k = key("user.asset.9")
    before = raw.xlen("tally:log")
    with via(lossy, retries=1) as t:  # auto_op_id=True: the ID is part of the re-sent command
        got = t.asset_incr(k, {"BDP": "10.43", "TRAINING": "1"})
    assert lossy.dropped == 1 and lossy.connections == 2
    assert got == {"BDP": Decimal("10.43"), "TRAINING": Decimal(1)}
    assert raw.hgetall(k) == {"BDP": "10.43", "TRAINING": "1"}
    assert raw.xlen("tally:log") == before + 1


def test_lost_claim_reply_returns_the_same_issue(server, raw: redis.Redis, key) -> None:
    camp = key("camp")
    with Tally(server.client()) as direct:
        direct.coupon_create(camp, 10)
    proxy = LossyProxy(server.port, trigger=b"COUPON.CLAIM", drops=2)
    try:
        with via(proxy, retries=0) as t:
            got = with_retry(lambda op_id: t.coupon_claim(camp, "alice", op_id=op_id), backoff=0.01)
    finally:
        proxy.close()
    assert proxy.dropped == 2
    assert got == tc.ClaimResult(issue=1, remaining=9)
    assert raw.hget(camp, "issued") == "1"


def test_with_retry_gives_up_after_its_attempts(server, raw: redis.Redis, key) -> None:
    k = key("gives-up")
    proxy = LossyProxy(server.port, trigger=b"ASSET.INCR", drops=10)
    calls: list[str] = []

    def grant(op_id: str) -> dict[str, Decimal]:
        calls.append(op_id)
        return t.asset_incr(k, {"x": 1}, op_id=op_id)

    try:
        with via(proxy, retries=0) as t:
            with pytest.raises(redis.ConnectionError):
                with_retry(grant, attempts=3, backoff=0.01, op_id="given")
    finally:
        proxy.close()
    assert calls == ["given"] * 3
    assert proxy.dropped == 3
    assert raw.hget(k, "x") == "1"  # applied by the first attempt, replayed by the others


def test_with_retry_raises_tally_errors_at_once(tally: Tally, key) -> None:
    calls: list[str] = []

    def spend(op_id: str) -> dict[str, Decimal]:
        calls.append(op_id)
        return tally.asset_incr(key("empty"), {"x": -1}, op_id=op_id)

    with pytest.raises(tc.Insufficient):
        with_retry(spend, backoff=0.01)
    assert len(calls) == 1


def test_with_retry_waits_out_opids_with_the_same_op_id(start_server) -> None:
    s = start_server(module_args=["max-op-ids", "1"])
    raw = s.client()
    calls: list[str] = []
    with Tally(s.client()) as t:
        t.asset_incr("a", {"x": 1}, op_id="fills-the-bound")

        def grant(op_id: str) -> dict[str, Decimal]:
            calls.append(op_id)
            if len(calls) == 3:
                raw.config_set("tally.max-op-ids", "0")  # room again (an operator raised it)
            return t.asset_incr("a", {"x": 1}, op_id=op_id)

        got = with_retry(grant, retry_on=tc.RETRYABLE + (tc.OpIds,), backoff=0.01)
    assert got == {"x": Decimal(2)}
    assert len(calls) == 3 and len(set(calls)) == 1
    raw.close()


# asyncio ----------------------------------------------------------------------------------


def avia(proxy: LossyProxy, retries: int, auto_op_id: bool = True) -> AsyncTally:
    client = redis.asyncio.Redis(
        port=proxy.port,
        retry=redis.asyncio.retry.Retry(NoBackoff(), retries),
        retry_on_error=[redis.ConnectionError] if retries else None,
        socket_timeout=5,
    )
    return AsyncTally(client, auto_op_id=auto_op_id)


async def test_async_with_retry_after_a_lost_reply_applies_once(lossy: LossyProxy, raw: redis.Redis, key) -> None:
    k = key("async.asset")
    before = raw.xlen("tally:log")
    async with avia(lossy, retries=0) as t:
        got = await async_with_retry(
            lambda op_id: t.asset_incr(k, {"BDP": "10.43"}, op_id=op_id), backoff=0.01
        )
    assert lossy.dropped == 1
    assert got == {"BDP": Decimal("10.43")}
    assert raw.hget(k, "BDP") == "10.43"
    assert raw.xlen("tally:log") == before + 1


async def test_async_redis_py_retry_with_the_automatic_op_id_applies_once(
    lossy: LossyProxy, raw: redis.Redis, key
) -> None:
    k = key("async.asset.2")
    async with avia(lossy, retries=1) as t:
        got = await t.asset_incr(k, {"BDP": "10.43"})
    assert lossy.dropped == 1
    assert got == {"BDP": Decimal("10.43")}
    assert raw.hget(k, "BDP") == "10.43"


async def test_async_without_an_op_id_a_retried_lost_reply_is_applied_twice(
    lossy: LossyProxy, raw: redis.Redis, key
) -> None:
    k = key("async.asset.3")
    async with avia(lossy, retries=1, auto_op_id=False) as t:
        got = await t.asset_incr(k, {"BDP": "10.43"})
    assert lossy.dropped == 1
    assert got == {"BDP": Decimal("20.86")}
