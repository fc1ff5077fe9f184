"""Retrying remote calls: one policy, one ``Retry-After`` parser, one wait rule for every client.

The Docker Engine client, the Kubernetes client and the agent client all retry connection errors,
timeouts, 429 and 5xx with jittered exponential backoff, except that a server's ``Retry-After``
(seconds or an HTTP date) replaces the backoff, capped at ``max_retry_after`` so a hostile or
confused server cannot park a call for hours.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol, TypeVar

import tenacity

from controller.errors import TransientError

_T = TypeVar("_T")


class Backoff(Protocol):
    """What the wait rule reads from a policy (``RetryPolicy`` or a client's own policy)."""

    @property
    def initial(self) -> float:
        """The first backoff, in seconds."""

    @property
    def maximum(self) -> float:
        """The longest backoff, in seconds."""

    @property
    def max_retry_after(self) -> float:
        """The longest ``Retry-After`` obeyed, in seconds."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one remote call is retried."""

    #: Attempts per call (1: no retry).
    attempts: int = 5
    #: First backoff, and the longest one, in seconds.
    initial: float = 0.1
    maximum: float = 5.0
    #: The longest ``Retry-After`` obeyed, in seconds.
    max_retry_after: float = 30.0


@dataclass(frozen=True, slots=True)
class StreamTiming:
    """How a source keeps its streams up (the Docker event stream, the cluster's watches): one
    silent for ``idle_timeout`` seconds is presumed dead and re-opened; one that failed is
    re-opened after a backoff from ``reconnect_initial`` doubling up to ``reconnect_max``."""

    idle_timeout: float = 600.0
    reconnect_initial: float = 0.2
    reconnect_max: float = 10.0


class RetryableError(TransientError):
    """A transient failure inside a retry loop; carries the server's ``Retry-After`` if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value; ``None`` when absent or malformed.

    RFC 9110 allows delta-seconds or an HTTP date; a date in the past means 0. Non-finite
    numbers (``nan``, ``inf``) are malformed: asyncio cannot sleep for them.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one is taken as such
            return None
        seconds = when.timestamp() - now()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def retry_wait(policy: Backoff) -> Callable[[tenacity.RetryCallState], float]:
    """tenacity's wait: the server's ``Retry-After`` (capped) if given, else jittered backoff."""
    backoff = tenacity.wait_random_exponential(multiplier=policy.initial, max=policy.maximum)

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return min(exc.retry_after, policy.max_retry_after)
        return float(backoff(state))

    return wait


def retrying(
    policy: Backoff,
    attempts: int,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
) -> tenacity.AsyncRetrying:
    """An ``AsyncRetrying`` that retries ``RetryableError`` up to ``attempts`` times."""
    return tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=retry_wait(policy),
        retry=tenacity.retry_if_exception_type(RetryableError),
        before_sleep=before_sleep,
        reraise=True,
    )


async def call_with_retries(
    policy: Backoff,
    attempts: int,
    call: Callable[[], Awaitable[_T]],
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
) -> _T:
    """``await call()``, retried as :func:`retrying` retries: ``RetryableError`` up to
    ``attempts`` times in all, the last one raised.

    The first attempt runs outside tenacity: nearly every call succeeds at once, and tenacity's
    set-up per call (inspecting the callable, its statistics, its action chain) cost a tenth of
    the cluster controller's CPU per resource. A first failure is handed to tenacity as its
    first attempt's outcome, so the wait, ``Retry-After``, ``before_sleep`` and the attempt
    count are exactly tenacity's.
    """
    try:
        return await call()
    except RetryableError as exc:
        first: RetryableError | None = exc

    async def replayed() -> _T:
        nonlocal first
        if first is not None:
            failure, first = first, None
            raise failure
        return await call()

    result: _T = await retrying(policy, attempts, before_sleep)(replayed)
    return result
