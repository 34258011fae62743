"""Retries that never apply a change twice: every attempt carries the same op-id.

tally remembers an op-id (``ID``) with the first reply it gave: a repeated request is
answered from that record and changes nothing, so a reply lost to a dropped connection or
a timeout can be retried safely. The one rule is to mint the op-id once, before the first
attempt: :func:`with_retry` does that and hands it to every attempt.

    op = new_op_id()
    balances = with_retry(lambda op_id: tally.asset_incr(key, {"BDP": "10.43"}, op_id=op_id))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.exceptions
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from ._commands import new_op_id

__all__ = ["RETRYABLE", "with_retry", "async_with_retry", "new_op_id"]

T = TypeVar("T")

#: The errors after which the outcome is unknown (the command may or may not have run):
#: the ones worth retrying with the same op-id.
RETRYABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def _policy(
    attempts: int, backoff: float, max_backoff: float, retry_on: tuple[type[BaseException], ...]
) -> tuple[stop_base, wait_base, retry_base]:
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    return (
        stop_after_attempt(attempts),
        # backoff, 2x, 4x, ... up to max_backoff, plus up to one backoff of jitter.
        wait_exponential(multiplier=backoff, max=max_backoff) + wait_random(0, backoff),
        retry_if_exception_type(retry_on),
    )


def with_retry(
    fn: Callable[[str], T],
    *,
    op_id: str | None = None,
    attempts: int = 5,
    backoff: float = 0.1,
    max_backoff: float = 5.0,
    retry_on: tuple[type[BaseException], ...] = RETRYABLE,
) -> T:
    """Call ``fn(op_id)`` until it returns, retrying on ``retry_on`` errors (connection
    errors and timeouts by default) up to ``attempts`` calls in all, with exponential
    backoff and jitter from ``backoff`` seconds up to ``max_backoff``. Every call gets the
    same ``op_id`` (a fresh :func:`new_op_id` unless given). Other errors, such as
    :class:`~tally_client.Insufficient`, are raised at once; after the last attempt its
    error is raised.

    Add :class:`~tally_client.OpIds` or :class:`~tally_client.Backlog` to ``retry_on`` to
    wait those out too: a refused command does not consume its op-id."""
    op = op_id if op_id is not None else new_op_id()
    stop, wait, retry = _policy(attempts, backoff, max_backoff, retry_on)
    retrying = Retrying(stop=stop, wait=wait, retry=retry, reraise=True)
    return retrying(fn, op)


async def async_with_retry(
    fn: Callable[[str], Awaitable[T]],
    *,
    op_id: str | None = None,
    attempts: int = 5,
    backoff: float = 0.1,
    max_backoff: float = 5.0,
    retry_on: tuple[type[BaseException], ...] = RETRYABLE,
) -> T:
    """:func:`with_retry` for coroutines: ``await async_with_retry(lambda op_id: ...)``."""
    op = op_id if op_id is not None else new_op_id()
    stop, wait, retry = _policy(attempts, backoff, max_backoff, retry_on)
    retrying = AsyncRetrying(stop=stop, wait=wait, retry=retry, reraise=True)

    # A coroutine function, so that tenacity awaits each attempt (it would call a plain
    # lambda returning a coroutine as a sync function and hand back the coroutine).
    async def attempt(op_id: str) -> T:
        return await fn(op_id)

    return await retrying(attempt, op)
