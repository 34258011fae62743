"""Through redis-py's RedisCluster (sync and asyncio) on three primaries, slots split in three."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import redis
import redis.asyncio
from redis.exceptions import RedisClusterException, ResponseError

import tally_client as tc
from servers import Cluster, wait_until
from tally_client import AsyncTally, ClaimResult, HoldResult, SettleResult, Tally, TransferResult


def keys_on_every_node(cluster: Cluster, stem: str) -> list[str]:
    """One key per primary."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < len(cluster.nodes):
        k = f"{stem}:{i}"
        found.setdefault(cluster.nodes.index(cluster.node_of(k)), k)
        i += 1
    return [found[n] for n in sorted(found)]


def events_on(cluster: Cluster, key: str) -> list[dict]:
    """The events of ``key`` in the stream of its slot, read from the node that owns it."""
    with cluster.node_of(key).client() as c:
        out = []
        for stream in c.keys("tally:log:*"):
            for _id, fields in c.xrange(stream):
                ev = json.loads(fields["event"])
                if any(k["key"] == key for k in ev["keys"]):
                    out.append(ev)
        return out


def test_commands_through_redis_cluster(cluster: Cluster, key) -> None:
    with Tally(redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)) as t:
        assert isinstance(t.redis, redis.RedisCluster)
        users = keys_on_every_node(cluster, key("user.asset"))
        for i, k in enumerate(users):
            assert t.asset_incr(k, {"BDP": "5200", "TRAINING": i}) == {"BDP": Decimal(5200), "TRAINING": Decimal(i)}
            assert t.asset_incr(k, {"BDP": "10.43"}, op_id="grant-1") == {"BDP": Decimal("5210.43")}
            assert t.asset_incr(k, {"BDP": "10.43"}, op_id="grant-1") == {"BDP": Decimal("5210.43")}  # replay
            assert t.asset_get(k, "BDP") == {"BDP": Decimal("5210.43")}
            # The key really lives on its node, with its events in its slot's stream.
            with cluster.node_of(k).client() as node:
                assert node.hget(k, "BDP") == "5210.43"
            assert [e["op"] for e in events_on(cluster, k)][-1] == "grant-1"
            assert len(events_on(cluster, k)) == 2

        wallet, savings = key("{user42}.wallet"), key("{user42}.savings")
        t.asset_incr(wallet, {"gold": "10"})
        assert t.asset_transfer(wallet, savings, "gold", "2.5", op_id="t-1") == TransferResult(Decimal("7.5"), Decimal("2.5"))
        assert t.asset_transfer(wallet, savings, "gold", "2.5", op_id="t-1") == TransferResult(Decimal("7.5"), Decimal("2.5"))
        # Keys in two slots cannot be moved between in one command; nothing changes.
        with pytest.raises((RedisClusterException, ResponseError)):
            t.asset_transfer(users[0], users[1], "BDP", "1")
        assert t.asset_get(users[0], "BDP") == {"BDP": Decimal("5210.43")}

        camps = keys_on_every_node(cluster, key("camp"))
        for c in camps:
            t.coupon_create(c, 2)
            assert t.coupon_claim(c, "alice") == ClaimResult(1, 1)
            assert t.coupon_info(c).issued == 1
            assert t.coupon_release(c, "alice").issue == 1
        quotas = keys_on_every_node(cluster, key("quota"))
        for q in quotas:
            t.usage_limit(q, 3, period="month")
            t.usage_consume(q, 2)
            with pytest.raises(tc.LimitExceeded):
                t.usage_consume(q, 2)
            assert t.usage_get(q).used == Decimal(2)


def test_holds_through_redis_cluster(cluster: Cluster, key) -> None:
    with Tally(redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)) as t:
        for k in keys_on_every_node(cluster, key("wallet")):
            t.asset_incr(k, {"gold": 100})
            assert t.asset_hold(k, "gold", 30, ttl=60_000, op_id="h-1") == HoldResult("1", Decimal(70))
            assert t.asset_hold(k, "gold", 30, ttl=60_000, op_id="h-1") == HoldResult("1", Decimal(70))
            assert t.asset_settle(k, "1", 10) == SettleResult(Decimal(10), Decimal(90))
            t.asset_hold(k, "gold", 90, ttl=100)
            wait_until(lambda k=k: t.asset_holds(k) == [], f"the hold on {k} to expire", timeout=10)
            assert t.asset_available(k, "gold")["gold"].available == Decimal(90)
            # Reads leave a due hold out at once; the primary's timer then expires it, with
            # one asset.expire event in the stream of the key's slot.
            expected = ["asset.settle", "asset.hold", "asset.expire"]
            wait_until(
                lambda k=k: [e["type"] for e in events_on(cluster, k)][-3:] == expected,
                f"the asset.expire event of {k}",
                timeout=10,
            )
        for c in keys_on_every_node(cluster, key("camp")):
            t.coupon_create(c, 1)
            assert t.coupon_reserve(c, "alice", ttl=60_000) == ClaimResult(1, 0)
            assert t.coupon_confirm(c, "alice", 1) == ClaimResult(1, 0)
            assert t.coupon_info(c).reserved == 0
        for q in keys_on_every_node(cluster, key("quota")):
            t.usage_limit(q, 5)
            r = t.usage_reserve(q, 3, ttl=60_000)
            assert t.usage_commit(q, r.reservation_id, 1).remaining == Decimal(4)


def test_from_url_detects_a_cluster(cluster: Cluster, key) -> None:
    t = Tally.from_url(cluster.url)
    assert isinstance(t.redis, redis.RedisCluster)
    for k in keys_on_every_node(cluster, key("auto")):
        assert t.asset_incr(k, {"x": "0.1"}) == {"x": Decimal("0.1")}
        assert t.asset_incr(k, {"x": "0.2"}) == {"x": Decimal("0.3")}
    t.close()


async def test_async_commands_through_redis_cluster(cluster: Cluster, key) -> None:
    t = AsyncTally(redis.asyncio.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port))
    try:
        for k in keys_on_every_node(cluster, key("async.asset")):
            assert await t.asset_incr(k, {"BDP": "5200"}) == {"BDP": Decimal(5200)}
            assert await t.asset_incr(k, {"BDP": "10.43"}) == {"BDP": Decimal("5210.43")}
            with cluster.node_of(k).client() as node:
                assert node.hget(k, "BDP") == "5210.43"
        a, b = key("{acct9}.a"), key("{acct9}.b")
        await t.asset_incr(a, {"g": 1})
        assert await t.asset_transfer(a, b, "g", 1) == TransferResult(Decimal(0), Decimal(1))
        camp = key("async.camp")
        await t.coupon_create(camp, 1)
        assert await t.coupon_claim(camp, "u") == ClaimResult(1, 0)
        with pytest.raises(tc.SoldOut):
            await t.coupon_claim(camp, "v")
        assert (await t.coupon_info(camp)).remaining == 0
        q = key("async.q")
        await t.usage_limit(q, 1)
        assert (await t.usage_consume(q, 1)).remaining == 0
        assert (await t.usage_get(q)).used == 1
    finally:
        await t.aclose()
    t2 = await AsyncTally.from_url(cluster.url)
    assert isinstance(t2.redis, redis.asyncio.RedisCluster)
    await t2.aclose()
