"""The group commit for writers on an event loop: durability barriers awaited, not blocked on.

:class:`fsops.GroupSync` serves writers in threads. Writers that build their bundles on the
event loop (``LocalBundleWriter`` on a local disk) wait here instead: each awaits a future, one
worker thread runs the ``syncfs`` that covers everybody waiting, and its completion wakes them
all at once. So a barrier costs the loop one hand-off to a thread and back per ``syncfs``, not
one per writer (nor one per system call, as a write in a thread does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LoopGroupSync:
    """Durability barriers shared by the coroutines of one event loop.

    :meth:`wait` returns once a ``sync`` that *began after* it was called has finished: if none
    is running, one starts at once; if one is, the caller joins the next, which starts when the
    running one ends, for everybody who joined meanwhile. A failing ``sync`` raises its
    :class:`OSError` in every caller it was meant to cover. ``sync`` runs in the loop's default
    executor.
    """

    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync
        self._running: asyncio.Future[None] | None = None
        self._next: asyncio.Future[None] | None = None
        #: How many syncs ran (for tests and benchmarks).
        self.syncs = 0

    async def wait(self) -> None:
        """Wait until everything written before this call is durable."""
        loop = asyncio.get_running_loop()
        if self._running is None:
            batch = self._start(loop)
        else:
            if self._next is None:
                self._next = loop.create_future()
            batch = self._next
        # Shielded: one caller cancelled leaves the others' sync alone.
        await asyncio.shield(batch)

    def _start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        self.syncs += 1
        running = self._running = loop.run_in_executor(None, self._sync)
        running.add_done_callback(self._finished)
        return running

    def _finished(self, running: asyncio.Future[None]) -> None:
        if not running.cancelled():
            running.exception()  # retrieved here: its waiters may all have gone
        self._running = None
        waiting, self._next = self._next, None
        if waiting is not None:
            follow = self._start(running.get_loop())
            follow.add_done_callback(lambda done: _pass_on(done, waiting))


def _pass_on(done: asyncio.Future[None], to: asyncio.Future[None]) -> None:
    """Settle ``to`` as ``done`` was settled."""
    if to.done():
        return
    if done.cancelled():
        to.cancel()
    elif (error := done.exception()) is not None:
        to.set_exception(error)
    else:
        to.set_result(None)
