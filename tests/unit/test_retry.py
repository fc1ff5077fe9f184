"""The shared retry rules of every remote client (adapters/retry.py)."""

from __future__ import annotations

import pytest

from adapters.retry import (
    RetryableError,
    RetryPolicy,
    call_with_retries,
    parse_retry_after,
    retrying,
)


def test_retry_after_in_seconds() -> None:
    """Delta-seconds are read as seconds, negatives clamp to zero."""
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0


def test_retry_after_as_http_date() -> None:
    """An HTTP date is the time left until it; a past date means now."""
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=lambda: 1445412480.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412490.0) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "inf", "-inf", "1e999"])
def test_retry_after_malformed_is_ignored(value: str | None) -> None:
    """Absent, unparseable or non-finite values give no Retry-After (backoff applies)."""
    assert parse_retry_after(value) is None


async def test_retrying_obeys_retry_after_capped() -> None:
    """A Retry-After replaces the backoff but never exceeds max_retry_after."""
    policy = RetryPolicy(attempts=3, initial=10.0, maximum=10.0, max_retry_after=0.01)
    calls = 0
    slept: list[float] = []

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RetryableError("busy", retry_after=3600.0)
        return "done"

    def before_sleep(state: object) -> None:
        slept.append(state.upcoming_sleep)  # type: ignore[attr-defined]

    assert await retrying(policy, policy.attempts, before_sleep)(attempt) == "done"
    assert slept == [0.01, 0.01]


async def test_call_with_retries_waits_and_counts_exactly_as_tenacity() -> None:
    """call_with_retries: the first failure's Retry-After, before_sleep per retry, the count."""
    policy = RetryPolicy(attempts=3, initial=10.0, maximum=10.0, max_retry_after=0.01)
    calls = 0
    slept: list[tuple[int, float]] = []

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RetryableError(f"busy {calls}", retry_after=3600.0)
        return "done"

    def before_sleep(state: object) -> None:
        slept.append((state.attempt_number, state.upcoming_sleep))  # type: ignore[attr-defined]

    assert await call_with_retries(policy, policy.attempts, attempt, before_sleep) == "done"
    assert calls == 3
    assert slept == [(1, 0.01), (2, 0.01)]


async def test_call_with_retries_gives_up_after_the_attempts_with_the_last_error() -> None:
    """call_with_retries: attempts in all (the first included), then the last error raised."""
    policy = RetryPolicy(attempts=2, initial=0.001, maximum=0.001)
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        raise RetryableError(f"down {calls}")

    with pytest.raises(RetryableError, match="down 2"):
        await call_with_retries(policy, policy.attempts, attempt)
    assert calls == 2


async def test_call_with_retries_does_not_retry_other_errors() -> None:
    """call_with_retries: an error that is not RetryableError ends the call at once."""
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await call_with_retries(RetryPolicy(attempts=5), 5, attempt)
    assert calls == 1
