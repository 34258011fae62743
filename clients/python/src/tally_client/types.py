"""Results of tally commands, and the amount type they accept."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Union

__all__ = [
    "Amount",
    "Period",
    "TransferResult",
    "ClaimResult",
    "ReleaseResult",
    "CouponInfo",
    "UsageResult",
    "UsageInfo",
    "HoldResult",
    "SettleResult",
    "VoidResult",
    "Hold",
    "Availability",
    "UsageReservation",
    "UsageCancelResult",
]

#: What an amount argument may be. ``float`` is refused with ``TypeError``: a float cannot
#: hold 10.43 exactly, which is how the currency team lost money to ``HINCRBYFLOAT``.
Amount = Union[Decimal, int, str]

#: ``USAGE.LIMIT``'s ``PERIOD``: usage starts again from 0 at each UTC day / month boundary.
Period = Literal["none", "day", "month"]


@dataclass(frozen=True, slots=True)
class TransferResult:
    """``ASSET.TRANSFER``'s reply: both balances of the field after the move."""

    from_balance: Decimal
    to_balance: Decimal


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """``COUPON.CLAIM``'s reply: the issue number won (from 1, never reused) and the stock left."""

    issue: int
    remaining: int


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    """``COUPON.RELEASE``'s reply: the issue number given back (it stays retired) and the
    stock left."""

    issue: int
    remaining: int


@dataclass(frozen=True, slots=True)
class CouponInfo:
    """``COUPON.INFO``: a campaign's stock. ``start_ms`` / ``end_ms`` are unix milliseconds,
    ``None`` when unbounded; ``remaining = total - issued``."""

    total: int
    issued: int
    remaining: int
    per_user: int
    start_ms: int | None
    end_ms: int | None
    last_issue: int
    #: Open reservations (``COUPON.RESERVE``), counted in ``issued`` too.
    reserved: int = 0


@dataclass(frozen=True, slots=True)
class UsageResult:
    """``USAGE.CONSUME``'s reply: used and remaining in the current period."""

    used: Decimal
    remaining: Decimal


@dataclass(frozen=True, slots=True)
class UsageInfo:
    """``USAGE.GET``: the counter as of now (a new period reads as 0 used).

    ``period_id`` names the period (``all``, ``2026-12-06``, ``2026-12``); ``reserved`` is
    what open reservations (``USAGE.RESERVE``) hold, so ``remaining = limit - used -
    reserved``."""

    used: Decimal
    limit: Decimal
    remaining: Decimal
    period: str
    period_id: str
    reserved: Decimal = Decimal(0)


# Holds (docs/holds.md) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HoldResult:
    """``ASSET.HOLD``'s reply: the new hold's id (decimal text, unique per key) and what is
    available of the field after it (balance minus its open holds)."""

    hold_id: str
    available: Decimal


@dataclass(frozen=True, slots=True)
class SettleResult:
    """``ASSET.SETTLE``'s reply: the amount spent from the balance, and the balance after."""

    settled: Decimal
    balance: Decimal


@dataclass(frozen=True, slots=True)
class VoidResult:
    """``ASSET.VOID``'s reply: the amount given back, and what is available after."""

    released: Decimal
    available: Decimal


@dataclass(frozen=True, slots=True)
class Hold:
    """One open hold of ``ASSET.HOLDS``; ``expires_ms`` is its deadline in unix milliseconds."""

    hold_id: str
    field: str
    amount: Decimal
    expires_ms: int


@dataclass(frozen=True, slots=True)
class Availability:
    """One field of ``ASSET.AVAILABLE``: ``available = balance - held``."""

    balance: Decimal
    held: Decimal
    available: Decimal


@dataclass(frozen=True, slots=True)
class UsageReservation:
    """``USAGE.RESERVE``'s reply: the reservation's id, ``used`` (unchanged), what open
    reservations hold now, and ``remaining = limit - used - reserved``."""

    reservation_id: str
    used: Decimal
    reserved: Decimal
    remaining: Decimal


@dataclass(frozen=True, slots=True)
class UsageCancelResult:
    """``USAGE.CANCEL``'s reply: the amount released and the remaining quota after."""

    released: Decimal
    remaining: Decimal
