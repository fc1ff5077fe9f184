"""The harness's waiting helpers (tests/support/waiting.py): what they return, when they give
up, and where a blocking probe runs."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.support.waiting import eventually, wait_for


def test_wait_for_returns_the_first_truthy_answer() -> None:
    """wait_for polls until the probe answers something truthy and returns that answer."""
    answers = iter([None, 0, "", "found", "later"])
    assert wait_for(lambda: next(answers), 5) == "found"


def test_wait_for_gives_up_after_within_naming_what_it_waited_for() -> None:
    """wait_for raises TimeoutError naming what it waited for once ``within`` has passed."""
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="waiting for the moon"):
        wait_for(lambda: None, 0.2, what="the moon")
    assert 0.2 <= time.monotonic() - began < 2


async def test_eventually_lets_the_event_loop_run_meanwhile() -> None:
    """eventually yields to the loop between probes, so a task it waits on can finish."""
    done: list[str] = []

    async def later() -> None:
        done.append("yes")

    task = asyncio.create_task(later())
    assert await eventually(lambda: done and done[0]) == "yes"
    await task


async def test_eventually_gives_up_after_within() -> None:
    """eventually raises TimeoutError naming what it waited for once ``within`` has passed."""
    with pytest.raises(TimeoutError, match=r"after 0\.1s waiting for nothing"):
        await eventually(lambda: None, within=0.1, what="nothing")


async def test_a_blocking_probe_runs_in_a_thread() -> None:
    """With in_thread the probe runs off the event loop's thread; without it, on it."""
    loop_thread = threading.get_ident()
    assert await eventually(threading.get_ident, in_thread=True) != loop_thread
    assert await eventually(threading.get_ident) == loop_thread
