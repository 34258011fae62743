"""One exception class per tally error code.

tally's error replies start with a stable code (``INSUFFICIENT``, ``SOLDOUT``, ...) followed
by a sentence. redis-py turns them into ``redis.exceptions.ResponseError`` (or
``NoPermissionError`` for ``NOPERM``, and it strips the ``ERR`` prefix); :func:`translate`
maps them back to the classes below by their first word. Every class is a
``ResponseError``, so code that already catches redis-py's errors keeps working.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal, cast

from redis.exceptions import NoPermissionError, ResponseError

__all__ = [
    "TallyError",
    "Insufficient",
    "SoldOut",
    "Duplicate",
    "NotFound",
    "HoldReason",
    "Closed",
    "LimitExceeded",
    "Conflict",
    "Backlog",
    "OpIds",
    "HoldLimit",
    "WrongType",
    "NoPerm",
    "CommandError",
    "translate",
]


class TallyError(ResponseError):
    """An error reply from a tally command: ``.code`` is its first word, ``.message`` the rest."""

    code: str
    message: str
    CODE: ClassVar[str] = ""

    def __init__(self, message: str, code: str | None = None) -> None:
        self.code = code if code is not None else self.CODE
        self.message = message
        super().__init__(f"{self.code} {message}" if message else self.code)

    def __reduce__(self) -> tuple[type[TallyError], tuple[str, str]]:
        return (type(self), (self.message, self.code))


class Insufficient(TallyError):
    """``INSUFFICIENT``: a balance would end below its floor."""

    CODE = "INSUFFICIENT"


class SoldOut(TallyError):
    """``SOLDOUT``: no coupon stock remains."""

    CODE = "SOLDOUT"


class Duplicate(TallyError):
    """``DUPLICATE``: the user already holds ``PERUSER`` claims."""

    CODE = "DUPLICATE"


#: Why a hold is not open (:attr:`NotFound.reason`).
HoldReason = Literal["unknown", "settled", "voided", "expired"]

_HOLD_NOT_FOUND = re.compile(r"hold (\S+) of this key (is unknown|was settled|was voided|expired)")


class NotFound(TallyError):
    """``NOTFOUND``: no such campaign / usage counter / claim to release, or a hold that is
    not open. For the latter, :attr:`reason` and :attr:`hold_id` say which and why."""

    CODE = "NOTFOUND"

    @property
    def hold_id(self) -> str | None:
        """The id of the hold that is not open (a coupon reservation's: its issue number), or
        ``None`` when the error is not about a hold."""
        m = _HOLD_NOT_FOUND.fullmatch(self.message)
        return m.group(1) if m else None

    @property
    def reason(self) -> HoldReason | None:
        """Why the hold is not open: ``"settled"``, ``"voided"`` (voided or cancelled),
        ``"expired"``, or ``"unknown"`` (never opened on this key, or closed longer ago than
        ``tally.hold-tombstone-ms``); ``None`` when the error is not about a hold."""
        m = _HOLD_NOT_FOUND.fullmatch(self.message)
        return cast(HoldReason, m.group(2).split()[-1]) if m else None


class Closed(TallyError):
    """``CLOSED``: outside the campaign's window."""

    CODE = "CLOSED"


class LimitExceeded(TallyError):
    """``LIMIT``: the usage quota or the ``CEIL`` would be exceeded."""

    CODE = "LIMIT"


class Conflict(TallyError):
    """``CONFLICT``: the op-id was already used with a different request."""

    CODE = "CONFLICT"


class Backlog(TallyError):
    """``BACKLOG``: the change log holds ``tally.max-backlog`` unshipped entries."""

    CODE = "BACKLOG"


class OpIds(TallyError):
    """``OPIDS``: the node keeps ``tally.max-op-ids`` op-id records; retry later."""

    CODE = "OPIDS"


class HoldLimit(TallyError):
    """``HOLDLIMIT``: the key has ``tally.max-holds-per-key`` open holds."""

    CODE = "HOLDLIMIT"


class WrongType(TallyError):
    """``WRONGTYPE``: the key (or a stored value) is not what the command needs."""

    CODE = "WRONGTYPE"


class NoPerm(TallyError):
    """``NOPERM``: the ACL user may not run the command or write tally's helper keys."""

    CODE = "NOPERM"


class CommandError(TallyError):
    """``ERR``: wrong arity, malformed / over-precise / overflowing number, bad option or
    name, an existing campaign, ... (the request itself is refused)."""

    CODE = "ERR"


_BY_CODE: dict[str, type[TallyError]] = {
    cls.CODE: cls
    for cls in (
        Insufficient,
        SoldOut,
        Duplicate,
        NotFound,
        Closed,
        LimitExceeded,
        Conflict,
        Backlog,
        OpIds,
        HoldLimit,
        WrongType,
        NoPerm,
        CommandError,
    )
}


def from_reply(text: str) -> TallyError:
    """The exception for a raw error reply such as ``"SOLDOUT no coupons remain"``."""
    code, _, rest = text.partition(" ")
    cls = _BY_CODE.get(code)
    if cls is None:
        return TallyError(rest, code)
    return cls(rest)


def translate(err: ResponseError) -> ResponseError:
    """Map a redis-py ``ResponseError`` to its tally class; other errors come back unchanged.

    redis-py keeps the code in the text for codes it does not know (``SOLDOUT ...``), strips
    ``ERR`` and ``NOPERM`` (raising ``NoPermissionError`` for the latter) and has its own
    classes for cluster redirections, ``READONLY``, ``OOM`` and the like, which are not
    tally's and are left alone.
    """
    if isinstance(err, TallyError):
        return err
    text = str(err)
    if isinstance(err, NoPermissionError):
        return NoPerm(text)
    if type(err) is not ResponseError:
        return err
    # redis-py >= 6 records the code it stripped (ERR) or saw; older versions strip ERR
    # and leave the sentence only, which never starts with one of tally's codes.
    status = getattr(err, "status_code", None)
    if status == "ERR":
        return CommandError(text)
    code, _, rest = text.partition(" ")
    cls = _BY_CODE.get(code)
    if cls is not None and cls is not CommandError:
        return cls(rest)
    if status is None:
        return CommandError(text)
    return err
