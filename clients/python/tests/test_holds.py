"""Holds (docs/holds.md) through the sync client against a real server: what a user sees of
ASSET.HOLD/SETTLE/VOID/HOLDS/AVAILABLE, COUPON.RESERVE/CONFIRM/CANCEL and
USAGE.RESERVE/COMMIT/CANCEL, their expiry, and the NOTFOUND reasons."""

from __future__ import annotations

import datetime as dt
import json
import time
from decimal import Decimal

import pytest
import redis

import tally_client as tc
from servers import wait_until
from tally_client import (
    Availability,
    ClaimResult,
    Hold,
    HoldResult,
    ReleaseResult,
    SettleResult,
    Tally,
    UsageCancelResult,
    UsageReservation,
    UsageResult,
    VoidResult,
)

#: Holds meant to expire during a test; the tests poll for it with a deadline.
SHORT_TTL_MS = 100


def last_event(raw: redis.Redis) -> dict:
    entries = raw.xrevrange("tally:log", count=1)
    return json.loads(entries[0][1]["event"])


def not_found(err: pytest.ExceptionInfo[tc.NotFound], hold_id: str, reason: str) -> None:
    e = err.value
    assert type(e) is tc.NotFound and e.code == "NOTFOUND"
    assert (e.hold_id, e.reason) == (hold_id, reason), e.message
    assert e.message.startswith(f"hold {hold_id} of this key ")


# ASSET.* ---------------------------------------------------------------------------------


def test_hold_takes_from_available_not_from_the_balance(tally: Tally, raw: redis.Redis, key) -> None:
    k = key("wallet")
    tally.asset_incr(k, {"gold": 100, "silver": "5"})
    before_ms = int(time.time() * 1000)
    got = tally.asset_hold(k, "gold", "30.5", ttl=60_000, meta="order 17")
    assert got == HoldResult(hold_id="1", available=Decimal("69.5"))
    assert tally.asset_get(k, "gold") == {"gold": Decimal(100)}  # the balance does not move
    assert tally.asset_available(k, "gold") == {"gold": Availability(Decimal(100), Decimal("30.5"), Decimal("69.5"))}
    assert tally.asset_available(k) == {
        "gold": Availability(Decimal(100), Decimal("30.5"), Decimal("69.5")),
        "silver": Availability(Decimal(5), Decimal(0), Decimal(5)),
    }
    [hold] = tally.asset_holds(k)
    assert (hold.hold_id, hold.field, hold.amount) == ("1", "gold", Decimal("30.5"))
    assert before_ms + 60_000 <= hold.expires_ms <= int(time.time() * 1000) + 60_000
    ev = last_event(raw)
    assert (ev["type"], ev["meta"], ev["hold"]["status"]) == ("asset.hold", "order 17", "open")

    # Held funds cannot be spent twice: not by ASSET.INCR, not by a second hold.
    with pytest.raises(tc.Insufficient, match="held"):
        tally.asset_incr(k, {"gold": "-70"})
    with pytest.raises(tc.Insufficient, match="available 69.5"):
        tally.asset_hold(k, "gold", 70, ttl=60_000)
    assert tally.asset_hold(k, "gold", 70, ttl=dt.timedelta(minutes=1), floor="-0.5") == HoldResult("2", Decimal("-0.5"))
    assert tally.asset_hold(k, "gold", 1000, ttl=60_000, nofloor=True).available == Decimal("-1000.5")
    assert [h.hold_id for h in tally.asset_holds(k)] == ["1", "2", "3"]
    assert tally.asset_get(k, "gold") == {"gold": Decimal(100)}


def test_partial_settle_spends_part_and_releases_the_rest(tally: Tally, raw: redis.Redis, key) -> None:
    k = key("wallet")
    tally.asset_incr(k, {"gold": 100})
    h = tally.asset_hold(k, "gold", 30, ttl=60_000)
    assert tally.asset_settle(k, h.hold_id, "25", meta="shipped") == SettleResult(settled=Decimal(25), balance=Decimal(75))
    assert tally.asset_available(k, "gold") == {"gold": Availability(Decimal(75), Decimal(0), Decimal(75))}
    assert tally.asset_holds(k) == []
    ev = last_event(raw)
    assert ev["type"] == "asset.settle" and ev["hold"]["settled"] == "25"
    assert [(c["field"], c["delta"], c["balance"]) for c in ev["changes"]] == [("gold", "-25", "75")]
    # Settling all of a hold (no amount), by an int id.
    h2 = tally.asset_hold(k, "gold", "0.75", ttl=60_000)
    assert tally.asset_settle(k, int(h2.hold_id)) == SettleResult(Decimal("0.75"), Decimal("74.25"))
    # More than held, or nothing, is refused and the hold stays open.
    h3 = tally.asset_hold(k, "gold", 1, ttl=60_000)
    with pytest.raises(tc.CommandError):
        tally.asset_settle(k, h3.hold_id, "1.5")
    with pytest.raises(tc.CommandError):
        tally.asset_settle(k, h3.hold_id, 0)
    assert [h.hold_id for h in tally.asset_holds(k)] == [h3.hold_id]


def test_void_gives_the_funds_back(tally: Tally, key) -> None:
    k = key("wallet")
    tally.asset_incr(k, {"gold": 100})
    h = tally.asset_hold(k, "gold", 40, ttl=60_000)
    assert tally.asset_void(k, h.hold_id) == VoidResult(released=Decimal(40), available=Decimal(100))
    assert tally.asset_available(k, "gold")["gold"].available == Decimal(100)
    assert tally.asset_incr(k, {"gold": -100}) == {"gold": Decimal(0)}


def test_an_expired_hold_gives_the_funds_back(tally: Tally, key) -> None:
    k = key("wallet")
    tally.asset_incr(k, {"gold": 100})
    h = tally.asset_hold(k, "gold", 60, ttl=SHORT_TTL_MS)
    assert h.available == Decimal(40)
    wait_until(lambda: tally.asset_holds(k) == [], "the hold to expire", timeout=10)
    assert tally.asset_available(k, "gold") == {"gold": Availability(Decimal(100), Decimal(0), Decimal(100))}
    with pytest.raises(tc.NotFound) as e:
        tally.asset_settle(k, h.hold_id)
    not_found(e, h.hold_id, "expired")
    assert tally.asset_get(k, "gold") == {"gold": Decimal(100)}


def test_notfound_says_why_the_hold_is_not_open(tally: Tally, key) -> None:
    k = key("wallet")
    tally.asset_incr(k, {"gold": 100})
    settled = tally.asset_hold(k, "gold", 1, ttl=60_000).hold_id
    tally.asset_settle(k, settled)
    voided = tally.asset_hold(k, "gold", 1, ttl=60_000).hold_id
    tally.asset_void(k, voided)
    expired = tally.asset_hold(k, "gold", 1, ttl=SHORT_TTL_MS).hold_id
    wait_until(lambda: tally.asset_holds(k) == [], "the hold to expire", timeout=10)
    for hold_id, reason in ((settled, "settled"), (voided, "voided"), (expired, "expired"), ("999", "unknown")):
        with pytest.raises(tc.NotFound) as e:
            tally.asset_settle(k, hold_id)
        not_found(e, hold_id, reason)
        with pytest.raises(tc.NotFound) as e2:
            tally.asset_void(k, hold_id)
        not_found(e2, hold_id, reason)
    # A NOTFOUND that is not about a hold has no reason.
    with pytest.raises(tc.NotFound) as other:
        tally.coupon_info(key("no-such-campaign"))
    assert other.value.reason is None and other.value.hold_id is None


def test_replayed_op_id_returns_the_same_hold(tally: Tally, raw: redis.Redis, key) -> None:
    k = key("wallet")
    tally.asset_incr(k, {"gold": 100})
    before = raw.xlen("tally:log")
    first = tally.asset_hold(k, "gold", 30, ttl=60_000, op_id="hold-order-17")
    again = tally.asset_hold(k, "gold", "30.0", ttl=60_000, op_id="hold-order-17")
    assert first == again == HoldResult("1", Decimal(70))
    assert [h.hold_id for h in tally.asset_holds(k)] == ["1"]
    assert raw.xlen("tally:log") == before + 1
    with pytest.raises(tc.Conflict):
        tally.asset_hold(k, "gold", 31, ttl=60_000, op_id="hold-order-17")
    settle = tally.asset_settle(k, "1", 10, op_id="settle-17")
    assert tally.asset_settle(k, "1", 10, op_id="settle-17") == settle == SettleResult(Decimal(10), Decimal(90))
    assert tally.asset_get(k, "gold") == {"gold": Decimal(90)}


def test_holdlimit(start_server) -> None:
    s = start_server(module_args=["max-holds-per-key", "2"])
    with Tally(s.client()) as t:
        t.asset_incr("w", {"gold": 10})
        t.asset_hold("w", "gold", 1, ttl=60_000)
        t.asset_hold("w", "gold", 1, ttl=60_000)
        with pytest.raises(tc.HoldLimit) as e:
            t.asset_hold("w", "gold", 1, ttl=60_000)
        assert type(e.value) is tc.HoldLimit and e.value.code == "HOLDLIMIT"
        assert "tally.max-holds-per-key is 2" in e.value.message
        t.asset_void("w", "1")
        assert t.asset_hold("w", "gold", 1, ttl=60_000).hold_id == "3"


def test_hold_arguments_are_checked_before_sending(tally: Tally, raw: redis.Redis, key) -> None:
    k = key("wallet")
    before = raw.xlen("tally:log")
    with pytest.raises(TypeError, match="float"):
        tally.asset_hold(k, "gold", 0.5, ttl=1000)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ttl"):
        tally.asset_hold(k, "gold", 1, ttl=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ttl"):
        tally.usage_reserve(k, 1, ttl=True)
    with pytest.raises(ValueError, match="whole milliseconds"):
        tally.coupon_reserve(k, "u", ttl=dt.timedelta(microseconds=1500))
    with pytest.raises(TypeError, match="hold_id"):
        tally.asset_void(k, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="issue"):
        tally.coupon_confirm(k, "u", "1")  # type: ignore[arg-type]
    assert raw.xlen("tally:log") == before
    with pytest.raises(tc.CommandError, match="TTL"):
        tally.asset_hold(k, "gold", 1, ttl=0)
    with pytest.raises(tc.CommandError, match="positive"):
        tally.asset_hold(k, "gold", 0, ttl=1000, nofloor=True)


# COUPON.* --------------------------------------------------------------------------------


def test_coupon_reserve_confirm_is_a_claim(tally: Tally, raw: redis.Redis, key) -> None:
    camp = key("spring-sale")
    tally.coupon_create(camp, 3)
    assert tally.coupon_reserve(camp, "alice", ttl=60_000) == ClaimResult(issue=1, remaining=2)
    info = tally.coupon_info(camp)
    assert (info.issued, info.reserved, info.remaining) == (1, 1, 2)
    assert raw.hget(camp, "c:alice") is None  # a reservation is no claim yet
    with pytest.raises(tc.Duplicate):  # it counts against per_user like one
        tally.coupon_claim(camp, "alice")
    assert tally.coupon_confirm(camp, "alice", 1, meta="paid") == ClaimResult(issue=1, remaining=2)
    assert raw.hget(camp, "c:alice") == "1"  # the claim row COUPON.CLAIM writes
    info = tally.coupon_info(camp)
    assert (info.issued, info.reserved, info.remaining) == (1, 0, 2)
    assert last_event(raw)["type"] == "coupon.confirm"
    assert tally.coupon_release(camp, "alice") == ReleaseResult(issue=1, remaining=3)  # a claim like any other
    with pytest.raises(tc.NotFound) as e:
        tally.coupon_confirm(camp, "alice", 1)
    not_found(e, "1", "settled")


def test_coupon_cancel_gives_the_stock_back(tally: Tally, key) -> None:
    camp = key("flash")
    tally.coupon_create(camp, 1)
    r = tally.coupon_reserve(camp, "bob", ttl=60_000, op_id="reserve-bob")
    assert r == ClaimResult(issue=1, remaining=0)
    assert tally.coupon_reserve(camp, "bob", ttl=60_000, op_id="reserve-bob") == r  # a replay
    with pytest.raises(tc.SoldOut):
        tally.coupon_reserve(camp, "carol", ttl=60_000)
    with pytest.raises(tc.NotFound, match="not this user's"):
        tally.coupon_cancel(camp, "carol", 1)
    assert tally.coupon_cancel(camp, "bob", 1) == ReleaseResult(issue=1, remaining=1)
    info = tally.coupon_info(camp)
    assert (info.issued, info.reserved, info.remaining, info.last_issue) == (0, 0, 1, 1)
    with pytest.raises(tc.NotFound) as e:
        tally.coupon_confirm(camp, "bob", 1)
    not_found(e, "1", "voided")
    assert tally.coupon_claim(camp, "carol") == ClaimResult(issue=2, remaining=0)  # number 1 stays retired


def test_an_expired_coupon_reservation_gives_the_stock_back(tally: Tally, key) -> None:
    camp = key("expiring")
    tally.coupon_create(camp, 1)
    tally.coupon_reserve(camp, "dave", ttl=SHORT_TTL_MS)
    wait_until(lambda: tally.coupon_info(camp).reserved == 0, "the reservation to expire", timeout=10)
    info = tally.coupon_info(camp)
    assert (info.issued, info.remaining) == (0, 1)
    with pytest.raises(tc.NotFound) as e:
        tally.coupon_confirm(camp, "dave", 1)
    not_found(e, "1", "expired")
    assert tally.coupon_claim(camp, "dave") == ClaimResult(issue=2, remaining=0)


# USAGE.* ---------------------------------------------------------------------------------


def test_usage_reserve_then_commit_part(tally: Tally, raw: redis.Redis, key) -> None:
    q = key("api:acme")
    tally.usage_limit(q, 10)
    r = tally.usage_reserve(q, 4, ttl=60_000)
    assert r == UsageReservation(reservation_id="1", used=Decimal(0), reserved=Decimal(4), remaining=Decimal(6))
    got = tally.usage_get(q)
    assert (got.used, got.reserved, got.remaining) == (Decimal(0), Decimal(4), Decimal(6))
    with pytest.raises(tc.LimitExceeded):  # the reservation counts against the limit
        tally.usage_consume(q, 7)
    assert tally.usage_commit(q, r.reservation_id, "2.5") == UsageResult(used=Decimal("2.5"), remaining=Decimal("7.5"))
    got = tally.usage_get(q)
    assert (got.used, got.reserved, got.remaining) == (Decimal("2.5"), Decimal(0), Decimal("7.5"))
    ev = last_event(raw)
    assert (ev["type"], ev["usage"]["amount"], ev["usage"]["used"]) == ("usage.commit", "2.5", "2.5")
    assert (ev["hold"]["amount"], ev["hold"]["settled"]) == ("4", "2.5")
    with pytest.raises(tc.NotFound) as e:
        tally.usage_commit(q, r.reservation_id)
    not_found(e, "1", "settled")
    # Committing nothing is allowed; the whole reservation by default.
    assert tally.usage_commit(q, tally.usage_reserve(q, 1, ttl=60_000).reservation_id, 0).used == Decimal("2.5")
    assert tally.usage_commit(q, tally.usage_reserve(q, "0.5", ttl=60_000).reservation_id).used == Decimal(3)
    with pytest.raises(tc.LimitExceeded):
        tally.usage_reserve(q, "7.000000000000000001", ttl=60_000)


def test_usage_cancel_and_expiry_release_the_quota(tally: Tally, key) -> None:
    q = key("api:acme")
    tally.usage_limit(q, 10)
    r = tally.usage_reserve(q, 4, ttl=60_000, op_id="reserve-1")
    assert tally.usage_reserve(q, 4, ttl=60_000, op_id="reserve-1") == r  # a replay
    assert tally.usage_cancel(q, r.reservation_id) == UsageCancelResult(released=Decimal(4), remaining=Decimal(10))
    with pytest.raises(tc.NotFound) as e:
        tally.usage_cancel(q, r.reservation_id)
    not_found(e, r.reservation_id, "voided")
    short = tally.usage_reserve(q, 9, ttl=SHORT_TTL_MS)
    wait_until(lambda: tally.usage_get(q).reserved == 0, "the reservation to expire", timeout=10)
    assert tally.usage_get(q).remaining == Decimal(10)
    with pytest.raises(tc.NotFound) as e2:
        tally.usage_commit(q, short.reservation_id)
    not_found(e2, short.reservation_id, "expired")
    assert tally.usage_get(q).used == Decimal(0)


def test_holds_over_resp3_and_decoded_replies(server, key) -> None:
    clients = {"resp3": server.client(protocol=3, decode_responses=False), "decoded": server.client(decode_responses=True)}
    for name, client in clients.items():
        with Tally(client) as t:
            k, camp, q = key(f"{name}.w"), key(f"{name}.c"), key(f"{name}.q")
            t.asset_incr(k, {"gold": 5})
            h = t.asset_hold(k, "gold", 2, ttl=60_000)
            [listed] = t.asset_holds(k)
            assert listed == Hold(h.hold_id, "gold", Decimal(2), listed.expires_ms)
            assert isinstance(listed.expires_ms, int)
            assert t.asset_available(k, "gold", "none") == {
                "gold": Availability(Decimal(5), Decimal(2), Decimal(3)),
                "none": Availability(Decimal(0), Decimal(0), Decimal(0)),
            }
            assert t.asset_void(k, h.hold_id).available == Decimal(5)
            t.coupon_create(camp, 2)
            assert t.coupon_reserve(camp, "u", ttl=60_000) == ClaimResult(1, 1)
            assert t.coupon_info(camp).reserved == 1
            t.usage_limit(q, 5)
            res = t.usage_reserve(q, 2, ttl=60_000)
            assert t.usage_get(q).reserved == Decimal(2)
            assert t.usage_cancel(q, res.reservation_id) == UsageCancelResult(Decimal(2), Decimal(5))
