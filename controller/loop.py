"""The controller loop: workers take keys off the queue and reconcile them.

This is the one place that turns the outcome of a reconcile into queue actions, log lines and
metric labels (controller-runtime's ``pkg/internal/controller``), so no reconciler
re-implements retries:

============================  ======================================  =====================
outcome                       queue                                   ``result`` label
============================  ======================================  =====================
``Result()``                  forget                                  success
``Result(requeue_after=s)``   forget, add after ``s`` seconds         requeue_after
:class:`PermanentError`       forget; never retried, logged once      error (+ terminal)
:class:`TransientError`       add rate-limited                        error
any other exception           add rate-limited                        error (+ panic)
============================  ======================================  =====================

Any other exception is a bug (in Go, a recovered panic): still retried with backoff, so a
fixed dependency heals it, but counted in ``controller_runtime_reconcile_panics_total`` and
logged at error level with its type and traceback every time, never a silent retry loop.

An expected failure is logged once per key and cause (a warning for a transient one, an error
for a permanent one); the same failure of the same key again is logged at debug level, and the
key's next success at info ("reconcile succeeded after failing"): the counters carry the rate.

The loop also keeps what an operator watches: every key's state by its last outcome
(``winspec_resources``: ready, not_ready, or pending while queued and not reconciled yet; a
key whose object is gone is dropped), and, given the source's first list
(:class:`~controller.ports.InitialKeys`), how far the workers are through it: progress every
few seconds while it lasts, then one line saying it was worked through and how long it took.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from controller.errors import PermanentError, TransientError
from controller.metrics import (
    RESOURCE_STATES,
    RESULT_ERROR,
    RESULT_REQUEUE,
    RESULT_REQUEUE_AFTER,
    RESULT_SUCCESS,
    STATE_NOT_READY,
    STATE_PENDING,
    STATE_READY,
    Metrics,
)
from controller.ports import InitialKeys
from controller.workqueue import QueueShutDown, WorkQueue

_log = logging.getLogger(__name__)
# How many keys' last failures are remembered for de-duplicating their log lines; past this
# the oldest is forgotten (and its failure would be logged at warning or error level again).
_MAX_REMEMBERED_FAILURES = 10_000
#: How often the progress of a long first pass over the existing objects is logged.
PROGRESS_INTERVAL_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Result:
    """What a successful reconcile asks of the loop; the default means "done"."""

    requeue_after: float | None = None  # run again after this many seconds (wins if > 0)
    gone: bool = False  # the key's object no longer exists: it is no longer counted


class Reconciler(Protocol):
    """Brings the world in line with the current state of one key (level-triggered)."""

    async def reconcile(self, key: str) -> Result:
        """Reconcile ``key``; raise :class:`PermanentError` for input that cannot succeed."""
        ...


class Controller:
    """Runs ``workers`` concurrent reconciles of the keys in ``queue``."""

    def __init__(
        self,
        name: str,
        *,
        queue: WorkQueue,
        reconciler: Reconciler,
        workers: int,
        metrics: Metrics,
        initial: InitialKeys | None = None,
        progress_interval: float = PROGRESS_INTERVAL_SECONDS,
    ) -> None:
        """``initial``: the source whose first list the loop reports its first pass over."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.name = name
        self._queue = queue
        self._reconciler = reconciler
        self._workers = workers
        self._metrics = metrics
        self._log = _log
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # The cause of each failing key's last failure, so a key that keeps failing the same
        # way (retries, events, resyncs) is logged at warning or error level once, not every
        # time, and its recovery is logged.
        self._failing: dict[str, str] = {}
        # Each key's state by its last outcome (keys queued and never reconciled are pending).
        self._states: dict[str, str] = {}
        self._state_counts = dict.fromkeys(RESOURCE_STATES, 0)
        for state in RESOURCE_STATES:
            metrics.resources.labels(controller=name, state=state).set_function(
                functools.partial(self._count_state, state)
            )
        self._initial = initial
        self._progress_interval = progress_interval
        # Only with a source to report on: otherwise nothing is kept per key for it.
        self._first_pass = _FirstPass() if initial is not None else None

        # Every label controller-runtime exports, at zero until counted: dashboards find the
        # series (winspec never asks for a plain rate-limited requeue, so "requeue" stays 0).
        self._reconcile_total = {
            result: metrics.reconcile_total.labels(controller=name, result=result)
            for result in (RESULT_SUCCESS, RESULT_ERROR, RESULT_REQUEUE, RESULT_REQUEUE_AFTER)
        }
        self._reconcile_errors = metrics.reconcile_errors.labels(controller=name)
        self._terminal_errors = metrics.terminal_reconcile_errors.labels(controller=name)
        self._panics = metrics.reconcile_panics.labels(controller=name)
        self._reconcile_time = metrics.reconcile_time.labels(controller=name)
        self._active_workers = metrics.active_workers.labels(controller=name)

    async def run(self) -> None:
        """Run the workers until :meth:`stop` (or a shutdown of the queue) ends them."""
        if self._tasks:
            raise RuntimeError(f"controller {self.name} is already running")
        self._metrics.max_concurrent_reconciles.labels(controller=self.name).set(self._workers)
        self._log.info(
            "starting workers", extra={"controller": self.name, "workers": self._workers}
        )
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"{self.name}-worker-{i}")
            for i in range(self._workers)
        ]
        reporting: list[asyncio.Task[None]] = []
        if self._initial is not None and self._first_pass is not None:
            first_pass = self._report_first_pass(self._initial, self._first_pass)
            reporting.append(asyncio.create_task(first_pass, name=f"{self.name}-first-pass"))
        try:
            await asyncio.wait(self._tasks)
        finally:
            for task in (*self._tasks, *reporting):
                task.cancel()
            await asyncio.wait([*self._tasks, *reporting])
        self._log.info("workers stopped", extra={"controller": self.name})
        for task in self._tasks:
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc

    async def stop(self, deadline: float) -> None:
        """Take no more keys; give in-flight reconciles ``deadline`` seconds, then cancel them."""
        self._stopping = True
        self._queue.shut_down()
        running = [task for task in self._tasks if not task.done()]
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=max(deadline, 0.0))
        if late:
            self._log.warning(
                "cancelling reconciles still running at the deadline",
                extra={"controller": self.name, "count": len(late)},
            )
            for task in late:
                task.cancel()
            await asyncio.wait(late)

    async def _worker(self) -> None:
        while not self._stopping:
            try:
                key = await self._queue.get()
            except QueueShutDown:
                return
            try:
                if self._stopping:
                    return  # level-triggered: the next start lists it again
                self._active_workers.inc()
                try:
                    await self._reconcile_handler(key)
                finally:
                    self._active_workers.dec()
            finally:
                self._queue.done(key)

    async def _reconcile_handler(self, key: str) -> None:
        """Reconcile one key and turn the outcome into queue actions, logs and metrics."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            result = await self._reconciler.reconcile(key)
        except PermanentError as exc:
            self._queue.forget(key)
            self._count_error(key, terminal=True)
            message = str(exc)
            self._log.log(
                self._failure_level(key, exc, logging.ERROR),
                "reconcile failed permanently; not retrying",
                extra={"controller": self.name, "key": key, "error": message},
            )
            return
        except Exception as exc:
            # Transient or unexpected: both are retried; only the unexpected one earns a
            # traceback in the log, every time.
            self._queue.add_rate_limited(key)
            self._count_error(key, terminal=False)
            expected = isinstance(exc, TransientError)
            level = self._failure_level(key, exc, logging.WARNING)
            if not expected:
                self._panics.inc()
                level = logging.ERROR
            self._log.log(
                level,
                "reconcile failed; retrying with backoff"
                if expected
                else "reconcile failed unexpectedly; retrying with backoff",
                exc_info=not expected,
                extra=self._retry_fields(key, exc) | {"error_type": type(exc).__name__},
            )
            return
        finally:
            self._reconcile_time.observe(loop.time() - started)

        failed = self._failing.pop(key, None)
        if failed is not None:
            self._log.info(
                "reconcile succeeded after failing",
                extra={
                    "controller": self.name,
                    "key": key,
                    "previous_error": failed,
                    "retries": self._queue.num_requeues(key),
                },
            )
        if self._first_pass is not None:
            self._first_pass.attempted(key, ok=True)
        if result.requeue_after is not None and result.requeue_after > 0:
            self._queue.forget(key)
            self._queue.add_after(key, result.requeue_after)
            self._reconcile_total[RESULT_REQUEUE_AFTER].inc()
            self._set_state(key, None if result.gone else STATE_READY)
        else:
            self._queue.forget(key)
            self._reconcile_total[RESULT_SUCCESS].inc()
            self._set_state(key, None if result.gone else STATE_READY)

    def _failure_level(self, key: str, exc: Exception, first: int) -> int:
        """``first`` for a key's first failure of this cause, debug for the same one again."""
        cause = str(exc) or type(exc).__name__
        level = logging.DEBUG if self._failing.get(key) == cause else first
        self._failing.pop(key, None)
        self._failing[key] = cause
        if len(self._failing) > _MAX_REMEMBERED_FAILURES:
            del self._failing[next(iter(self._failing))]
        return level

    def _count_error(self, key: str, *, terminal: bool) -> None:
        if terminal:
            self._terminal_errors.inc()
        self._reconcile_errors.inc()
        self._reconcile_total[RESULT_ERROR].inc()
        self._set_state(key, STATE_NOT_READY)
        if self._first_pass is not None:
            self._first_pass.attempted(key, ok=False)

    def _set_state(self, key: str, state: str | None) -> None:
        """Record the state of ``key`` (``None``: its object is gone, forget it)."""
        previous = self._states.pop(key, None) if state is None else self._states.get(key)
        if previous is not None:
            self._state_counts[previous] -= 1
        if state is not None:
            self._states[key] = state
            self._state_counts[state] += 1

    def _count_state(self, state: str) -> float:
        """How many keys are in ``state``: pending ones include those queued and never seen."""
        count = self._state_counts[state]
        if state == STATE_PENDING:
            count += len(self._queue.keys().difference(tuple(self._states)))
        return float(count)

    async def _report_first_pass(self, initial: InitialKeys, first: _FirstPass) -> None:
        """Once the source's first list is in, log progress through it every few seconds
        while it lasts, then that it was worked through."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        first.listed(await initial.initial_keys())
        while first.remaining:
            try:
                async with asyncio.timeout(self._progress_interval):
                    await first.finished.wait()
            except TimeoutError:
                self._log.info(
                    "reconciling the existing resources",
                    extra={
                        "controller": self.name,
                        "done": first.total - len(first.remaining),
                        "total": first.total,
                        "seconds": round(loop.time() - started, 2),
                    },
                )
        self._log.info(
            "reconciled the existing resources",
            extra={
                "controller": self.name,
                "resources": first.total,
                "failed": first.failed,
                "seconds": round(loop.time() - started, 2),
            },
        )

    def _retry_fields(self, key: str, exc: Exception) -> dict[str, object]:
        return {
            "controller": self.name,
            "key": key,
            "error": str(exc) or type(exc).__name__,
            "retries": self._queue.num_requeues(key),
        }


class _FirstPass:
    """How far the workers are through the keys of the source's first list.

    Keys reconciled before the list is complete count too: a source enqueues them as it lists.
    A key counts once its first reconcile ends, whatever the outcome.
    """

    def __init__(self) -> None:
        self.before: dict[str, bool] | None = {}  # until the list is in: key -> last outcome ok
        self.remaining: set[str] = set()
        self.total = 0
        self.failed = 0
        self.finished = asyncio.Event()

    def listed(self, keys: Iterable[str]) -> None:
        """The list is in: what is left of it."""
        before, self.before = self.before or {}, None
        self.remaining = set(keys)
        self.total = len(self.remaining)
        for key, ok in before.items():
            self._done(key, ok)
        if not self.remaining:
            self.finished.set()

    def attempted(self, key: str, *, ok: bool) -> None:
        """A reconcile of ``key`` ended."""
        if self.before is not None:
            self.before[key] = ok
        elif self.remaining:
            self._done(key, ok)
            if not self.remaining:
                self.finished.set()

    def _done(self, key: str, ok: bool) -> None:
        if key in self.remaining:
            self.remaining.discard(key)
            self.failed += not ok
