"""tally-client: a thin typed layer over redis-py for the tally Redis module.

Amounts go in as ``Decimal``, ``int`` or ``str`` (never ``float``) and come back as
``Decimal``; error replies raise one class per code; mutating calls carry op-ids so that
retries never apply a change twice.
"""

from ._commands import new_op_id
from .aio import AsyncTally
from .client import Tally
from .errors import (
    Backlog,
    Closed,
    CommandError,
    Conflict,
    Duplicate,
    HoldLimit,
    HoldReason,
    Insufficient,
    LimitExceeded,
    NoPerm,
    NotFound,
    OpIds,
    SoldOut,
    TallyError,
    WrongType,
)
from .retry import RETRYABLE, async_with_retry, with_retry
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

__version__ = "0.1.0"

__all__ = [
    "Tally",
    "AsyncTally",
    "new_op_id",
    "with_retry",
    "async_with_retry",
    "RETRYABLE",
    "Amount",
    "Period",
    "ClaimResult",
    "ReleaseResult",
    "CouponInfo",
    "TransferResult",
    "UsageInfo",
    "UsageResult",
    "HoldResult",
    "SettleResult",
    "VoidResult",
    "Hold",
    "Availability",
    "UsageReservation",
    "UsageCancelResult",
    "TallyError",
    "Insufficient",
    "SoldOut",
    "Duplicate",
    "NotFound",
    "Closed",
    "LimitExceeded",
    "Conflict",
    "Backlog",
    "OpIds",
    "HoldLimit",
    "HoldReason",
    "WrongType",
    "NoPerm",
    "CommandError",
]
