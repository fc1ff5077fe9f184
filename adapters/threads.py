"""Threads that can neither hold up the process's exit nor block a caller for ever.

Blocking file and registry reads run in threads. A read can hang (a FIFO, a file system that
stopped answering): :func:`call_with_timeout` gives up waiting after a bound and leaves the
stuck thread behind as a daemon, and :class:`DaemonThreadPool` is the event loop's default
executor whose threads are daemons too. CPython's own :class:`ThreadPoolExecutor` joins every
worker at interpreter exit (and ``asyncio.run`` joins the default executor's workers with no
timeout), so one stuck read would keep ``winspec run`` alive after SIGTERM for ever.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar, cast

_T = TypeVar("_T")


class CallTimeoutError(Exception):
    """:func:`call_with_timeout` gave up waiting; the call may still be running."""


class TooManyStuckCallsError(Exception):
    """:func:`call_with_timeout` refused to start a call: too many earlier ones never ended."""


class CallLimiter:
    """Counts the calls of :func:`call_with_timeout` still running, up to ``limit``.

    A call that timed out keeps its thread until the operating system answers (perhaps never);
    past ``limit`` such threads new calls are refused at once instead of piling up threads.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._running = 0
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        """How many calls have not ended yet (stuck ones included)."""
        return self._running

    def acquire(self) -> bool:
        """Count one more call; ``False`` (and nothing counted) when ``limit`` are running."""
        with self._lock:
            if self._running >= self.limit:
                return False
            self._running += 1
            return True

    def release(self) -> None:
        """One call ended."""
        with self._lock:
            self._running -= 1


def call_with_timeout(fn: Callable[[], _T], *, timeout: float, limiter: CallLimiter) -> _T:
    """``fn()`` in a daemon thread; its result or exception, or :class:`CallTimeoutError`.

    The caller waits at most ``timeout`` seconds. Raises :class:`TooManyStuckCallsError` without
    starting anything when ``limiter`` already counts its limit of unfinished calls.
    """
    if not limiter.acquire():
        raise TooManyStuckCallsError(f"{limiter.running} earlier calls have not ended")
    done = threading.Event()
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # handed to the caller, whatever it is
            outcome.append((False, exc))
        finally:
            limiter.release()
            done.set()

    try:
        threading.Thread(target=run, name="winspec-bounded-call", daemon=True).start()
    except BaseException:
        limiter.release()
        raise
    if not done.wait(timeout):
        raise CallTimeoutError(f"no answer within {timeout:g} s")
    ok, value = outcome[0]
    if not ok:
        raise cast(BaseException, value)
    return cast(_T, value)


class DaemonThreadPool(ThreadPoolExecutor):
    """A thread pool whose workers are daemon threads that nothing joins at exit.

    A subclass of :class:`ThreadPoolExecutor` only because ``loop.set_default_executor``
    insists on one; it shares none of the parent's machinery (whose workers are joined at
    interpreter exit). :meth:`shutdown` waits at most ``join_timeout`` seconds for running
    work, then abandons it: what is still running then is stuck, and the process may exit.
    """

    def __init__(
        self, max_workers: int, *, thread_name_prefix: str = "winspec-io", join_timeout: float = 0.0
    ) -> None:
        super().__init__(max_workers=1)  # starts no thread: only for isinstance checks
        self._limit = max_workers
        self._prefix = thread_name_prefix
        self._join_timeout = join_timeout
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._state = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        """Schedule ``fn(*args, **kwargs)``; a new daemon worker when none is idle."""
        future: Future[_T] = Future()
        with self._state:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._work.put((future, lambda: fn(*args, **kwargs)))
            if self._idle > 0:
                self._idle -= 1
            elif len(self._workers) < self._limit:
                worker = threading.Thread(
                    target=self._run,
                    name=f"{self._prefix}-{len(self._workers)}",
                    daemon=True,
                )
                worker.start()
                self._workers.append(worker)
        return future

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                self._work.put(None)  # wake the next worker too
                return
            future, call = item
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as exc:  # handed to whoever waits on the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del item, future, call  # drop references before waiting for more work
            with self._state:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; with ``wait``, give running work ``join_timeout`` seconds."""
        with self._state:
            self._closed = True
            workers = list(self._workers)
        if cancel_futures:
            while True:
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        self._work.put(None)
        if wait:
            deadline = time.monotonic() + self._join_timeout
            for worker in workers:
                worker.join(max(deadline - time.monotonic(), 0.0))
