"""The controller loop: workers take keys off the queue and reconcile them.

This is the one place that turns the outcome of a reconcile into queue actions, log lines and
metric labels (controller-runtime's ``pkg/internal/controller``), so no reconciler
re-implements retries:

============================  ======================================  =====================
outcome                       queue                                   ``result`` label
============================  ======================================  =====================
``Result()``                  forget                                  success
``Result(requeue_after=s)``   forget, add after ``s`` seconds         requeue_after
``Result(requeue=True)``      add rate-limited                        requeue
:class:`PermanentError`       forget; never retried, logged once      error (+ terminal)
:class:`TransientError`       add rate-limited                        error
any other exception           add rate-limited                        error (+ panic)
============================  ======================================  =====================

Any other exception is a bug (in Go, a recovered panic): still retried with backoff, so a
fixed dependency heals it, but counted in ``controller_runtime_reconcile_panics_total`` and
logged at error level with its type and traceback every time, never a silent retry loop.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from controller.errors import PermanentError, TransientError
from controller.metrics import (
    RESULT_ERROR,
    RESULT_REQUEUE,
    RESULT_REQUEUE_AFTER,
    RESULT_SUCCESS,
    Metrics,
)
from controller.workqueue import QueueShutDown, WorkQueue

_log = logging.getLogger(__name__)
# How many keys' last permanent errors are remembered for de-duplicating their log lines; past
# this the oldest is forgotten (and would be logged at error level again).
_MAX_REMEMBERED_TERMINAL = 10_000


@dataclass(frozen=True, slots=True)
class Result:
    """What a successful reconcile asks of the loop; the default means "done"."""

    requeue: bool = False  # run again after the key's backoff
    requeue_after: float | None = None  # run again after this many seconds (wins if > 0)


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
        logger: logging.Logger | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.name = name
        self._queue = queue
        self._reconciler = reconciler
        self._workers = workers
        self._metrics = metrics
        self._log = logger or _log
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # The last permanent error of each key, so a key that keeps coming back (events,
        # resyncs) with the same bad input is logged at error level once, not every time.
        self._terminal: dict[str, str] = {}

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
        try:
            await asyncio.wait(self._tasks)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.wait(self._tasks)
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
            self._count_error(terminal=True)
            message = str(exc)
            level = logging.DEBUG if self._terminal.get(key) == message else logging.ERROR
            self._remember_terminal(key, message)
            self._log.log(
                level,
                "reconcile failed permanently; not retrying",
                extra={"controller": self.name, "key": key, "error": message},
            )
            return
        except Exception as exc:
            # Transient or unexpected: both are retried; only the unexpected one earns a
            # traceback in the log.
            self._queue.add_rate_limited(key)
            self._count_error(terminal=False)
            expected = isinstance(exc, TransientError)
            if not expected:
                self._panics.inc()
            self._log.log(
                logging.WARNING if expected else logging.ERROR,
                "reconcile failed; retrying with backoff"
                if expected
                else "reconcile failed unexpectedly; retrying with backoff",
                exc_info=not expected,
                extra=self._retry_fields(key, exc) | {"error_type": type(exc).__name__},
            )
            return
        finally:
            self._reconcile_time.observe(loop.time() - started)

        self._terminal.pop(key, None)
        # As controller-runtime: a positive requeue_after wins over requeue.
        if result.requeue_after is not None and result.requeue_after > 0:
            self._queue.forget(key)
            self._queue.add_after(key, result.requeue_after)
            self._reconcile_total[RESULT_REQUEUE_AFTER].inc()
        elif result.requeue:
            self._queue.add_rate_limited(key)
            self._reconcile_total[RESULT_REQUEUE].inc()
        else:
            self._queue.forget(key)
            self._reconcile_total[RESULT_SUCCESS].inc()

    def _remember_terminal(self, key: str, message: str) -> None:
        self._terminal.pop(key, None)
        self._terminal[key] = message
        if len(self._terminal) > _MAX_REMEMBERED_TERMINAL:
            del self._terminal[next(iter(self._terminal))]

    def _count_error(self, *, terminal: bool) -> None:
        if terminal:
            self._terminal_errors.inc()
        self._reconcile_errors.inc()
        self._reconcile_total[RESULT_ERROR].inc()

    def _retry_fields(self, key: str, exc: Exception) -> dict[str, object]:
        return {
            "controller": self.name,
            "key": key,
            "error": str(exc) or type(exc).__name__,
            "retries": self._queue.num_requeues(key),
        }
