"""The shared retry rules of every remote client (adapters/retry.py)."""

from __future__ import annotations

import pytest

from adapters.retry import RetryableError, RetryPolicy, parse_retry_after, retrying


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
