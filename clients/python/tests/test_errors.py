"""Every error code provoked for real, and raised as its own class."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from redis.exceptions import NoPermissionError, ResponseError

import tally_client as tc
from tally_client import Tally
from tally_client.errors import from_reply, translate


def check(err: pytest.ExceptionInfo[tc.TallyError], cls: type[tc.TallyError], code: str, words: str) -> None:
    e = err.value
    assert type(e) is cls
    assert isinstance(e, tc.TallyError) and isinstance(e, ResponseError)
    assert e.code == code
    assert words in e.message, e.message
    assert str(e) == f"{code} {e.message}"
    assert not e.message.startswith(code)


def test_insufficient(tally: Tally, key) -> None:
    with pytest.raises(tc.Insufficient) as e:
        tally.asset_incr(key("a"), {"BDP": "-0.01"})
    check(e, tc.Insufficient, "INSUFFICIENT", "cannot cover")
    with pytest.raises(tc.Insufficient):
        tally.asset_transfer(key("{x}a"), key("{x}b"), "BDP", 1)


def test_soldout_duplicate_notfound_closed(tally: Tally, key) -> None:
    camp = key("camp")
    tally.coupon_create(camp, 1)
    tally.coupon_claim(camp, "alice")
    with pytest.raises(tc.Duplicate) as dup:
        tally.coupon_claim(camp, "alice")
    check(dup, tc.Duplicate, "DUPLICATE", "already holds")
    with pytest.raises(tc.SoldOut) as sold:
        tally.coupon_claim(camp, "bob")
    check(sold, tc.SoldOut, "SOLDOUT", "no coupons remain")
    with pytest.raises(tc.NotFound) as nf:
        tally.coupon_claim(key("nope"), "bob")
    check(nf, tc.NotFound, "NOTFOUND", "no such campaign")
    with pytest.raises(tc.NotFound) as nf2:
        tally.coupon_release(camp, "bob")
    check(nf2, tc.NotFound, "NOTFOUND", "holds no claim")
    with pytest.raises(tc.NotFound):
        tally.coupon_info(key("nope"))
    with pytest.raises(tc.NotFound):
        tally.usage_consume(key("nolimit"), 1)
    with pytest.raises(tc.NotFound):
        tally.usage_get(key("nolimit"))

    later = key("later")
    tally.coupon_create(later, 5, start=int(time.time() * 1000) + 3_600_000)
    with pytest.raises(tc.Closed) as closed:
        tally.coupon_claim(later, "carol")
    check(closed, tc.Closed, "CLOSED", "not started")
    over = key("over")
    tally.coupon_create(over, 5, start=1, end=2)
    with pytest.raises(tc.Closed):
        tally.coupon_claim(over, "carol")


def test_limit(tally: Tally, raw: redis.Redis, key) -> None:
    q = key("quota")
    tally.usage_limit(q, 10)
    tally.usage_consume(q, 7)
    with pytest.raises(tc.LimitExceeded) as e:
        tally.usage_consume(q, 4)
    check(e, tc.LimitExceeded, "LIMIT", "would exceed the limit")
    assert tally.usage_get(q).used == 7
    with pytest.raises(tc.LimitExceeded):
        tally.asset_incr(key("a"), {"x": 11}, ceil=10)


def test_conflict(tally: Tally, key) -> None:
    tally.coupon_create(key("c"), 5)
    tally.coupon_claim(key("c"), "u1", op_id="claim-1")
    with pytest.raises(tc.Conflict) as e:
        tally.coupon_claim(key("c"), "u2", op_id="claim-1")
    check(e, tc.Conflict, "CONFLICT", "different arguments")


def test_wrongtype(tally: Tally, raw: redis.Redis, key) -> None:
    raw.set(key("str"), "x")
    with pytest.raises(tc.WrongType) as e:
        tally.asset_incr(key("str"), {"x": 1})  # Redis' own WRONGTYPE
    check(e, tc.WrongType, "WRONGTYPE", "wrong kind of value")
    tally.coupon_create(key("camp"), 5)
    with pytest.raises(tc.WrongType) as e2:
        tally.asset_incr(key("camp"), {"issued": -2})  # tally's: a campaign is not an asset hash
    check(e2, tc.WrongType, "WRONGTYPE", "coupon campaign")
    with pytest.raises(tc.WrongType):
        tally.usage_get(key("camp"))
    raw.hset(key("bad"), "f", "not a number")
    with pytest.raises(tc.WrongType):
        tally.asset_get(key("bad"))


def test_err_is_command_error(tally: Tally, key) -> None:
    tally.coupon_create(key("c"), 5)
    with pytest.raises(tc.CommandError) as e:
        tally.coupon_create(key("c"), 5)
    check(e, tc.CommandError, "ERR", "already exists")
    with pytest.raises(tc.CommandError) as e2:
        tally.asset_incr(key("a"), {"x": "0.0000000000000000001"})  # 19 fractional digits
    assert e2.value.code == "ERR"
    with pytest.raises(tc.CommandError):
        tally.asset_incr(key("a"), {"x": 1}, floor=0, nofloor=True)
    with pytest.raises(tc.CommandError, match="at most 20 integer digits"):
        tally.asset_incr(key("a"), {"x": "123456789012345678901"})
    with pytest.raises(tc.CommandError):
        tally.usage_consume(key("q"), 0)
    with pytest.raises(tc.CommandError):
        tally.asset_incr(key("a"), {"x": 1}, op_id="")  # ID must be 1-128 bytes


def test_backlog(start_server) -> None:
    s = start_server(module_args=["max-backlog", "2"])
    with Tally(s.client()) as t:
        t.asset_incr("a", {"x": 1})
        t.asset_incr("a", {"x": 1})
        with pytest.raises(tc.Backlog) as e:
            t.asset_incr("a", {"x": 1})
        check(e, tc.Backlog, "BACKLOG", "unshipped entries")
        with pytest.raises(tc.Backlog):
            t.coupon_create("c", 1)
        assert t.asset_get("a", "x") == {"x": 2}  # reads still work
    with s.client() as raw:
        assert raw.xlen("tally:log") == 2


def test_opids(start_server) -> None:
    s = start_server(module_args=["max-op-ids", "1"])
    with Tally(s.client(), auto_op_id=False) as t:
        t.asset_incr("a", {"x": 1}, op_id="first")
        with pytest.raises(tc.OpIds) as e:
            t.asset_incr("a", {"x": 1}, op_id="second")
        check(e, tc.OpIds, "OPIDS", "tally.max-op-ids")
        # A replay of a remembered op-id and a command without ID still run.
        assert t.asset_incr("a", {"x": 1}, op_id="first") == {"x": 1}
        assert t.asset_incr("a", {"x": 1}) == {"x": 2}


def test_noperm(server, tally: Tally, raw: redis.Redis, key) -> None:
    user = f"ro-{uuid.uuid4().hex[:8]}"
    raw.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "-@write")
    try:
        with Tally(server.client(username=user, password="pw")) as ro:
            tally.asset_incr(key("a"), {"x": 5})
            with pytest.raises(tc.NoPerm) as e:
                ro.asset_incr(key("a"), {"x": 1})
            assert type(e.value) is tc.NoPerm and e.value.code == "NOPERM"
            assert isinstance(e.value.__cause__, NoPermissionError)
            with pytest.raises(tc.NoPerm):
                ro.coupon_create(key("c"), 1)
            assert ro.asset_get(key("a")) == {"x": 5}  # reads are allowed
    finally:
        raw.execute_command("ACL", "DELUSER", user)


def test_other_redis_errors_pass_through(tally: Tally, raw: redis.Redis, key) -> None:
    raw.config_set("maxmemory", "1")
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            tally.asset_incr(key("a"), {"x": 1})  # deny-oom: Redis refuses before the module runs
    finally:
        raw.config_set("maxmemory", "0")


def test_errors_pickle() -> None:
    import pickle

    e = pickle.loads(pickle.dumps(tc.SoldOut("no coupons remain")))
    assert type(e) is tc.SoldOut and e.code == "SOLDOUT" and e.message == "no coupons remain"


def test_translate_shapes() -> None:
    # What each redis-py version hands over for the same replies.
    assert type(translate(ResponseError("SOLDOUT no coupons remain"))) is tc.SoldOut
    old_err = translate(ResponseError("the campaign already exists"))  # redis-py 5: ERR stripped
    assert type(old_err) is tc.CommandError and old_err.message == "the campaign already exists"
    new_err = ResponseError("FLOOR is above CEIL")
    new_err.status_code = "ERR"  # redis-py >= 6 keeps the stripped code
    assert type(translate(new_err)) is tc.CommandError
    busy = ResponseError("BUSY Redis is busy running a script")
    busy.status_code = "BUSY"
    assert translate(busy) is busy
    moved = redis.exceptions.ReadOnlyError("You can't write against a read only replica.")
    assert translate(moved) is moved
    assert type(from_reply("OPIDS too many op-ids")) is tc.OpIds
    odd = from_reply("NEWCODE something")
    assert type(odd) is tc.TallyError and odd.code == "NEWCODE"


def test_hold_errors_from_replies() -> None:
    limit = from_reply("HOLDLIMIT this key has 1000 open holds (tally.max-holds-per-key is 1000)")
    assert type(limit) is tc.HoldLimit and limit.code == "HOLDLIMIT"
    assert type(translate(ResponseError("HOLDLIMIT this key has 2 open holds"))) is tc.HoldLimit
    for why, reason in (("is unknown", "unknown"), ("was settled", "settled"), ("was voided", "voided"), ("expired", "expired")):
        e = from_reply(f"NOTFOUND hold 17 of this key {why}")
        assert isinstance(e, tc.NotFound) and (e.hold_id, e.reason) == ("17", reason)
    other = from_reply("NOTFOUND no such campaign")
    assert isinstance(other, tc.NotFound) and (other.hold_id, other.reason) == (None, None)
    import pickle

    again = pickle.loads(pickle.dumps(from_reply("NOTFOUND hold 3 of this key expired")))
    assert type(again) is tc.NotFound and again.reason == "expired" and again.hold_id == "3"
