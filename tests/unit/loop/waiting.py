"""Waiting helpers for asyncio tests: bounded, so a broken test fails instead of hanging."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


async def eventually(condition: Callable[[], bool], *, within: float = 1.0) -> None:
    """Wait until ``condition()`` holds, checking every millisecond; fail after ``within``."""
    async with asyncio.timeout(within):
        # Polling is the point: conditions on metrics and fakes have no event to wait on.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


async def stays_pending(awaitable: asyncio.Future[Any], *, for_seconds: float) -> bool:
    """Whether ``awaitable`` is still not done after ``for_seconds``."""
    await asyncio.sleep(for_seconds)
    return not awaitable.done()
