"""Every method of the sync client against a real server, and the exactness of amounts."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
import redis
import redis.asyncio

from tally_client import (
    ClaimResult,
    Conflict,
    CouponInfo,
    ReleaseResult,
    Tally,
    TransferResult,
    UsageInfo,
    UsageResult,
    new_op_id,
)


def last_event(raw: redis.Redis) -> dict:
    entries = raw.xrevrange("tally:log", count=1)
    return json.loads(entries[0][1]["event"])


# ASSET.INCR ------------------------------------------------------------------------------


def test_asset_incr_two_fields_at_once_exactly(tally: Tally, raw: redis.Redis, key) -> None:
    k = key("user.asset.42")
    assert tally.asset_incr(k, {"BDP": 5200, "TRAINING": "3"}) == {
        "BDP": Decimal("5200"),
        "TRAINING": Decimal("3"),
    }
    got = tally.asset_incr(k, {"BDP": Decimal("10.43"), "TRAINING": "0.5"}, meta="chat bonus")
    assert got == {"BDP": Decimal("5210.43"), "TRAINING": Decimal("3.5")}
    assert list(got) == ["BDP", "TRAINING"]
    assert all(type(v) is Decimal for v in got.values())
    # Stored as plain exact decimal strings (HINCRBYFLOAT printed 5210.43000000000000016).
    assert raw.hgetall(k) == {"BDP": "5210.43", "TRAINING": "3.5"}
    ev = last_event(raw)
    assert ev["type"] == "asset.incr" and ev["meta"] == "chat bonus"
    assert [(c["field"], c["delta"], c["balance"]) for c in ev["changes"]] == [
        ("BDP", "10.43", "5210.43"),
        ("TRAINING", "0.5", "3.5"),
    ]


def test_point_one_plus_point_two_is_point_three(tally: Tally, raw: redis.Redis, key) -> None:
    k = key("acct")
    tally.asset_incr(k, {"x": "0.1"})
    assert tally.asset_incr(k, {"x": Decimal("0.2")}) == {"x": Decimal("0.3")}
    assert tally.asset_get(k, "x") == {"x": Decimal("0.3")}
    assert raw.hget(k, "x") == "0.3"


@pytest.mark.parametrize(
    "amount",
    [
        "12345678901234567890",
        "99999999999999999999.999999999999999999",
        "12345678901234567890.123456789012345678",
        Decimal("-98765432109876543210.000000000000000001"),
        98765432109876543210,
    ],
)
def test_twenty_integer_digits_round_trip_exactly(tally: Tally, raw: redis.Redis, key, amount) -> None:
    k = key("big")
    got = tally.asset_incr(k, {"f": amount}, nofloor=True)
    assert got == {"f": Decimal(amount)}
    assert str(got["f"]) == str(Decimal(amount))  # same digits, not merely equal
    assert tally.asset_get(k, "f")["f"] == Decimal(amount)
    assert Decimal(raw.hget(k, "f")) == Decimal(amount)


def test_amounts_are_sent_as_plain_digits(tally: Tally, raw: redis.Redis, key) -> None:
    k = key("fmt")
    # Decimal('1E+3') would be '1E+3' through str(); the server refuses exponents.
    assert tally.asset_incr(k, {"a": Decimal("1E+3"), "b": Decimal("100.50"), "c": " 7 "}) == {
        "a": Decimal(1000),
        "b": Decimal("100.5"),
        "c": Decimal(7),
    }
    assert raw.hgetall(k) == {"a": "1000", "b": "100.5", "c": "7"}


def test_float_and_bool_are_refused_and_nothing_is_sent(tally: Tally, raw: redis.Redis, key) -> None:
    k = key("float")
    before = raw.xlen("tally:log")
    with pytest.raises(TypeError, match="float"):
        tally.asset_incr(k, {"x": 10.43})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="float"):
        tally.asset_incr(k, {"x": 1}, floor=-1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        tally.asset_incr(k, {"x": 1}, ceil=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        tally.asset_transfer(k, key("other"), "x", 0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        tally.usage_limit(k, 10.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        tally.usage_consume(k, 0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bool"):
        tally.asset_incr(k, {"x": True})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="finite"):
        tally.asset_incr(k, {"x": Decimal("NaN")})
    with pytest.raises(ValueError, match="finite"):
        tally.asset_incr(k, {"x": "inf"})
    with pytest.raises(ValueError, match="not a decimal"):
        tally.asset_incr(k, {"x": "ten"})
    assert raw.exists(k) == 0
    assert raw.xlen("tally:log") == before


def test_floor_nofloor_ceil(tally: Tally, raw: redis.Redis, key) -> None:
    from tally_client import Insufficient, LimitExceeded

    k = key("bounds")
    with pytest.raises(Insufficient):
        tally.asset_incr(k, {"x": -1})
    assert tally.asset_incr(k, {"x": -100}, floor=-100) == {"x": Decimal(-100)}
    with pytest.raises(Insufficient):
        tally.asset_incr(k, {"x": "-0.000000000000000001"}, floor="-100")
    assert tally.asset_incr(k, {"x": -1000}, nofloor=True) == {"x": Decimal(-1100)}
    # A deposit into an overdrawn account is always accepted.
    assert tally.asset_incr(k, {"x": 1}) == {"x": Decimal(-1099)}
    with pytest.raises(LimitExceeded):
        tally.asset_incr(k, {"x": 2000}, ceil=900, nofloor=True)
    assert tally.asset_incr(k, {"x": 1999}, ceil=900) == {"x": Decimal(900)}
    assert raw.hget(k, "x") == "900"


# ASSET.GET / ASSET.TRANSFER ---------------------------------------------------------------


def test_asset_get(tally: Tally, raw: redis.Redis, key) -> None:
    k = key("get")
    assert tally.asset_get(k) == {}
    assert tally.asset_get(k, "missing") == {"missing": Decimal(0)}
    raw.hset(k, mapping={"b": "2.50", "a": "1"})  # written by plain HSET
    raw.hset(k, b"\xff", "3")  # a field name that is not UTF-8
    assert tally.asset_get(k, "b", "zz", "a") == {"b": Decimal("2.5"), "zz": Decimal(0), "a": Decimal(1)}
    everything = tally.asset_get(k)
    assert list(everything) == ["a", "b", "\udcff"]  # sorted by bytes, names byte-exact
    assert everything["\udcff"] == Decimal(3)
    assert "\udcff".encode("utf-8", "surrogateescape") == b"\xff"


def test_asset_transfer(tally: Tally, raw: redis.Redis, key) -> None:
    a, b = key("{u}.wallet"), key("{u}.savings")
    tally.asset_incr(a, {"gold": "10.5"})
    got = tally.asset_transfer(a, b, "gold", "0.25", meta="save")
    assert got == TransferResult(from_balance=Decimal("10.25"), to_balance=Decimal("0.25"))
    assert raw.hget(a, "gold") == "10.25" and raw.hget(b, "gold") == "0.25"
    ev = last_event(raw)
    assert ev["type"] == "asset.transfer" and [x["key"] for x in ev["keys"]] == [a, b]


# COUPON.* -------------------------------------------------------------------------------


def test_coupon_create_claim_release_info(tally: Tally, raw: redis.Redis, key) -> None:
    camp = key("spring-sale")
    tally.coupon_create(camp, 3, per_user=2, meta="spring")
    assert tally.coupon_info(camp) == CouponInfo(
        total=3, issued=0, remaining=3, per_user=2, start_ms=None, end_ms=None, last_issue=0
    )
    assert tally.coupon_claim(camp, "alice") == ClaimResult(issue=1, remaining=2)
    assert tally.coupon_claim(camp, "bob") == ClaimResult(issue=2, remaining=1)
    assert tally.coupon_claim(camp, "alice") == ClaimResult(issue=3, remaining=0)
    assert tally.coupon_release(camp, "alice", meta="payment failed") == ReleaseResult(issue=3, remaining=1)
    # The released number stays retired.
    assert tally.coupon_claim(camp, "carol") == ClaimResult(issue=4, remaining=0)
    info = tally.coupon_info(camp)
    assert (info.issued, info.remaining, info.last_issue) == (3, 0, 4)
    assert raw.hget(camp, "c:alice") == "1"


def test_coupon_window_from_datetimes(tally: Tally, raw: redis.Redis, key) -> None:
    camp = key("window")
    start = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    end = dt.datetime(2030, 1, 2, 9, 0, 0, 123000, tzinfo=dt.timezone(dt.timedelta(hours=9)))
    tally.coupon_create(camp, 5, start=start, end=end)
    info = tally.coupon_info(camp)
    assert info.start_ms == 1893456000000
    assert info.end_ms == 1893456000000 + 86_400_000 + 123  # Jan 2, 09:00 at UTC+9 is 00:00 UTC
    tally.coupon_create(key("ms"), 5, start=1, end=2**41)
    assert tally.coupon_info(key("ms")).end_ms == 2**41
    with pytest.raises(ValueError, match="aware"):
        tally.coupon_create(key("naive"), 5, start=dt.datetime(2030, 1, 1))
    assert raw.exists(key("naive")) == 0


# USAGE.* --------------------------------------------------------------------------------


def test_usage_limit_consume_get(tally: Tally, key) -> None:
    def now(fmt: str) -> str:
        return dt.datetime.now(dt.timezone.utc).strftime(fmt)

    k = key("api:acme")
    tally.usage_limit(k, 10, meta="plan: starter")
    assert tally.usage_get(k) == UsageInfo(
        used=Decimal(0), limit=Decimal(10), remaining=Decimal(10), period="none", period_id="all"
    )
    assert tally.usage_consume(k, "0.25") == UsageResult(used=Decimal("0.25"), remaining=Decimal("9.75"))
    assert tally.usage_consume(k, Decimal("9.75")) == UsageResult(used=Decimal(10), remaining=Decimal(0))
    months = {now("%Y-%m")}
    tally.usage_limit(k, "20.5", period="month")  # keeps what was used this period
    info = tally.usage_get(k)
    months.add(now("%Y-%m"))
    assert (info.used, info.limit, info.remaining, info.period) == (
        Decimal(10),
        Decimal("20.5"),
        Decimal("10.5"),
        "month",
    )
    assert info.period_id in months
    day = key("daily")
    days = {now("%Y-%m-%d")}
    tally.usage_limit(day, 3, period="day")
    got = tally.usage_get(day)
    days.add(now("%Y-%m-%d"))
    assert got.period == "day" and got.period_id in days


# Idempotency ------------------------------------------------------------------------------


def test_replayed_op_id_returns_the_first_reply_and_applies_once(tally: Tally, raw: redis.Redis, key) -> None:
    k = key("replay")
    op = new_op_id()
    before = raw.xlen("tally:log")
    first = tally.asset_incr(k, {"BDP": "10.43", "T": 1}, op_id=op, meta="grant-7781")
    again = tally.asset_incr(k, {"BDP": "10.430", "T": "1"}, op_id=op, meta="grant-7781")
    assert first == again == {"BDP": Decimal("10.43"), "T": Decimal(1)}
    assert raw.hgetall(k) == {"BDP": "10.43", "T": "1"}
    assert raw.xlen("tally:log") == before + 1
    assert last_event(raw)["op"] == op

    camp = key("c")
    tally.coupon_create(camp, 5, op_id=op)
    tally.coupon_create(camp, 5, op_id=op)  # a replay, not "the campaign already exists"
    claim = tally.coupon_claim(camp, "u1", op_id="claim-1")
    assert tally.coupon_claim(camp, "u1", op_id="claim-1") == claim == ClaimResult(1, 4)
    u = key("u")
    tally.usage_limit(u, 5, op_id="limit-1")
    tally.usage_limit(u, 5, op_id="limit-1")
    consumed = tally.usage_consume(u, 2, op_id="use-1")
    assert tally.usage_consume(u, 2, op_id="use-1") == consumed == UsageResult(Decimal(2), Decimal(3))
    assert tally.usage_get(u).used == Decimal(2)
    t = tally.asset_transfer(k, key("to"), "T", 1, op_id="t-1")
    assert tally.asset_transfer(k, key("to"), "T", 1, op_id="t-1") == t == TransferResult(Decimal(0), Decimal(1))
    assert tally.coupon_release(camp, "u1", op_id="r-1") == tally.coupon_release(camp, "u1", op_id="r-1")


def test_same_op_id_with_a_different_request_is_a_conflict(tally: Tally, raw: redis.Redis, key) -> None:
    k = key("conflict")
    tally.asset_incr(k, {"BDP": "10.43"}, op_id="grant-1")
    before = raw.xlen("tally:log")
    with pytest.raises(Conflict) as e:
        tally.asset_incr(k, {"BDP": "10.44"}, op_id="grant-1")
    assert e.value.code == "CONFLICT"
    with pytest.raises(Conflict):
        tally.asset_incr(k, {"BDP": "10.43"}, op_id="grant-1", meta="other meta")
    assert raw.hget(k, "BDP") == "10.43"
    assert raw.xlen("tally:log") == before


def test_auto_op_id(server, raw: redis.Redis, key) -> None:
    with Tally(server.client()) as t:
        t.asset_incr(key("auto"), {"x": 1})
        op = last_event(raw)["op"]
        assert isinstance(op, str) and len(op) == 36
        t.asset_incr(key("auto"), {"x": 1})
        assert last_event(raw)["op"] != op  # one per call
    with Tally(server.client(), auto_op_id=False) as t:
        t.asset_incr(key("manual"), {"x": 1})
        assert last_event(raw)["op"] is None
        t.asset_incr(key("manual"), {"x": 1}, op_id="mine")
        assert last_event(raw)["op"] == "mine"


def test_decode_responses_client(server, key) -> None:
    with Tally(server.client(decode_responses=True)) as t:
        assert t.asset_incr(key("s"), {"a": "1.5"}) == {"a": Decimal("1.5")}
        assert t.asset_get(key("s")) == {"a": Decimal("1.5")}
        t.coupon_create(key("c"), 1)
        assert t.coupon_claim(key("c"), "u") == ClaimResult(1, 0)
        t.usage_limit(key("q"), 1)
        assert t.usage_get(key("q")).limit == Decimal(1)


def test_resp3_client(server, key) -> None:
    with Tally(server.client(protocol=3, decode_responses=False)) as t:
        assert t.asset_incr(key("r3"), {"a": "0.1", "b": 2}) == {"a": Decimal("0.1"), "b": Decimal(2)}
        assert t.asset_get(key("r3")) == {"a": Decimal("0.1"), "b": Decimal(2)}
        assert t.asset_transfer(key("r3"), key("r3b"), "b", 1) == TransferResult(Decimal(1), Decimal(1))
        t.coupon_create(key("c"), 2, per_user=2)
        assert t.coupon_claim(key("c"), "u") == ClaimResult(1, 1)
        assert t.coupon_release(key("c"), "u") == ReleaseResult(1, 2)
        assert t.coupon_info(key("c")).last_issue == 1
        t.usage_limit(key("q"), 5)
        assert t.usage_consume(key("q"), 1) == UsageResult(Decimal(1), Decimal(4))
        assert t.usage_get(key("q")).remaining == Decimal(4)
        t.usage_consume(key("q"), 1, op_id="x")
        with pytest.raises(Conflict):  # errors arrive the same way in RESP3
            t.usage_consume(key("q"), 2, op_id="x")


def test_from_url_and_type_guard(server, key) -> None:
    t = Tally.from_url(server.url)
    assert isinstance(t.redis, redis.Redis)
    assert t.asset_incr(key("u"), {"x": 2}) == {"x": Decimal(2)}
    t.close()
    with pytest.raises(TypeError, match="AsyncTally"):
        Tally(redis.asyncio.Redis(port=server.port))  # type: ignore[arg-type]
