"""The work queue: de-duplication, exclusive processing, backoff, delays, shutdown, metrics."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from controller.metrics import Metrics
from controller.workqueue import ExponentialFailureRateLimiter, QueueShutDown, WorkQueue
from tests.support.waiting import eventually, stays_pending


def _queue(*, base_delay: float = 0.005) -> WorkQueue:
    return WorkQueue(
        "test", rate_limiter=ExponentialFailureRateLimiter(base_delay=base_delay, max_delay=1.0)
    )


async def test_adds_of_a_waiting_key_fold_into_one() -> None:
    """Adding a key that is already waiting does not queue it twice."""
    q = _queue()
    for key in ("a", "b", "a", "a", "b"):
        q.add(key)
    assert q.len() == 2
    assert [await q.get(), await q.get()] == ["a", "b"]
    assert q.len() == 0


async def test_get_waits_for_an_add() -> None:
    """A worker waiting in get() receives the next key added."""
    q = _queue()
    getter = asyncio.ensure_future(q.get())
    assert await stays_pending(getter, for_seconds=0.01)
    q.add("a")
    assert await asyncio.wait_for(getter, 1) == "a"


async def test_a_key_is_never_handed_to_two_workers() -> None:
    """A key added while a worker holds it is not handed to another worker until done()."""
    q = _queue()
    q.add("a")
    assert await q.get() == "a"
    q.add("a")
    assert q.len() == 0
    second = asyncio.ensure_future(q.get())
    assert await stays_pending(second, for_seconds=0.02)
    q.done("a")
    assert await asyncio.wait_for(second, 1) == "a"


async def test_a_key_added_during_processing_is_requeued_once_on_done() -> None:
    """Any number of adds during processing bring the key back exactly once after done()."""
    q = _queue()
    q.add("a")
    key = await q.get()
    q.add("a")
    q.add("a")
    q.done(key)
    assert q.len() == 1
    assert await q.get() == "a"
    q.done("a")
    assert q.len() == 0


async def test_done_without_new_adds_does_not_requeue() -> None:
    """A key that nobody added while it was processing is gone after done()."""
    q = _queue()
    q.add("a")
    q.done(await q.get())
    assert q.len() == 0


def test_backoff_doubles_per_failure_and_forget_resets_it() -> None:
    """The delay is base * 2**failures, capped at the maximum; forget starts over."""
    limiter = ExponentialFailureRateLimiter(base_delay=0.005, max_delay=0.04)
    assert [limiter.when("a") for _ in range(6)] == [0.005, 0.01, 0.02, 0.04, 0.04, 0.04]
    assert limiter.num_requeues("a") == 6
    assert limiter.when("b") == 0.005
    limiter.forget("a")
    assert limiter.num_requeues("a") == 0
    assert limiter.when("a") == 0.005


def test_backoff_stays_at_the_cap_after_very_many_failures() -> None:
    """Thousands of failures give the cap, never an overflow."""
    limiter = ExponentialFailureRateLimiter()
    for _ in range(2000):
        delay = limiter.when("a")
    assert delay == 1000.0


def test_default_backoff_is_five_milliseconds() -> None:
    """The default limiter starts at client-go's 5 ms."""
    assert ExponentialFailureRateLimiter().when("a") == 0.005


async def test_add_rate_limited_waits_for_the_growing_backoff() -> None:
    """Each rate-limited add of a key waits twice as long as the one before; forget resets."""
    q = _queue(base_delay=0.02)
    loop = asyncio.get_running_loop()
    elapsed = []
    for _ in range(2):
        start = loop.time()
        q.add_rate_limited("a")
        assert q.len() == 0
        key = await asyncio.wait_for(q.get(), 1)
        elapsed.append(loop.time() - start)
        q.done(key)
    assert q.num_requeues("a") == 2
    assert elapsed[0] >= 0.02
    assert elapsed[1] >= 0.04
    q.forget("a")
    assert q.num_requeues("a") == 0


async def test_add_after_hands_keys_out_in_ready_order() -> None:
    """Delayed keys come out in order of their ready time, not of their adds."""
    q = _queue()
    q.add_after("late", 0.06)
    q.add_after("early", 0.02)
    q.add_after("middle", 0.04)
    assert q.len() == 0
    got = [await asyncio.wait_for(q.get(), 1) for _ in range(3)]
    assert got == ["early", "middle", "late"]


async def test_add_after_keeps_the_earlier_ready_time() -> None:
    """A later delayed add of a waiting key does not postpone it; an earlier one advances it."""
    q = _queue()
    q.add_after("a", 0.15)
    q.add_after("reference", 0.05)
    q.add_after("a", 0.01)
    q.add_after("a", 10)
    assert [await asyncio.wait_for(q.get(), 1) for _ in range(2)] == ["a", "reference"]
    q.done("a")
    # The superseded 0.15 s entry is stale and must not bring the key back.
    await asyncio.sleep(0.15)
    assert q.len() == 0


async def test_add_after_with_no_delay_adds_now() -> None:
    """A zero or negative delay is a plain add."""
    q = _queue()
    q.add_after("a", 0)
    q.add_after("b", -1)
    assert q.len() == 2


async def test_a_delayed_key_that_is_already_waiting_folds_in() -> None:
    """A delayed add that comes due while the key waits in the queue does not duplicate it."""
    q = _queue()
    q.add("a")
    q.add_after("a", 0.01)
    await asyncio.sleep(0.03)
    assert q.len() == 1


async def test_shut_down_wakes_waiting_workers() -> None:
    """Workers blocked in get() raise QueueShutDown when the queue shuts down."""
    q = _queue()
    getters = [asyncio.ensure_future(q.get()) for _ in range(3)]
    await asyncio.sleep(0)
    q.shut_down()
    for getter in getters:
        with pytest.raises(QueueShutDown):
            await asyncio.wait_for(getter, 1)


async def test_shut_down_hands_out_queued_keys_then_raises() -> None:
    """After shutdown, keys already queued are still handed out; then get() raises."""
    q = _queue()
    q.add("a")
    q.shut_down()
    q.add("b")
    assert q.len() == 1
    assert await q.get() == "a"
    with pytest.raises(QueueShutDown):
        await q.get()


async def test_shut_down_drops_delayed_keys() -> None:
    """Delayed adds pending at shutdown never arrive, and new ones are ignored."""
    q = _queue()
    q.add_after("a", 0.01)
    q.shut_down()
    q.add_after("b", 0.01)
    q.add_rate_limited("c")
    await asyncio.sleep(0.03)
    assert q.len() == 0


async def test_shut_down_with_drain_waits_for_keys_in_progress() -> None:
    """The drain returns True once every key handed out is done."""
    q = _queue()
    q.add("a")
    key = await q.get()
    loop = asyncio.get_running_loop()
    loop.call_later(0.02, q.done, key)
    assert await q.shut_down_with_drain(1.0) is True
    assert q.shutting_down


async def test_shut_down_with_drain_gives_up_at_the_timeout() -> None:
    """The drain returns False when a key is still in progress at the timeout."""
    q = _queue()
    q.add("a")
    await q.get()
    assert await q.shut_down_with_drain(0.02) is False


async def test_a_cancelled_worker_does_not_swallow_a_key() -> None:
    """If the worker woken for a key is cancelled first, another waiting worker gets the key."""
    q = _queue()
    first = asyncio.ensure_future(q.get())
    second = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.add("a")
    first.cancel()
    assert await asyncio.wait_for(second, 1) == "a"
    assert first.cancelled()


async def test_metrics_track_adds_depth_latency_and_work() -> None:
    """The queue's series count adds, depth, retries, queue latency and work time by name."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, controller="c")
    q = WorkQueue("c", metrics=metrics.queue_metrics("c"))

    def value(name: str) -> float | None:
        return registry.get_sample_value(name, {"name": "c"})

    q.add("a")
    q.add("a")
    q.add("b")
    assert value("workqueue_adds_total") == 2
    assert value("workqueue_depth") == 2
    key = await q.get()
    assert value("workqueue_depth") == 1
    assert value("workqueue_queue_duration_seconds_count") == 1
    await asyncio.sleep(0.02)
    assert (value("workqueue_unfinished_work_seconds") or 0) >= 0.02
    assert (value("workqueue_longest_running_processor_seconds") or 0) >= 0.02
    q.done(key)
    assert value("workqueue_work_duration_seconds_count") == 1
    assert (value("workqueue_work_duration_seconds_sum") or 0) >= 0.02
    assert value("workqueue_unfinished_work_seconds") == 0
    assert value("workqueue_longest_running_processor_seconds") == 0
    q.add_rate_limited("b")
    q.add_after("d", 0.01)
    assert value("workqueue_retries_total") == 2
    await eventually(lambda: q.len() == 2)
    assert value("workqueue_adds_total") == 3
