"""The Docker event source: the container and network events a bundle depends on, lists and
resyncs.

A bundle depends on state that changes after a container is created: its endpoints appear and
its ``State.StartedAt`` is set when it starts (S14), ``docker update`` changes its resources,
``docker rename`` its name, ``docker network connect``/``disconnect`` its endpoints. So the
source watches container ``create``, ``start``, ``update``, ``rename`` and ``destroy`` and
network ``connect`` and ``disconnect`` events, and enqueues the id of the container each one is
about (a network event names it in ``Actor.Attributes.container``).

It never trusts the stream alone. The stream is opened first, then the containers are listed
(so nothing created in between is missed); after every reconnect it asks for the events after
the last one seen (the engine keeps only 256) and lists again; a periodic resync lists too;
and a silent stream is restarted by an inactivity watchdog. Every path only enqueues
container ids: what to do with them is the reconciler's business.

:meth:`DockerEventSource.stop` is honoured at once wherever the source is waiting: for the
next event, in a list, or in the delay before a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import msgspec

from adapters.docker.client import DockerClient
from adapters.docker.paths import CONTAINER_ID
from adapters.retry import StreamTiming
from controller.errors import RequestDecodeError, WinspecError
from controller.ports import SourceHooks

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Container actions that change what the bundle of the container must be.
CONTAINER_ACTIONS = ("create", "start", "update", "rename", "destroy")
#: Network actions that change the endpoints of the container they name.
NETWORK_ACTIONS = ("connect", "disconnect")
#: Every action watched: the ``type`` label values of ``winspec_events_received_total``.
EVENT_TYPES = CONTAINER_ACTIONS + NETWORK_ACTIONS
EVENT_FILTERS = {"type": ["container", "network"], "event": list(EVENT_TYPES)}
READY_CONDITION = "docker-events"

_NANOS = 10**9
#: Event times are int64 nanoseconds; anything larger is not from an engine.
_Time = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


@dataclass(frozen=True, slots=True)
class EventSourceSettings(StreamTiming):
    """Timing of the event source: the stream's, and how often every container is listed."""

    resync_interval: float = 300.0


class ContainerSummary(msgspec.Struct):
    """One entry of ``GET /containers/json``: only the id is read (an entry without one is
    skipped)."""

    Id: str = ""


class _Actor(msgspec.Struct, rename="pascal"):
    id: str = msgspec.field(default="", name="ID")
    attributes: dict[str, Any] | None = None


class _Event(msgspec.Struct, rename="pascal"):
    """One message of ``GET /events``: the fields the source reads."""

    type: str = ""
    action: str = ""
    actor: _Actor | None = None
    time: _Time = msgspec.field(default=0, name="time")
    time_nano: _Time = msgspec.field(default=0, name="timeNano")


def resume_since(time_nano: int) -> str:
    """The ``since`` that resumes a stream just after an event seen at ``time_nano``.

    The engine sends again every buffered event whose ``timeNano`` is at or after ``since``
    (``SECONDS.NANOSECONDS``), so asking from one nanosecond later skips the last event seen.
    """
    after = time_nano + 1
    return f"{after // _NANOS}.{after % _NANOS:09d}"


def container_of(event: _Event) -> str | None:
    """The id of the container a watched event is about; None for any other event.

    Only a full container id (64 hex digits, as every engine sends) is taken: anything else
    would become a request path and a bundle directory name.
    """
    actor = event.actor or _Actor()
    cid: object = None
    if event.type == "container" and event.action in CONTAINER_ACTIONS:
        cid = actor.id
    elif event.type == "network" and event.action in NETWORK_ACTIONS:
        cid = (actor.attributes or {}).get("container")
    return cid if isinstance(cid, str) and CONTAINER_ID.fullmatch(cid) else None


def decode_container_list(raw: bytes, where: str) -> list[str]:
    """The container ids of a ``GET /containers/json`` body (entries without a valid id skipped).

    A body that is not a list of containers raises :class:`RequestDecodeError` naming ``where``.
    """
    try:
        listed = msgspec.json.decode(raw, type=list[ContainerSummary])
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise RequestDecodeError(f"invalid container list from {where}: {exc}") from exc
    except RecursionError as exc:
        raise RequestDecodeError(f"invalid container list from {where}: nested too deeply") from exc
    return [c.Id for c in listed if CONTAINER_ID.fullmatch(c.Id)]


def decode_event(raw: dict[str, Any]) -> _Event | None:
    """An event object as the fields the source reads; ``None`` (logged) when malformed."""
    try:
        return msgspec.convert(raw, _Event)
    except (msgspec.ValidationError, RecursionError) as exc:
        log.warning("ignoring a malformed docker event", extra={"error": str(exc)[:500]})
        return None


class _Stopped(Exception):  # noqa: N818 - a signal, not an error
    """Stop was asked while the source was waiting for something."""


class DockerEventSource:
    """Feeds container ids from a Docker engine into the work queue."""

    def __init__(
        self,
        client: DockerClient,
        *,
        enqueue: Callable[[str], None],
        bundle_ids: Callable[[], Awaitable[list[str]]],
        settings: EventSourceSettings | None = None,
        hooks: SourceHooks | None = None,
    ) -> None:
        self._client = client
        self._enqueue = enqueue
        self._bundle_ids = bundle_ids
        self._settings = settings or EventSourceSettings()
        self._hooks = hooks or SourceHooks()
        self._since: str | None = None
        self._stopping = asyncio.Event()
        self._listed_at: float | None = None  # loop time the current stream was listed
        self._first_list: frozenset[str] | None = None
        self._first_listed = asyncio.Event()

    def stop(self) -> None:
        """Ask :meth:`run` to return (promptly, whatever it is waiting for)."""
        self._stopping.set()

    async def relist(self) -> int:
        """List every container and enqueue it, and every bundle whose container is gone.

        A body that is not a list of containers raises :class:`RequestDecodeError`.
        """
        raw = await self._client.get_raw(
            "/containers/json", api="container_list", params={"all": "1"}
        )
        where = f"the Docker engine at {self._client.endpoint.display}"
        live = set(decode_container_list(raw, where))
        for cid in sorted(live):
            self._enqueue(cid)
        for bid in await self._bundle_ids():
            if bid not in live:
                self._enqueue(bid)
        if self._first_list is None:
            self._first_list = frozenset(live)
            self._first_listed.set()
        if self._hooks.on_synced:
            self._hooks.on_synced()
        return len(live)

    async def initial_keys(self) -> frozenset[str]:
        """The containers of the first complete list (:class:`controller.ports.InitialKeys`),
        once it has been taken."""
        await self._first_listed.wait()
        assert self._first_list is not None
        return self._first_list

    async def run(self) -> None:
        """Watch until stopped: stream, relist on (re)connect, resync periodically.

        Readiness: true once a stream is open and listed; false when a stream fails or is
        closed by the engine, and when stopped. An idle restart of a stream that was working
        keeps it true: the stream is re-opened at once.
        """
        resync = asyncio.create_task(self._resync_loop(), name="docker-resync")
        loop = asyncio.get_running_loop()
        delay = self._settings.reconnect_initial
        try:
            while not self._stopping.is_set():
                self._listed_at = None
                try:
                    await self._watch_once()
                    reason = "closed"
                except _Stopped:
                    break
                except TimeoutError:
                    reason = "idle"
                except WinspecError as exc:
                    reason = "error"
                    log.warning("docker event stream failed", extra={"error": str(exc)})
                if self._stopping.is_set():
                    break
                if self._hooks.on_restart:
                    self._hooks.on_restart(reason)
                if reason == "idle" and self._listed_at is not None:
                    # The stream worked and was only quiet: re-open it now, still ready.
                    delay = self._settings.reconnect_initial
                    log.info("restarting docker event stream", extra={"reason": reason})
                    continue
                self._set_ready(False)
                if (
                    self._listed_at is not None
                    and loop.time() - self._listed_at >= self._settings.reconnect_max
                ):
                    # A stream that worked for a while starts the backoff afresh, rather than
                    # where an earlier outage left it; one that keeps failing fast still backs off.
                    delay = self._settings.reconnect_initial
                log.info(
                    "restarting docker event stream",
                    extra={"reason": reason, "delay_seconds": delay},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                delay = min(delay * 2, self._settings.reconnect_max)
        finally:
            self._set_ready(False)
            resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await resync

    async def _unless_stopping(self, aw: Awaitable[T], *, idle: float | None = None) -> T:
        """The result of ``aw``, unless stop is asked first (:class:`_Stopped`) or ``idle``
        seconds pass (:class:`TimeoutError`); then ``aw`` is cancelled and has ended on return."""
        task = asyncio.ensure_future(aw)
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait(
                {task, stop_wait}, timeout=idle, return_when=asyncio.FIRST_COMPLETED
            )
            if task in done:
                return task.result()
            raise _Stopped if stop_wait in done else TimeoutError
        finally:
            stop_wait.cancel()
            if not task.done():
                task.cancel()
                # Wait for it to unwind (an event stream must not be closed while it runs).
                await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved: raised above or deliberately dropped

    async def _watch_once(self) -> None:
        stream = self._client.events(filters=EVENT_FILTERS, since=self._since)
        try:
            opened = False
            while True:
                try:
                    event = await self._unless_stopping(
                        anext(stream), idle=self._settings.idle_timeout
                    )
                except StopAsyncIteration:
                    return
                if not opened:
                    # The stream is open: list now, so nothing between list and stream is lost.
                    opened = True
                    await self._unless_stopping(self.relist())
                    self._listed_at = asyncio.get_running_loop().time()
                    self._set_ready(True)
                    continue
                self._handle(event)
        finally:
            # Never running here: _unless_stopping has let the pending read end.
            await stream.aclose()

    def _handle(self, raw: dict[str, Any]) -> None:
        event = decode_event(raw)
        if event is None:
            return
        if event.time_nano > 0:
            self._since = resume_since(event.time_nano)
        elif event.time > 0:
            # Seconds only (never from engines of API 1.24 and later): events of that second
            # come again, which costs a reconcile each and loses nothing.
            self._since = str(event.time)
        cid = container_of(event)
        if cid is None:
            return
        log.debug(
            "docker event",
            extra={"event_type": event.type, "action": event.action, "container": cid},
        )
        if self._hooks.on_event:
            self._hooks.on_event(event.action)
        self._enqueue(cid)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.resync_interval)
            try:
                await self.relist()
            except WinspecError as exc:
                log.warning("periodic resync failed", extra={"error": str(exc)})
            except Exception as exc:
                # Whatever went wrong, the next resync may work: never let this task die.
                log.exception("periodic resync failed unexpectedly", extra={"error": repr(exc)})

    def _set_ready(self, ready: bool) -> None:
        if self._hooks.on_ready:
            self._hooks.on_ready(ready)
