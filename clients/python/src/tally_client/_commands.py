"""Argument building and reply parsing shared by the sync and asyncio clients.

Each builder returns a :class:`Call`: the exact command arguments and the function that
turns the raw reply into the typed result. Nothing here does I/O.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

from .types import (
    Amount,
    Availability,
    ClaimResult,
    CouponInfo,
    Hold,
    HoldResult,
    Period,
    ReleaseResult,
    SettleResult,
    TransferResult,
    UsageCancelResult,
    UsageInfo,
    UsageReservation,
    UsageResult,
    VoidResult,
)

T = TypeVar("T")

Arg = str | bytes | int

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_MS = _dt.timedelta(milliseconds=1)


def new_op_id() -> str:
    """A fresh op-id (a random UUID4 string) for one logical change.

    Mint it once, before the first attempt, and send it with every retry of that change:
    tally answers a repeated op-id with the first reply and applies nothing again.
    """
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    args: tuple[Arg, ...]
    parse: Callable[[Any], T]


def amount_arg(value: Amount, what: str = "amount") -> str:
    """The wire text of an amount: digits, never a float and never an exponent."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be Decimal, int or str, not bool")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        raise TypeError(
            f"{what} must be Decimal, int or str, not float ({value!r} is not exact); "
            f"use Decimal('...') or a string"
        )
    if isinstance(value, str):
        try:
            parsed = Decimal(value.strip())
        except ArithmeticError:
            raise ValueError(f"{what} {value!r} is not a decimal number") from None
        value = parsed
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{what} must be finite, not {value}")
        # 'f' never uses an exponent: Decimal('1E+3') -> '1000', Decimal('1.50') -> '1.50'.
        return format(value, "f")
    raise TypeError(f"{what} must be Decimal, int or str, not {type(value).__name__}")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, str):
        return value
    return str(value)


def dec(value: Any) -> Decimal:
    """A reply's decimal string (or integer) as an exact Decimal."""
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    return Decimal(_text(value))


def _int(value: Any) -> int:
    if isinstance(value, int):
        return value
    return int(_text(value))


def _pairs(reply: Any) -> list[tuple[str, Any]]:
    """A flat ``[name, value, ...]`` reply (or a RESP3 map) as ordered pairs."""
    if isinstance(reply, Mapping):
        return [(_text(k), v) for k, v in reply.items()]
    items = list(reply)
    return [(_text(items[i]), items[i + 1]) for i in range(0, len(items), 2)]


def _ok(reply: Any) -> None:
    if reply is True or _text(reply) == "OK":
        return None
    raise ValueError(f"unexpected reply {reply!r}")


def _options(op_id: str | None, meta: str | None) -> list[Arg]:
    out: list[Arg] = []
    if op_id is not None:
        out += ["ID", op_id]
    if meta is not None:
        out += ["META", meta]
    return out


def _floor(floor: Amount | None, nofloor: bool) -> list[Arg]:
    """``FLOOR n`` / ``NOFLOOR`` of ASSET.INCR and ASSET.HOLD (both given: the server refuses)."""
    out: list[Arg] = []
    if floor is not None:
        out += ["FLOOR", amount_arg(floor, "floor")]
    if nofloor:
        out.append("NOFLOOR")
    return out


def _decimal_pair(reply: Any) -> tuple[Decimal, Decimal]:
    a, b = reply
    return dec(a), dec(b)


def ttl_ms(value: int | _dt.timedelta) -> int:
    """A hold's ``TTL``: milliseconds, or a ``timedelta`` (whole milliseconds)."""
    if isinstance(value, bool):
        raise TypeError("ttl must be milliseconds (int) or a timedelta")
    if isinstance(value, int):
        return value
    if isinstance(value, _dt.timedelta):
        ms, rest = divmod(value, _MS)
        if rest:
            raise ValueError(f"ttl must be whole milliseconds, not {value}")
        return int(ms)
    raise TypeError("ttl must be milliseconds (int) or a timedelta")


def hold_id_arg(value: str | int, what: str = "hold_id") -> str:
    """A hold id as sent: the decimal text ``ASSET.HOLD`` / ``USAGE.RESERVE`` replied."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"{what} must be str or int")
    return str(value)


def unix_ms(value: int | _dt.datetime, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be unix milliseconds or an aware datetime")
    if isinstance(value, int):
        return value
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"{what} must be an aware datetime (give it a tzinfo)")
        return (value - _EPOCH) // _MS
    raise TypeError(f"{what} must be unix milliseconds or an aware datetime")


# ---------------------------------------------------------------------------------------
# ASSET.*


def asset_incr(
    key: str,
    deltas: Mapping[str, Amount],
    *,
    op_id: str | None,
    meta: str | None,
    floor: Amount | None,
    nofloor: bool,
    ceil: Amount | None,
) -> Call[dict[str, Decimal]]:
    if not deltas:
        raise ValueError("asset_incr needs at least one field")
    fields = list(deltas)
    args: list[Arg] = ["ASSET.INCR", key]
    for field in fields:
        args += [field, amount_arg(deltas[field], f"delta of {field!r}")]
    args += _options(op_id, meta)
    args += _floor(floor, nofloor)
    if ceil is not None:
        args += ["CEIL", amount_arg(ceil, "ceil")]

    def parse(reply: Any) -> dict[str, Decimal]:
        values = list(reply)
        if len(values) != len(fields):
            raise ValueError(f"ASSET.INCR replied {len(values)} balances for {len(fields)} fields")
        return {f: dec(v) for f, v in zip(fields, values)}

    return Call(tuple(args), parse)


def asset_get(key: str, fields: Sequence[str]) -> Call[dict[str, Decimal]]:
    names = list(fields)

    def parse(reply: Any) -> dict[str, Decimal]:
        if names:
            return {f: dec(v) for f, v in zip(names, reply)}
        return {name: dec(v) for name, v in _pairs(reply)}

    return Call(("ASSET.GET", key, *names), parse)


def asset_transfer(
    source: str,
    target: str,
    field: str,
    amount: Amount,
    *,
    op_id: str | None,
    meta: str | None,
) -> Call[TransferResult]:
    args: list[Arg] = ["ASSET.TRANSFER", source, target, field, amount_arg(amount)]
    args += _options(op_id, meta)
    return Call(tuple(args), lambda r: TransferResult(*_decimal_pair(r)))


def asset_hold(
    key: str,
    field: str,
    amount: Amount,
    *,
    ttl: int | _dt.timedelta,
    floor: Amount | None,
    nofloor: bool,
    op_id: str | None,
    meta: str | None,
) -> Call[HoldResult]:
    args: list[Arg] = ["ASSET.HOLD", key, field, amount_arg(amount), "TTL", ttl_ms(ttl)]
    args += _floor(floor, nofloor) + _options(op_id, meta)

    def parse(reply: Any) -> HoldResult:
        hold_id, available = reply
        return HoldResult(_text(hold_id), dec(available))

    return Call(tuple(args), parse)


def _close_args(
    command: str, key: str, hold_id: str | int, amount: Amount | None, op_id: str | None, meta: str | None
) -> tuple[Arg, ...]:
    """``key hold-id [amount] [ID] [META]`` of ASSET.SETTLE/VOID, USAGE.COMMIT/CANCEL."""
    args: list[Arg] = [command, key, hold_id_arg(hold_id)]
    if amount is not None:
        args.append(amount_arg(amount))
    return tuple(args + _options(op_id, meta))


def asset_settle(
    key: str, hold_id: str | int, amount: Amount | None, *, op_id: str | None, meta: str | None
) -> Call[SettleResult]:
    args = _close_args("ASSET.SETTLE", key, hold_id, amount, op_id, meta)
    return Call(args, lambda r: SettleResult(*_decimal_pair(r)))


def asset_void(key: str, hold_id: str | int, *, op_id: str | None, meta: str | None) -> Call[VoidResult]:
    args = _close_args("ASSET.VOID", key, hold_id, None, op_id, meta)
    return Call(args, lambda r: VoidResult(*_decimal_pair(r)))


def asset_holds(key: str) -> Call[list[Hold]]:
    def parse(reply: Any) -> list[Hold]:
        items = list(reply)
        return [
            Hold(_text(items[i]), _text(items[i + 1]), dec(items[i + 2]), _int(items[i + 3]))
            for i in range(0, len(items), 4)
        ]

    return Call(("ASSET.HOLDS", key), parse)


def asset_available(key: str, fields: Sequence[str]) -> Call[dict[str, Availability]]:
    def parse(reply: Any) -> dict[str, Availability]:
        items = list(reply)
        return {
            _text(items[i]): Availability(dec(items[i + 1]), dec(items[i + 2]), dec(items[i + 3]))
            for i in range(0, len(items), 4)
        }

    return Call(("ASSET.AVAILABLE", key, *fields), parse)


# ---------------------------------------------------------------------------------------
# COUPON.*


def coupon_create(
    campaign: str,
    total: int,
    *,
    per_user: int | None,
    start: int | _dt.datetime | None,
    end: int | _dt.datetime | None,
    op_id: str | None,
    meta: str | None,
) -> Call[None]:
    if isinstance(total, bool) or not isinstance(total, int):
        raise TypeError("total must be an int")
    args: list[Arg] = ["COUPON.CREATE", campaign, total]
    if per_user is not None:
        if isinstance(per_user, bool) or not isinstance(per_user, int):
            raise TypeError("per_user must be an int")
        args += ["PERUSER", per_user]
    if start is not None:
        args += ["START", unix_ms(start, "start")]
    if end is not None:
        args += ["END", unix_ms(end, "end")]
    args += _options(op_id, meta)
    return Call(tuple(args), _ok)


def _claim_pair(reply: Any) -> tuple[int, int]:
    issue, remaining = reply
    return _int(issue), _int(remaining)


def coupon_claim(
    campaign: str, user: str, *, op_id: str | None, meta: str | None
) -> Call[ClaimResult]:
    args: list[Arg] = ["COUPON.CLAIM", campaign, user, *_options(op_id, meta)]
    return Call(tuple(args), lambda r: ClaimResult(*_claim_pair(r)))


def coupon_release(
    campaign: str, user: str, *, op_id: str | None, meta: str | None
) -> Call[ReleaseResult]:
    args: list[Arg] = ["COUPON.RELEASE", campaign, user, *_options(op_id, meta)]
    return Call(tuple(args), lambda r: ReleaseResult(*_claim_pair(r)))


def coupon_reserve(
    campaign: str, user: str, *, ttl: int | _dt.timedelta, op_id: str | None, meta: str | None
) -> Call[ClaimResult]:
    args: list[Arg] = ["COUPON.RESERVE", campaign, user, "TTL", ttl_ms(ttl), *_options(op_id, meta)]
    return Call(tuple(args), lambda r: ClaimResult(*_claim_pair(r)))


def _issue_arg(issue: int) -> int:
    if isinstance(issue, bool) or not isinstance(issue, int):
        raise TypeError("issue must be an int")
    return issue


def coupon_confirm(
    campaign: str, user: str, issue: int, *, op_id: str | None, meta: str | None
) -> Call[ClaimResult]:
    args: list[Arg] = ["COUPON.CONFIRM", campaign, user, _issue_arg(issue), *_options(op_id, meta)]
    return Call(tuple(args), lambda r: ClaimResult(*_claim_pair(r)))


def coupon_cancel(
    campaign: str, user: str, issue: int, *, op_id: str | None, meta: str | None
) -> Call[ReleaseResult]:
    args: list[Arg] = ["COUPON.CANCEL", campaign, user, _issue_arg(issue), *_options(op_id, meta)]
    return Call(tuple(args), lambda r: ReleaseResult(*_claim_pair(r)))


def coupon_info(campaign: str) -> Call[CouponInfo]:
    def parse(reply: Any) -> CouponInfo:
        m = dict(_pairs(reply))
        start, end = _int(m["start"]), _int(m["end"])
        return CouponInfo(
            total=_int(m["total"]),
            issued=_int(m["issued"]),
            remaining=_int(m["remaining"]),
            per_user=_int(m["peruser"]),
            start_ms=start or None,
            end_ms=end or None,
            last_issue=_int(m["last_issue"]),
            reserved=_int(m.get("reserved", 0)),  # absent before holds: none can be open
        )

    return Call(("COUPON.INFO", campaign), parse)


# ---------------------------------------------------------------------------------------
# USAGE.*


def usage_limit(
    key: str,
    limit: Amount,
    *,
    period: Period | None,
    op_id: str | None,
    meta: str | None,
) -> Call[None]:
    args: list[Arg] = ["USAGE.LIMIT", key, amount_arg(limit, "limit")]
    if period is not None:
        args += ["PERIOD", period]
    args += _options(op_id, meta)
    return Call(tuple(args), _ok)


def usage_consume(
    key: str, amount: Amount, *, op_id: str | None, meta: str | None
) -> Call[UsageResult]:
    args: list[Arg] = ["USAGE.CONSUME", key, amount_arg(amount), *_options(op_id, meta)]
    return Call(tuple(args), lambda r: UsageResult(*_decimal_pair(r)))


def usage_get(key: str) -> Call[UsageInfo]:
    def parse(reply: Any) -> UsageInfo:
        m = dict(_pairs(reply))
        return UsageInfo(
            used=dec(m["used"]),
            limit=dec(m["limit"]),
            remaining=dec(m["remaining"]),
            period=_text(m["period"]),
            period_id=_text(m["period_id"]),
            reserved=dec(m.get("reserved", 0)),  # absent before holds: none can be open
        )

    return Call(("USAGE.GET", key), parse)


def usage_reserve(
    key: str, amount: Amount, *, ttl: int | _dt.timedelta, op_id: str | None, meta: str | None
) -> Call[UsageReservation]:
    args: list[Arg] = ["USAGE.RESERVE", key, amount_arg(amount), "TTL", ttl_ms(ttl), *_options(op_id, meta)]

    def parse(reply: Any) -> UsageReservation:
        rid, used, reserved, remaining = reply
        return UsageReservation(_text(rid), dec(used), dec(reserved), dec(remaining))

    return Call(tuple(args), parse)


def usage_commit(
    key: str, reservation_id: str | int, actual: Amount | None, *, op_id: str | None, meta: str | None
) -> Call[UsageResult]:
    args = _close_args("USAGE.COMMIT", key, reservation_id, actual, op_id, meta)
    return Call(args, lambda r: UsageResult(*_decimal_pair(r)))


def usage_cancel(
    key: str, reservation_id: str | int, *, op_id: str | None, meta: str | None
) -> Call[UsageCancelResult]:
    args = _close_args("USAGE.CANCEL", key, reservation_id, None, op_id, meta)
    return Call(args, lambda r: UsageCancelResult(*_decimal_pair(r)))
