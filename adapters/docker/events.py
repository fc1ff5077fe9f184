"""The Docker event source: container ``create``/``destroy`` events, lists and resyncs.

It never trusts the stream alone. The stream is opened first, then the containers are listed
(so nothing created in between is missed); after every reconnect it asks for the events since
the last one seen (the engine keeps only 256) and lists again; a periodic resync lists too;
and a silent stream is restarted by an inactivity watchdog. Every path only enqueues
container ids: what to do with them is the reconciler's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from adapters.docker.client import DockerClient
from controller.errors import WinspecError

log = logging.getLogger(__name__)

EVENT_FILTERS = {"type": ["container"], "event": ["create", "destroy"]}
READY_CONDITION = "docker-events"


@dataclass(frozen=True, slots=True)
class EventSourceSettings:
    """Timing of the event source."""

    resync_interval: float = 300.0
    idle_timeout: float = 600.0
    reconnect_initial: float = 0.2
    reconnect_max: float = 10.0


@dataclass(frozen=True, slots=True)
class EventSourceHooks:
    """What the source reports; all optional (metrics and readiness live elsewhere)."""

    on_event: Callable[[str], None] | None = None
    on_restart: Callable[[str], None] | None = None
    on_synced: Callable[[], None] | None = None
    on_ready: Callable[[bool], None] | None = None


class DockerEventSource:
    """Feeds container ids from a Docker engine into the work queue."""

    def __init__(
        self,
        client: DockerClient,
        *,
        enqueue: Callable[[str], None],
        bundle_ids: Callable[[], Awaitable[list[str]]],
        settings: EventSourceSettings | None = None,
        hooks: EventSourceHooks | None = None,
    ) -> None:
        self._client = client
        self._enqueue = enqueue
        self._bundle_ids = bundle_ids
        self._settings = settings or EventSourceSettings()
        self._hooks = hooks or EventSourceHooks()
        self._since: str | None = None
        self._stopping = asyncio.Event()
        self._listed_at: float | None = None  # loop time the current stream was listed

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        self._stopping.set()

    async def relist(self) -> int:
        """List every container and enqueue it, and every bundle whose container is gone."""
        listed = await self._client.get_json(
            "/containers/json", api="container_list", params={"all": "1"}
        )
        live = {str(c["Id"]) for c in listed if isinstance(c, dict) and "Id" in c}
        for cid in sorted(live):
            self._enqueue(cid)
        for bid in await self._bundle_ids():
            if bid not in live:
                self._enqueue(bid)
        if self._hooks.on_synced:
            self._hooks.on_synced()
        return len(live)

    async def run(self) -> None:
        """Watch until stopped: stream, relist on (re)connect, resync periodically."""
        resync = asyncio.create_task(self._resync_loop(), name="docker-resync")
        loop = asyncio.get_running_loop()
        delay = self._settings.reconnect_initial
        try:
            while not self._stopping.is_set():
                self._listed_at = None
                try:
                    await self._watch_once()
                    reason = "closed"
                except TimeoutError:
                    reason = "idle"
                except WinspecError as exc:
                    reason = "error"
                    log.warning("docker event stream failed: %s", exc)
                self._set_ready(False)
                if self._stopping.is_set():
                    break
                if self._hooks.on_restart:
                    self._hooks.on_restart(reason)
                if (
                    self._listed_at is not None
                    and loop.time() - self._listed_at >= self._settings.reconnect_max
                ):
                    # A stream that worked for a while starts the backoff afresh, rather than
                    # where an earlier outage left it; one that keeps failing fast still backs off.
                    delay = self._settings.reconnect_initial
                log.info("restarting docker event stream (%s) in %.1fs", reason, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                delay = min(delay * 2, self._settings.reconnect_max)
                if reason == "idle":
                    delay = self._settings.reconnect_initial
        finally:
            resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await resync

    async def _watch_once(self) -> None:
        stream = self._client.events(filters=EVENT_FILTERS, since=self._since)
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        try:
            first = True
            while True:
                nxt = asyncio.ensure_future(anext(stream))
                done, _ = await asyncio.wait(
                    {nxt, stop_wait},
                    timeout=self._settings.idle_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if stop_wait in done:
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await nxt
                    return
                if not done:
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await nxt
                    raise TimeoutError
                try:
                    event = nxt.result()
                except StopAsyncIteration:
                    return
                if first:
                    # The stream is open: list now, so nothing between list and stream is lost.
                    first = False
                    await self.relist()
                    self._listed_at = asyncio.get_running_loop().time()
                    self._set_ready(True)
                    continue
                self._handle(event)
        finally:
            stop_wait.cancel()
            await stream.aclose()

    def _handle(self, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        cid = actor.get("ID") or event.get("id")
        action = str(event.get("Action") or event.get("status") or "")
        if event.get("time") is not None:
            self._since = str(event["time"])
        if not isinstance(cid, str) or not cid:
            return
        if self._hooks.on_event:
            self._hooks.on_event(action)
        self._enqueue(cid)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.resync_interval)
            try:
                await self.relist()
            except WinspecError as exc:
                log.warning("periodic resync failed: %s", exc)

    def _set_ready(self, ready: bool) -> None:
        if self._hooks.on_ready:
            self._hooks.on_ready(ready)
