"""The synchronous client: :class:`Tally` over ``redis.Redis`` or ``redis.RedisCluster``."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeVar

import redis
import redis.asyncio
from redis.exceptions import ResponseError

from . import _commands as c
from .errors import translate
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

__all__ = ["Tally"]


class Tally:
    """tally's commands over a redis-py client (standalone or cluster).

    Every mutating method takes ``op_id`` and ``meta``. With ``auto_op_id=True`` (the
    default) a call given no ``op_id`` gets a fresh one (:func:`new_op_id`), so the retry
    redis-py itself performs after a connection error or timeout (on by default since
    redis-py 6) re-sends the same op-id and cannot apply a change twice. Each op-id costs
    the server a small record for ``tally.op-ttl-ms`` (24 h by default, bounded by
    ``tally.max-op-ids``); ``auto_op_id=False`` sends no ``ID`` unless one is given.

    Error replies raise the classes in :mod:`tally_client.errors`.
    """

    def __init__(self, client: redis.Redis | redis.RedisCluster, *, auto_op_id: bool = True):
        if isinstance(client, (redis.asyncio.Redis, redis.asyncio.RedisCluster)):
            raise TypeError("an asyncio client needs AsyncTally, not Tally")
        self._client = client
        self._exec: Callable[..., Any] = client.execute_command
        self._auto_op_id = auto_op_id

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool | None = None,
        auto_op_id: bool = True,
        **kwargs: Any,
    ) -> Tally:
        """Connect to ``url``; ``cluster=None`` asks the server (``INFO cluster``) whether it
        is a cluster node and uses ``RedisCluster`` if so."""
        # Typed as Any: redis-py 5 leaves these methods unannotated.
        if cluster is None:
            probe: Any = redis.Redis.from_url(url, **kwargs)
            try:
                cluster = bool(probe.info("cluster").get("cluster_enabled"))
            finally:
                probe.close()
        factory: Any = redis.RedisCluster if cluster else redis.Redis
        return cls(factory.from_url(url, **kwargs), auto_op_id=auto_op_id)

    @property
    def redis(self) -> redis.Redis | redis.RedisCluster:
        """The underlying redis-py client."""
        return self._client

    def close(self) -> None:
        """Close the underlying client's connections."""
        close: Callable[[], object] = self._client.close
        close()

    def __enter__(self) -> Tally:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _op(self, op_id: str | None) -> str | None:
        if op_id is None and self._auto_op_id:
            return c.new_op_id()
        return op_id

    def _run(self, call: c.Call[T]) -> T:
        try:
            reply = self._exec(*call.args)
        except ResponseError as err:
            mapped = translate(err)
            if mapped is err:
                raise
            raise mapped from err
        return call.parse(reply)

    # ASSET.* ----------------------------------------------------------------------------

    def asset_incr(
        self,
        key: str,
        deltas: Mapping[str, Amount],
        *,
        op_id: str | None = None,
        meta: str | None = None,
        floor: Amount | None = None,
        nofloor: bool = False,
        ceil: Amount | None = None,
    ) -> dict[str, Decimal]:
        """``ASSET.INCR``: add signed ``deltas`` ({field: delta}) to fields of the hash
        ``key``, all or nothing; returns the new balances in the same order.

        By default no balance may end below 0 (:class:`Insufficient`); ``floor`` sets
        another lower bound, ``nofloor=True`` removes it, ``ceil`` adds an upper bound
        (:class:`LimitExceeded`)."""
        return self._run(
            c.asset_incr(
                key,
                deltas,
                op_id=self._op(op_id),
                meta=meta,
                floor=floor,
                nofloor=nofloor,
                ceil=ceil,
            )
        )

    def asset_get(self, key: str, *fields: str) -> dict[str, Decimal]:
        """``ASSET.GET``: the named balances (missing = 0), or every field when none is named
        (sorted by the names' bytes; a name that is not UTF-8 comes back with
        surrogate escapes)."""
        return self._run(c.asset_get(key, fields))

    def asset_transfer(
        self,
        source: str,
        target: str,
        field: str,
        amount: Amount,
        *,
        op_id: str | None = None,
        meta: str | None = None,
    ) -> TransferResult:
        """``ASSET.TRANSFER``: move a positive ``amount`` of ``field`` from ``source`` to
        ``target`` (in a cluster both keys need one hash tag, ``{user42}.wallet``)."""
        return self._run(
            c.asset_transfer(source, target, field, amount, op_id=self._op(op_id), meta=meta)
        )

    # COUPON.* ---------------------------------------------------------------------------

    def coupon_create(
        self,
        campaign: str,
        total: int,
        *,
        per_user: int | None = None,
        start: int | _dt.datetime | None = None,
        end: int | _dt.datetime | None = None,
        op_id: str | None = None,
        meta: str | None = None,
    ) -> None:
        """``COUPON.CREATE``: a campaign with a fixed stock, at most ``per_user`` claims per
        user (default 1), claimable from ``start`` (inclusive) to ``end`` (exclusive), each
        unix milliseconds or an aware datetime."""
        self._run(
            c.coupon_create(
                campaign,
                total,
                per_user=per_user,
                start=start,
                end=end,
                op_id=self._op(op_id),
                meta=meta,
            )
        )

    def coupon_claim(
        self, campaign: str, user: str, *, op_id: str | None = None, meta: str | None = None
    ) -> ClaimResult:
        """``COUPON.CLAIM``: raises :class:`NotFound`, :class:`Closed`, :class:`Duplicate`
        or :class:`SoldOut`, checked in that order."""
        return self._run(c.coupon_claim(campaign, user, op_id=self._op(op_id), meta=meta))

    def coupon_release(
        self, campaign: str, user: str, *, op_id: str | None = None, meta: str | None = None
    ) -> ReleaseResult:
        """``COUPON.RELEASE``: give the user's most recent claim back to the stock."""
        return self._run(c.coupon_release(campaign, user, op_id=self._op(op_id), meta=meta))

    def coupon_info(self, campaign: str) -> CouponInfo:
        """``COUPON.INFO``."""
        return self._run(c.coupon_info(campaign))

    # USAGE.* ----------------------------------------------------------------------------

    def usage_limit(
        self,
        key: str,
        limit: Amount,
        *,
        period: Period | None = None,
        op_id: str | None = None,
        meta: str | None = None,
    ) -> None:
        """``USAGE.LIMIT``: set or change the quota (keeps what was used this period)."""
        self._run(c.usage_limit(key, limit, period=period, op_id=self._op(op_id), meta=meta))

    def usage_consume(
        self, key: str, amount: Amount, *, op_id: str | None = None, meta: str | None = None
    ) -> UsageResult:
        """``USAGE.CONSUME``: succeeds only if ``used + amount <= limit``, else raises
        :class:`LimitExceeded` and changes nothing."""
        return self._run(c.usage_consume(key, amount, op_id=self._op(op_id), meta=meta))

    def usage_get(self, key: str) -> UsageInfo:
        """``USAGE.GET``."""
        return self._run(c.usage_get(key))

    # Holds (docs/holds.md) --------------------------------------------------------------

    def asset_hold(
        self,
        key: str,
        field: str,
        amount: Amount,
        *,
        ttl: int | _dt.timedelta,
        floor: Amount | None = None,
        nofloor: bool = False,
        op_id: str | None = None,
        meta: str | None = None,
    ) -> HoldResult:
        """``ASSET.HOLD``: take a positive ``amount`` of ``field`` out of reach for ``ttl``
        (milliseconds or a timedelta, at most 30 days), until settled, voided or expired.

        Raises :class:`Insufficient` when ``available`` (balance minus open holds) would go
        below ``floor`` (default 0; ``nofloor=True`` removes it), :class:`HoldLimit` when the
        key has ``tally.max-holds-per-key`` open holds."""
        return self._run(
            c.asset_hold(
                key,
                field,
                amount,
                ttl=ttl,
                floor=floor,
                nofloor=nofloor,
                op_id=self._op(op_id),
                meta=meta,
            )
        )

    def asset_settle(
        self,
        key: str,
        hold_id: str | int,
        amount: Amount | None = None,
        *,
        op_id: str | None = None,
        meta: str | None = None,
    ) -> SettleResult:
        """``ASSET.SETTLE``: spend ``amount`` of the hold (default: all of it; ``0 < amount <=
        held``) from the balance and release the rest. A hold that is not open raises
        :class:`NotFound` with its :attr:`~NotFound.reason`."""
        return self._run(c.asset_settle(key, hold_id, amount, op_id=self._op(op_id), meta=meta))

    def asset_void(
        self, key: str, hold_id: str | int, *, op_id: str | None = None, meta: str | None = None
    ) -> VoidResult:
        """``ASSET.VOID``: give the hold back to the available balance."""
        return self._run(c.asset_void(key, hold_id, op_id=self._op(op_id), meta=meta))

    def asset_holds(self, key: str) -> list[Hold]:
        """``ASSET.HOLDS``: the key's open holds, in id order (due ones left out)."""
        return self._run(c.asset_holds(key))

    def asset_available(self, key: str, *fields: str) -> dict[str, Availability]:
        """``ASSET.AVAILABLE``: balance, held and available of the named fields in order, or
        of every field with a balance or a hold (sorted by name) when none is named."""
        return self._run(c.asset_available(key, fields))

    def coupon_reserve(
        self,
        campaign: str,
        user: str,
        *,
        ttl: int | _dt.timedelta,
        op_id: str | None = None,
        meta: str | None = None,
    ) -> ClaimResult:
        """``COUPON.RESERVE``: take one coupon from the stock for ``user`` for ``ttl``; it
        counts against ``per_user`` like a claim. ``issue`` is the reservation's id. Raises
        like :meth:`coupon_claim`."""
        return self._run(c.coupon_reserve(campaign, user, ttl=ttl, op_id=self._op(op_id), meta=meta))

    def coupon_confirm(
        self, campaign: str, user: str, issue: int, *, op_id: str | None = None, meta: str | None = None
    ) -> ClaimResult:
        """``COUPON.CONFIRM``: the reservation becomes a claim (:meth:`coupon_release` can
        release it from then on)."""
        return self._run(c.coupon_confirm(campaign, user, issue, op_id=self._op(op_id), meta=meta))

    def coupon_cancel(
        self, campaign: str, user: str, issue: int, *, op_id: str | None = None, meta: str | None = None
    ) -> ReleaseResult:
        """``COUPON.CANCEL``: the stock gets the reservation back (its number stays retired)."""
        return self._run(c.coupon_cancel(campaign, user, issue, op_id=self._op(op_id), meta=meta))

    def usage_reserve(
        self,
        key: str,
        amount: Amount,
        *,
        ttl: int | _dt.timedelta,
        op_id: str | None = None,
        meta: str | None = None,
    ) -> UsageReservation:
        """``USAGE.RESERVE``: hold ``amount`` of the quota for ``ttl`` without moving
        ``used``; :class:`LimitExceeded` when it exceeds what remains."""
        return self._run(c.usage_reserve(key, amount, ttl=ttl, op_id=self._op(op_id), meta=meta))

    def usage_commit(
        self,
        key: str,
        reservation_id: str | int,
        actual: Amount | None = None,
        *,
        op_id: str | None = None,
        meta: str | None = None,
    ) -> UsageResult:
        """``USAGE.COMMIT``: add ``actual`` (default: the whole reservation; ``0 <= actual <=
        reserved``) to ``used`` and release the rest."""
        return self._run(c.usage_commit(key, reservation_id, actual, op_id=self._op(op_id), meta=meta))

    def usage_cancel(
        self, key: str, reservation_id: str | int, *, op_id: str | None = None, meta: str | None = None
    ) -> UsageCancelResult:
        """``USAGE.CANCEL``: release the reservation."""
        return self._run(c.usage_cancel(key, reservation_id, op_id=self._op(op_id), meta=meta))
