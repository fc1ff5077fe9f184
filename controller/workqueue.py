"""The work queue between key sources and reconcile workers (client-go's, on asyncio).

Sources only put keys here; workers take them out. The queue is what makes the loop
level-triggered and safe to run with many workers:

- a key is handed to at most one worker at a time (the *processing* set);
- adding a key that is already waiting folds into the waiting entry (the *dirty* set), so a
  burst of events for one object costs one reconcile;
- a key added while a worker holds it is handed out again once that worker calls
  :meth:`WorkQueue.done`, so no change is lost;
- failures come back after a per-key exponential backoff (:meth:`WorkQueue.add_rate_limited`)
  that :meth:`WorkQueue.forget` resets;
- delayed adds wait on one ``loop.call_at`` timer for the earliest of them, never a poll.

Every method must be called from the thread running the event loop; only the scrape-time
gauges read the queue from elsewhere, and they read a snapshot.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from typing import Protocol

from controller.metrics import QueueMetrics

DEFAULT_BASE_DELAY = 0.005
DEFAULT_MAX_DELAY = 1000.0
# Past 2**63 base delays Go's limiter returns the cap; so does ours (and floats stay finite).
_MAX_EXPONENT = 63


class QueueShutDown(Exception):  # noqa: N818 - named after asyncio.QueueShutDown (3.13)
    """The queue was shut down and has no key left to hand out."""


class RateLimiter(Protocol):
    """Decides how long a key waits before it is retried."""

    def when(self, key: str) -> float:
        """The delay before the next retry of ``key`` (counts this as one more failure)."""
        ...

    def forget(self, key: str) -> None:
        """Stop tracking ``key``: its next failure starts the backoff from the beginning."""
        ...

    def num_requeues(self, key: str) -> int:
        """How many failures of ``key`` are being tracked."""
        ...


class ExponentialFailureRateLimiter:
    """client-go's ItemExponentialFailureRateLimiter: ``base * 2**failures``, capped."""

    def __init__(
        self, *, base_delay: float = DEFAULT_BASE_DELAY, max_delay: float = DEFAULT_MAX_DELAY
    ) -> None:
        if base_delay < 0 or max_delay < base_delay:
            raise ValueError("need 0 <= base_delay <= max_delay")
        self._base = base_delay
        self._max = max_delay
        self._failures: dict[str, int] = {}

    def when(self, key: str) -> float:
        """The delay before the next retry of ``key`` (counts this as one more failure)."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        if failures > _MAX_EXPONENT:
            return self._max
        return min(self._base * 2.0**failures, self._max)

    def forget(self, key: str) -> None:
        """Stop tracking ``key``: its next failure starts the backoff from the beginning."""
        self._failures.pop(key, None)

    def num_requeues(self, key: str) -> int:
        """How many failures of ``key`` are being tracked."""
        return self._failures.get(key, 0)


class WorkQueue:
    """A de-duplicating, rate-limited, delaying queue of string keys for async workers."""

    def __init__(
        self,
        name: str,
        *,
        metrics: QueueMetrics | None = None,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.name = name
        self._metrics = metrics
        self._rate_limiter: RateLimiter = rate_limiter or ExponentialFailureRateLimiter()
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: dict[str, float] = {}  # key -> loop time it was handed out
        self._added_at: dict[str, float] = {}  # key -> loop time it became dirty
        # Delayed adds: a heap of (ready time, tie-breaker, key), and each key's earliest ready
        # time; heap entries that no longer match it are stale and skipped.
        self._waiting: list[tuple[float, int, str]] = []
        self._ready_at: dict[str, float] = {}
        self._sequence = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._getters: deque[asyncio.Future[None]] = deque()
        self._idle = asyncio.Event()
        self._idle.set()
        self._shutting_down = False
        self._loop: asyncio.AbstractEventLoop | None = None
        if metrics is not None:
            metrics.unfinished_work.set_function(self._unfinished_work_seconds)
            metrics.longest_running_processor.set_function(self._longest_running_seconds)

    # -- adding ----------------------------------------------------------------------------

    def add(self, key: str) -> None:
        """Queue ``key`` unless it is already waiting; ignored after shutdown."""
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        self._added_at.setdefault(key, self._now())
        if self._metrics is not None:
            self._metrics.adds.inc()
            self._metrics.depth.set(len(self._dirty))
        if key in self._processing:
            return  # handed out again by done()
        self._queue.append(key)
        self._wake_one_getter()

    def add_after(self, key: str, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds; an earlier pending time for it wins."""
        if self._shutting_down:
            return
        if self._metrics is not None:
            self._metrics.retries.inc()
        if delay <= 0:
            self.add(key)
            return
        ready = self._now() + delay
        current = self._ready_at.get(key)
        if current is not None and current <= ready:
            return
        self._ready_at[key] = ready
        heapq.heappush(self._waiting, (ready, next(self._sequence), key))
        self._arm_timer()

    def add_rate_limited(self, key: str) -> None:
        """Queue ``key`` after its backoff, which doubles with every call until forgotten."""
        self.add_after(key, self._rate_limiter.when(key))

    def forget(self, key: str) -> None:
        """Reset the backoff of ``key`` (it succeeded, or will never be retried)."""
        self._rate_limiter.forget(key)

    def num_requeues(self, key: str) -> int:
        """How many rate-limited adds of ``key`` happened since it was last forgotten."""
        return self._rate_limiter.num_requeues(key)

    # -- taking ----------------------------------------------------------------------------

    async def get(self) -> str:
        """Wait for a key and mark it processing; raises :class:`QueueShutDown` when drained.

        Keys already queued are still handed out after :meth:`shut_down`; the caller must
        call :meth:`done` with every key it got.
        """
        while not self._queue:
            if self._shutting_down:
                raise QueueShutDown(self.name)
            getter = self._get_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                # As asyncio.Queue: a cancelled getter must not swallow a wake-up meant for
                # another one.
                getter.cancel()
                if getter in self._getters:
                    self._getters.remove(getter)
                if self._queue and not getter.cancelled():
                    self._wake_one_getter()
                raise
        key = self._queue.popleft()
        now = self._now()
        self._dirty.discard(key)
        self._processing[key] = now
        self._idle.clear()
        added = self._added_at.pop(key, None)
        if self._metrics is not None:
            self._metrics.depth.set(len(self._dirty))
            if added is not None:
                self._metrics.queue_duration.observe(now - added)
        return key

    def done(self, key: str) -> None:
        """Mark ``key`` finished; if it was added meanwhile, it is queued again."""
        started = self._processing.pop(key, None)
        if started is None:
            return
        if self._metrics is not None:
            self._metrics.work_duration.observe(self._now() - started)
        if key in self._dirty:
            self._queue.append(key)
            self._wake_one_getter()
        if not self._processing:
            self._idle.set()

    def keys(self) -> set[str]:
        """Every key waiting, delayed or being processed (a snapshot; safe from a scrape)."""
        # Each copy is one step under the GIL (builtin containers of str, copied in C).
        return set(self._dirty) | set(self._ready_at) | set(self._processing)

    def len(self) -> int:
        """How many keys are ready to be handed out (not those processing or delayed)."""
        return len(self._queue)

    # -- shutting down ---------------------------------------------------------------------

    @property
    def shutting_down(self) -> bool:
        """Whether :meth:`shut_down` was called."""
        return self._shutting_down

    def shut_down(self) -> None:
        """Refuse new keys, drop delayed ones and wake every waiting :meth:`get`."""
        self._shutting_down = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting.clear()
        self._ready_at.clear()
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)

    # The timeout is part of the contract (the answer says whether the drain finished), so it
    # is a parameter rather than left to the caller's asyncio.timeout.
    async def shut_down_with_drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - see above
        """Shut down, then wait up to ``timeout`` seconds for every key handed out to be done.

        Returns whether the queue drained in time.
        """
        self.shut_down()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    # -- internals -------------------------------------------------------------------------

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _now(self) -> float:
        return self._get_loop().time()

    def _wake_one_getter(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    def _arm_timer(self) -> None:
        """Keep one timer, set for the earliest delayed key."""
        if not self._waiting:
            return
        first = self._waiting[0][0]
        if self._timer is not None:
            if self._timer.when() <= first:
                return
            self._timer.cancel()
        self._timer = self._get_loop().call_at(first, self._on_timer, first)

    def _on_timer(self, due: float) -> None:
        self._timer = None
        # The loop may run a timer a clock-resolution early; whatever it was armed for is due.
        limit = max(self._now(), due)
        while self._waiting and self._waiting[0][0] <= limit:
            ready, _, key = heapq.heappop(self._waiting)
            if self._ready_at.get(key) != ready:
                continue  # superseded by an earlier add_after
            del self._ready_at[key]
            self.add(key)
        self._arm_timer()

    def _processing_ages(self) -> list[float]:
        loop = self._loop
        # Scrapes may run on another thread: copy the start times in one step (atomic under
        # the GIL) rather than iterate a dict the loop may be resizing.
        starts = tuple(self._processing.values())
        if loop is None or not starts:
            return []
        now = loop.time()
        return [now - start for start in starts]

    def _unfinished_work_seconds(self) -> float:
        return sum(self._processing_ages(), 0.0)

    def _longest_running_seconds(self) -> float:
        return max(self._processing_ages(), default=0.0)
