"""Waiting for a condition, bounded, so a broken test fails instead of hanging.

:func:`wait_for` blocks (fixtures, threads, synchronous tests); :func:`eventually` is its
asyncio form, which lets the code under test run in the same event loop meanwhile. Both call a
``probe`` until it returns something truthy and return that, polling quickly at first and then
every ``interval`` seconds at most (a condition met at once costs a millisecond, a slow one no
busy loop), and raise :class:`TimeoutError` naming ``what`` after ``within`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: The first pause between two probes; each next one doubles, up to ``interval``.
FIRST_PAUSE = 0.001


def _pauses(interval: float) -> Callable[[], float]:
    pause = min(FIRST_PAUSE, interval)

    def next_pause() -> float:
        nonlocal pause
        current, pause = pause, min(pause * 2, interval)
        return current

    return next_pause


def _timed_out(within: float, what: str) -> TimeoutError:
    return TimeoutError(f"timed out after {within:g}s waiting for {what}")


def wait_for(
    probe: Callable[[], T | None],
    within: float,
    *,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Call ``probe`` until it returns something truthy, and return that; TimeoutError after
    ``within`` seconds."""
    deadline = time.monotonic() + within
    pause = _pauses(interval)
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise _timed_out(within, what)
        time.sleep(pause())


async def eventually(
    probe: Callable[[], T | None],
    *,
    within: float = 1.0,
    interval: float = 0.1,
    what: str = "condition",
    in_thread: bool = False,
) -> T:
    """Await until ``probe`` returns something truthy, and return that; TimeoutError after
    ``within`` seconds (the default suits conditions on in-process state; give more for a
    real server). A probe that blocks (a request to a test server) runs ``in_thread``."""
    deadline = time.monotonic() + within
    pause = _pauses(interval)
    while True:
        result = await asyncio.to_thread(probe) if in_thread else probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise _timed_out(within, what)
        await asyncio.sleep(pause())


async def stays_pending(awaitable: asyncio.Future[Any], *, for_seconds: float) -> bool:
    """Whether ``awaitable`` is still not done after ``for_seconds``."""
    await asyncio.sleep(for_seconds)
    return not awaitable.done()
