"""The controller loop: the outcome-to-action table, its metrics, concurrency and stopping."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager

import pytest
from prometheus_client import CollectorRegistry

from controller.errors import PermanentError, TransientError
from controller.loop import Controller, Result
from controller.metrics import Metrics
from controller.ports import InitialKeys
from controller.workqueue import ExponentialFailureRateLimiter, WorkQueue
from tests.support.waiting import eventually

NAME = "test"
Behaviour = Callable[[str, int], Awaitable[Result]]


class ScriptedReconciler:
    """A Reconciler whose outcome for each call is decided by a function of (key, attempt)."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.calls: list[str] = []
        self.running: Counter[str] = Counter()
        self.max_running = 0
        self.max_running_per_key = 0

    async def reconcile(self, key: str) -> Result:
        """Run the scripted behaviour, tracking how many reconciles overlap."""
        attempt = self.calls.count(key)
        self.calls.append(key)
        self.running[key] += 1
        self.max_running = max(self.max_running, self.running.total())
        self.max_running_per_key = max(self.max_running_per_key, self.running[key])
        try:
            return await self.behaviour(key, attempt)
        finally:
            self.running[key] -= 1


class Harness:
    """A controller on a fresh registry, with a fast backoff."""

    def __init__(
        self,
        behaviour: Behaviour,
        *,
        workers: int = 1,
        initial: InitialKeys | None = None,
        progress_interval: float = 5.0,
    ) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, controller=NAME)
        self.queue = WorkQueue(
            NAME,
            metrics=self.metrics.queue_metrics(NAME),
            rate_limiter=ExponentialFailureRateLimiter(base_delay=0.005, max_delay=0.05),
        )
        self.reconciler = ScriptedReconciler(behaviour)
        self.controller = Controller(
            NAME,
            queue=self.queue,
            reconciler=self.reconciler,
            workers=workers,
            metrics=self.metrics,
            initial=initial,
            progress_interval=progress_interval,
        )

    def sample(self, name: str, **labels: str) -> float | None:
        """A sample of the controller's series (the controller label is filled in)."""
        return self.registry.get_sample_value(name, {"controller": NAME, **labels})

    def total(self, result: str) -> float | None:
        """``controller_runtime_reconcile_total`` for one result."""
        return self.sample("controller_runtime_reconcile_total", result=result)

    async def wait_for_total(self, result: str, count: int) -> None:
        """Wait until ``count`` reconciles ended with ``result``."""
        await eventually(lambda: self.total(result) == count)

    @asynccontextmanager
    async def running(self, *, deadline: float = 1.0) -> AsyncIterator[asyncio.Task[None]]:
        """Run the controller for the body, then stop it."""
        task = asyncio.create_task(self.controller.run())
        try:
            yield task
        finally:
            await self.controller.stop(deadline)
            await asyncio.wait_for(task, 2)


async def _succeed(key: str, attempt: int) -> Result:
    return Result()


async def test_success_forgets_the_key_and_counts_success() -> None:
    """A plain Result resets the key's backoff and counts result=success."""
    h = Harness(_succeed)
    h.queue.add_rate_limited("a")  # leaves one tracked failure to forget
    async with h.running():
        await eventually(lambda: h.total("success") == 1)
        assert h.queue.num_requeues("a") == 0
    assert h.total("error") == 0
    assert h.sample("controller_runtime_reconcile_errors_total") == 0
    assert h.sample("controller_runtime_reconcile_time_seconds_count") == 1


async def test_requeue_after_comes_back_after_the_delay() -> None:
    """Result(requeue_after=s) forgets the backoff and brings the key back after s seconds."""
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def behaviour(key: str, attempt: int) -> Result:
        times.append(loop.time())
        return Result(requeue_after=0.03) if attempt == 0 else Result()

    h = Harness(behaviour)
    h.queue.add("a")
    async with h.running():
        await eventually(lambda: h.total("success") == 1)
    assert h.total("requeue_after") == 1
    assert times[1] - times[0] >= 0.03
    assert h.queue.num_requeues("a") == 0


async def test_permanent_error_is_not_retried() -> None:
    """A PermanentError counts a terminal error and an error, forgets the key, never retries."""

    async def behaviour(key: str, attempt: int) -> Result:
        raise PermanentError("bad input")

    h = Harness(behaviour)
    h.queue.add_rate_limited("a")
    async with h.running():
        await eventually(lambda: h.total("error") == 1)
        await asyncio.sleep(0.03)
    assert h.reconciler.calls == ["a"]
    assert h.queue.num_requeues("a") == 0
    assert h.sample("controller_runtime_terminal_reconcile_errors_total") == 1
    assert h.sample("controller_runtime_reconcile_errors_total") == 1


async def test_transient_error_is_retried_with_backoff() -> None:
    """A TransientError re-adds the key with backoff until it succeeds; then backoff resets."""
    tracked: list[int] = []

    async def behaviour(key: str, attempt: int) -> Result:
        tracked.append(h.queue.num_requeues(key))
        if attempt < 3:
            raise TransientError("connection lost")
        return Result()

    h = Harness(behaviour)
    h.queue.add("a")
    async with h.running():
        await eventually(lambda: h.total("success") == 1)
    assert tracked == [0, 1, 2, 3]
    assert h.total("error") == 3
    assert h.sample("controller_runtime_reconcile_errors_total") == 3
    assert h.sample("controller_runtime_terminal_reconcile_errors_total") == 0
    assert h.queue.num_requeues("a") == 0


async def test_unexpected_exception_is_retried_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Any other exception is retried like a transient error and logged with its traceback."""

    async def behaviour(key: str, attempt: int) -> Result:
        if attempt == 0:
            raise KeyError("surprise")
        return Result()

    h = Harness(behaviour)
    h.queue.add("a")
    with caplog.at_level(logging.INFO, logger="controller.loop"):
        async with h.running():
            await eventually(lambda: h.total("success") == 1)
    assert h.total("error") == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert errors[0].__dict__["key"] == "a"


async def test_unexpected_exceptions_are_counted_as_panics_and_logged_with_their_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each unexpected exception counts a panic and logs its type at error; transients do not."""

    async def behaviour(key: str, attempt: int) -> Result:
        if attempt == 0:
            raise TransientError("connection lost")
        if attempt < 4:
            raise RecursionError("maximum recursion depth exceeded")
        return Result()

    h = Harness(behaviour)
    assert h.sample("controller_runtime_reconcile_panics_total") == 0
    h.queue.add("a")
    with caplog.at_level(logging.INFO, logger="controller.loop"):
        async with h.running():
            await eventually(lambda: h.total("success") == 1)
    assert h.sample("controller_runtime_reconcile_panics_total") == 3
    assert h.total("error") == 4
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.__dict__["error_type"] for r in errors] == ["RecursionError"] * 3
    assert [r.__dict__["retries"] for r in errors] == [2, 3, 4]  # after the transient one


async def test_a_repeated_permanent_error_is_logged_at_error_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same permanent error of a key is logged at error level once, however often it recurs."""

    async def behaviour(key: str, attempt: int) -> Result:
        raise PermanentError("bad input")

    h = Harness(behaviour)
    with caplog.at_level(logging.DEBUG, logger="controller.loop"):
        async with h.running():
            for expected in (1, 2, 3):
                h.queue.add("a")
                await h.wait_for_total("error", expected)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].__dict__["error"] == "bad input"
    assert h.sample("controller_runtime_terminal_reconcile_errors_total") == 3


async def test_remembered_permanent_errors_are_bounded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the memory limit the oldest key is forgotten and its error logged at error again."""
    monkeypatch.setattr("controller.loop._MAX_REMEMBERED_FAILURES", 2)

    async def behaviour(key: str, attempt: int) -> Result:
        raise PermanentError("bad input")

    h = Harness(behaviour)
    with caplog.at_level(logging.ERROR, logger="controller.loop"):
        async with h.running():
            for count, key in enumerate(["a", "b", "c", "a"], start=1):
                h.queue.add(key)
                await h.wait_for_total("error", count)
    logged = [r.__dict__["key"] for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == ["a", "b", "c", "a"]


async def test_workers_bound_the_concurrency() -> None:
    """With workers=N, at most N reconciles run at once, and N do when there is enough work."""

    async def behaviour(key: str, attempt: int) -> Result:
        await asyncio.sleep(0.01)
        return Result()

    h = Harness(behaviour, workers=3)
    for i in range(10):
        h.queue.add(f"k{i}")
    async with h.running():
        await eventually(lambda: h.total("success") == 10)
        assert h.sample("controller_runtime_max_concurrent_reconciles") == 3
    assert h.reconciler.max_running == 3
    assert h.sample("controller_runtime_active_workers") == 0


async def test_active_workers_counts_reconciles_in_progress() -> None:
    """controller_runtime_active_workers is the number of workers inside a reconcile."""
    release = asyncio.Event()

    async def behaviour(key: str, attempt: int) -> Result:
        await release.wait()
        return Result()

    h = Harness(behaviour, workers=4)
    h.queue.add("a")
    h.queue.add("b")
    async with h.running():
        await eventually(lambda: h.sample("controller_runtime_active_workers") == 2)
        release.set()
        await eventually(lambda: h.sample("controller_runtime_active_workers") == 0)


async def test_one_key_is_never_reconciled_twice_at_once() -> None:
    """Adds of a key during its reconcile wait for it and then run it once more."""
    started = asyncio.Event()
    release = asyncio.Event()

    async def behaviour(key: str, attempt: int) -> Result:
        if attempt == 0:
            started.set()
            await release.wait()
        return Result()

    h = Harness(behaviour, workers=4)
    h.queue.add("a")
    async with h.running():
        await asyncio.wait_for(started.wait(), 1)
        for _ in range(5):
            h.queue.add("a")
        await asyncio.sleep(0.02)
        assert h.reconciler.calls == ["a"]
        release.set()
        await eventually(lambda: h.total("success") == 2)
    assert h.reconciler.calls == ["a", "a"]
    assert h.reconciler.max_running_per_key == 1


async def test_stop_lets_reconciles_in_progress_finish() -> None:
    """stop() waits for a running reconcile that ends before the deadline."""
    finished: list[str] = []

    async def behaviour(key: str, attempt: int) -> Result:
        await asyncio.sleep(0.03)
        finished.append(key)
        return Result()

    h = Harness(behaviour)
    h.queue.add("a")
    task = asyncio.create_task(h.controller.run())
    await eventually(lambda: h.reconciler.calls == ["a"])
    await h.controller.stop(1.0)
    assert finished == ["a"]
    await asyncio.wait_for(task, 1)
    assert h.total("success") == 1


async def test_stop_cancels_reconciles_past_the_deadline() -> None:
    """A reconcile still running at the deadline is cancelled and run() returns."""
    cancelled = asyncio.Event()

    async def behaviour(key: str, attempt: int) -> Result:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Result()

    h = Harness(behaviour)
    h.queue.add("a")
    task = asyncio.create_task(h.controller.run())
    await eventually(lambda: h.reconciler.calls == ["a"])
    loop = asyncio.get_running_loop()
    start = loop.time()
    await h.controller.stop(0.02)
    assert loop.time() - start < 2
    assert cancelled.is_set()
    await asyncio.wait_for(task, 1)
    assert h.sample("controller_runtime_active_workers") == 0
    assert h.total("success") == 0


async def test_stop_takes_no_more_keys() -> None:
    """Keys still queued when stop() is called are not reconciled."""
    release = asyncio.Event()

    async def behaviour(key: str, attempt: int) -> Result:
        await release.wait()
        return Result()

    h = Harness(behaviour)
    for key in ("a", "b", "c"):
        h.queue.add(key)
    task = asyncio.create_task(h.controller.run())
    await eventually(lambda: h.reconciler.calls == ["a"])
    stopping = asyncio.create_task(h.controller.stop(1.0))
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.wait_for(stopping, 1)
    await asyncio.wait_for(task, 1)
    assert h.reconciler.calls == ["a"]


async def test_idle_workers_stop_promptly() -> None:
    """stop() on a controller with an empty queue returns at once, and so does run()."""
    h = Harness(_succeed, workers=3)
    task = asyncio.create_task(h.controller.run())
    await asyncio.sleep(0.01)
    await asyncio.wait_for(h.controller.stop(1.0), 0.5)
    await asyncio.wait_for(task, 0.5)


async def test_run_twice_is_refused() -> None:
    """A controller runs its workers once; a second concurrent run() is an error."""
    h = Harness(_succeed)
    async with h.running():
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already running"):
            await h.controller.run()


def test_workers_must_be_positive() -> None:
    """A controller with no workers is refused."""
    h = Harness(_succeed)
    with pytest.raises(ValueError, match="workers"):
        Controller(NAME, queue=h.queue, reconciler=h.reconciler, workers=0, metrics=h.metrics)


def _records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


async def test_a_repeated_transient_error_is_logged_once_and_its_recovery_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retries failing the same way log one warning (the rest at debug), the success one info."""

    async def behaviour(key: str, attempt: int) -> Result:
        if attempt < 5:
            raise TransientError("ConfigMap ns/settings not found")
        return Result()

    h = Harness(behaviour)
    h.queue.add("a")
    with caplog.at_level(logging.DEBUG, logger="controller.loop"):
        async with h.running():
            await eventually(lambda: h.total("success") == 1)
    failures = _records(caplog, "reconcile failed; retrying with backoff")
    assert [r.levelno for r in failures] == [logging.WARNING] + [logging.DEBUG] * 4
    assert h.sample("controller_runtime_reconcile_errors_total") == 5  # the rate is counted
    recovered = _records(caplog, "reconcile succeeded after failing")
    assert [r.levelno for r in recovered] == [logging.INFO]
    assert recovered[0].__dict__["previous_error"] == "ConfigMap ns/settings not found"
    assert recovered[0].__dict__["retries"] == 5
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r not in failures]


async def test_a_new_cause_or_another_key_is_logged_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A key failing for another reason, or another key failing the same way, warns again."""
    causes = ["Secret ns/a not found", "Secret ns/a not found", "node n1 unreachable"]

    async def behaviour(key: str, attempt: int) -> Result:
        if attempt < len(causes):
            raise TransientError(causes[attempt])
        return Result()

    h = Harness(behaviour)
    with caplog.at_level(logging.DEBUG, logger="controller.loop"):
        async with h.running():
            h.queue.add("a")
            h.queue.add("b")
            await eventually(lambda: h.total("success") == 2)
    warned = [
        (r.__dict__["key"], r.__dict__["error"])
        for r in _records(caplog, "reconcile failed; retrying with backoff")
        if r.levelno == logging.WARNING
    ]
    assert sorted(warned) == sorted(
        (key, cause) for key in "ab" for cause in ("Secret ns/a not found", "node n1 unreachable")
    )
    assert len(_records(caplog, "reconcile succeeded after failing")) == 2


async def test_resources_gauge_follows_each_keys_last_outcome() -> None:
    """winspec_resources counts keys by last outcome: queued ones pending, gone ones dropped."""
    gone: set[str] = set()
    release = asyncio.Event()

    async def behaviour(key: str, attempt: int) -> Result:
        await release.wait()
        if key in gone:
            return Result(gone=True)
        if key == "bad":
            raise PermanentError("refused")
        if key == "flaky" and attempt == 0:
            raise TransientError("connection lost")
        return Result()

    h = Harness(behaviour, workers=2)

    def states() -> dict[str, float | None]:
        return {
            state: h.sample("winspec_resources", state=state)
            for state in ("ready", "not_ready", "pending")
        }

    assert states() == {"ready": 0, "not_ready": 0, "pending": 0}
    for key in ("ok", "bad", "flaky", "gone"):
        h.queue.add(key)
    assert states() == {"ready": 0, "not_ready": 0, "pending": 4}
    gone.add("gone")
    async with h.running():
        await asyncio.sleep(0.01)
        assert states() == {"ready": 0, "not_ready": 0, "pending": 4}  # two being reconciled
        release.set()
        await eventually(lambda: h.total("success") == 3)
        assert states() == {"ready": 2, "not_ready": 1, "pending": 0}
        gone.add("ok")
        h.queue.add("ok")
        await eventually(lambda: h.total("success") == 4)
        assert states() == {"ready": 1, "not_ready": 1, "pending": 0}


class _FirstList:
    """An InitialKeys whose first list arrives when the test says so."""

    def __init__(self) -> None:
        self.keys: asyncio.Future[Collection[str]] = asyncio.get_running_loop().create_future()

    async def initial_keys(self) -> Collection[str]:
        """The keys, once set."""
        return await self.keys


async def test_the_first_pass_reports_progress_then_that_it_is_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Progress through the first list is logged periodically, then one line once all are done."""
    gate = asyncio.Event()

    async def behaviour(key: str, attempt: int) -> Result:
        if key.startswith("slow"):
            await gate.wait()
        if key == "fails":
            raise PermanentError("refused")
        return Result()

    first = _FirstList()
    h = Harness(behaviour, workers=2, initial=first, progress_interval=0.02)
    with caplog.at_level(logging.INFO, logger="controller.loop"):
        async with h.running():
            for key in ("fast", "fails", "slow-1", "slow-2", "event-only"):
                h.queue.add(key)
            # Reconciles that end before the list is complete count: sources enqueue as they list.
            await eventually(lambda: h.total("success") == 1 and h.total("error") == 1)
            first.keys.set_result(["fast", "fails", "slow-1", "slow-2"])
            await eventually(
                lambda: len(_records(caplog, "reconciling the existing resources")) >= 2
            )
            assert not _records(caplog, "reconciled the existing resources")
            gate.set()
            await eventually(lambda: bool(_records(caplog, "reconciled the existing resources")))
    progress = _records(caplog, "reconciling the existing resources")
    assert {(r.__dict__["done"], r.__dict__["total"]) for r in progress} == {(2, 4)}
    (done,) = _records(caplog, "reconciled the existing resources")
    assert (done.__dict__["resources"], done.__dict__["failed"]) == (4, 1)
    assert done.__dict__["seconds"] >= 0.04


async def test_a_quick_first_pass_logs_only_that_it_is_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A first list worked through within the interval logs no progress, just the one line."""
    first = _FirstList()
    h = Harness(_succeed, initial=first, progress_interval=5.0)
    with caplog.at_level(logging.INFO, logger="controller.loop"):
        async with h.running():
            first.keys.set_result(["a", "b"])
            h.queue.add("a")
            h.queue.add("b")
            await eventually(lambda: bool(_records(caplog, "reconciled the existing resources")))
    assert not _records(caplog, "reconciling the existing resources")
    (done,) = _records(caplog, "reconciled the existing resources")
    assert (done.__dict__["resources"], done.__dict__["failed"]) == (2, 0)
