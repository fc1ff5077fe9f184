"""The daemon thread pool and the bounded call that keep stuck threads from mattering."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import CancelledError

import pytest

from adapters.threads import (
    CallLimiter,
    CallTimeoutError,
    DaemonThreadPool,
    TooManyStuckCallsError,
    call_with_timeout,
)
from tests.processes import REPO, clean_env


def test_pool_runs_work_on_daemon_threads_and_hands_back_errors() -> None:
    """Results and exceptions come back through the futures; every worker is a daemon."""
    pool = DaemonThreadPool(max_workers=2)
    try:
        assert pool.submit(lambda: threading.current_thread().daemon).result(5) is True
        assert list(pool.map(lambda x: x * 2, range(20))) == [x * 2 for x in range(20)]
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 // 0).result(5)
    finally:
        pool.shutdown()


def test_pool_never_starts_more_than_max_workers() -> None:
    """Work beyond max_workers waits for a free worker instead of starting a thread."""
    pool = DaemonThreadPool(max_workers=2)
    gate = threading.Event()
    names: set[str] = set()

    def work() -> None:
        names.add(threading.current_thread().name)
        gate.wait(5)

    futures = [pool.submit(work) for _ in range(6)]
    time.sleep(0.1)
    gate.set()
    for future in futures:
        future.result(5)
    pool.shutdown()
    assert len(names) == 2


@pytest.mark.timeout(10)
def test_shutdown_abandons_a_stuck_worker_and_cancels_queued_work() -> None:
    """shutdown(wait=True) returns after join_timeout although a worker is stuck for ever."""
    pool = DaemonThreadPool(max_workers=1, join_timeout=0.2)
    never = threading.Event()
    pool.submit(never.wait)
    queued = pool.submit(lambda: "never run")
    started = time.monotonic()
    pool.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - started < 2
    with pytest.raises(CancelledError):
        queued.result(0)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: None)
    never.set()


async def test_pool_is_accepted_as_the_default_executor() -> None:
    """asyncio takes the pool as its default executor; to_thread runs on it."""
    loop = asyncio.get_running_loop()
    pool = DaemonThreadPool(max_workers=1, thread_name_prefix="probe")
    loop.set_default_executor(pool)
    try:
        name = await asyncio.to_thread(lambda: threading.current_thread().name)
    finally:
        pool.shutdown()
    assert name.startswith("probe-")


@pytest.mark.timeout(10)
def test_bounded_call_times_out_and_counts_stuck_calls() -> None:
    """A call that hangs times out; the limiter refuses more until the stuck one ends."""
    limiter = CallLimiter(1)
    release = threading.Event()
    assert call_with_timeout(lambda: 42, timeout=1, limiter=limiter) == 42
    with pytest.raises(ValueError, match="boom"):
        call_with_timeout(_raise_boom, timeout=1, limiter=limiter)
    with pytest.raises(CallTimeoutError):
        call_with_timeout(lambda: release.wait(5), timeout=0.05, limiter=limiter)
    with pytest.raises(TooManyStuckCallsError):
        call_with_timeout(lambda: 1, timeout=1, limiter=limiter)
    release.set()
    deadline = time.monotonic() + 5
    while limiter.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert call_with_timeout(lambda: 7, timeout=1, limiter=limiter) == 7


def _raise_boom() -> None:
    raise ValueError("boom")


_STUCK_SCRIPT = textwrap.dedent(
    """
    import asyncio, threading, time
    from adapters.runtime import run_loop

    async def main():
        loop = asyncio.get_running_loop()
        stuck = loop.run_in_executor(None, threading.Event().wait)  # never returns
        done = await asyncio.to_thread(lambda: "other work still runs")
        print(done, flush=True)
        await asyncio.wait({stuck}, timeout=0.1)

    started = time.monotonic()
    run_loop(main())
    print(f"returned after {time.monotonic() - started:.2f}", flush=True)
    """
)


@pytest.mark.timeout(30)
def test_a_thread_stuck_for_ever_does_not_hold_up_the_exit() -> None:
    """run_loop returns and the process exits at once although an executor thread never ends."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _STUCK_SCRIPT],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "other work still runs" in done.stdout
    assert "returned after" in done.stdout
    assert time.monotonic() - started < 10
