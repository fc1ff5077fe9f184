"""A client-go-style reflector: one collection of the API server kept in view, forever.

:class:`Reflector` lists (paginated), then watches from the list's ``resourceVersion`` with
``allowWatchBookmarks``, so nothing that happens between the two is missed. Its first list asks
for ``resourceVersion=0``, as client-go's reflector does: an API server with its watch cache
(every real cluster's default) answers it from memory in one response, not page by page from
etcd, at a fraction of the cost; the answer may lag etcd by the moment the cache takes to catch
up, and the watch from its version brings what it missed. Every later list (after 410 Gone, or
after a first list that failed: too large for the time allowed, say) is a consistent one, page
by page, so nothing older than what was seen comes back. A watch the server ends (its
``timeoutSeconds``) is re-opened from the last resourceVersion seen (bookmarks keep it fresh); a
watch silent for longer than the inactivity watchdog (``idle_timeout``: a dead connection that
no TCP error reveals) is abandoned and re-opened; a connection error is retried with exponential
backoff; 410 Gone (the resourceVersion compacted away, as an HTTP status or a watch ERROR event)
means list again. Every restart is counted by reason.

It knows nothing of what it watches: what a list or an event means is its owner's business
(:mod:`adapters.kubernetes.source`, :mod:`adapters.kubernetes.store`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import msgspec

from adapters.kubernetes.client import (
    JSON,
    METADATA_LIST,
    METADATA_WATCH,
    GoneError,
    KubeClient,
    read_line,
)
from adapters.retry import RetryableError, RetryPolicy, StreamTiming
from controller.errors import NotFoundError, RequestDecodeError, WinspecError
from controller.ports import SourceHooks

log = logging.getLogger(__name__)

#: The longest ``Retry-After`` a refused list or watch obeys (as for every other call).
MAX_RETRY_AFTER = RetryPolicy().max_retry_after


@dataclass(frozen=True, slots=True)
class WatchSettings(StreamTiming):
    """Timing and scope of the reflectors: the watches', and the size of a list's pages."""

    #: Server-side end of each watch (client-go picks 5-10 minutes).
    timeout_seconds: int = 300
    page_size: int = 500
    #: Whether the first list may be served from the API server's watch cache
    #: (``resourceVersion=0``); False: every list is a consistent read from etcd.
    list_from_cache: bool = True


class Meta(msgspec.Struct, rename="camel"):
    """The metadata every object has that a reflector and its owners key by."""

    name: str = ""
    namespace: str = ""
    resource_version: str = ""


class _Object(msgspec.Struct):
    """Just enough of any object: its metadata."""

    metadata: Meta = msgspec.field(default_factory=Meta)


class _ListMeta(msgspec.Struct, rename="camel"):
    resource_version: str = ""
    # "continue" is a Python keyword.
    continue_: str = msgspec.field(default="", name="continue")


class _List(msgspec.Struct):
    metadata: _ListMeta = msgspec.field(default_factory=_ListMeta)
    # ``null`` in an empty PartialObjectMetadataList.
    items: list[msgspec.Raw] | None = None


class _Event(msgspec.Struct):
    type: str
    object: msgspec.Raw


class _Status(msgspec.Struct):
    code: int = 0
    message: str = ""


_list_decoder = msgspec.json.Decoder(_List)
_event_decoder = msgspec.json.Decoder(_Event)
_object_decoder = msgspec.json.Decoder(_Object)
_status_decoder = msgspec.json.Decoder(_Status)


def object_meta(raw: msgspec.Raw) -> Meta:
    """An object's metadata; an empty one when it does not decode (nothing to key it by)."""
    try:
        return _object_decoder.decode(raw).metadata
    except (msgspec.DecodeError, msgspec.ValidationError):
        return Meta()


class _Restart(Exception):  # noqa: N818 - a signal, not an error
    """End this watch and open another from the last resourceVersion."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Reflector:
    """List, then watch, one collection forever; hands every object to the callbacks.

    ``on_list(items)`` gets every object of a (re)list at once (each passed through ``decode``
    page by page, when given), and ``on_first_page(items)``, when given, each page of the first
    list as it arrives (before ``on_list`` gets them all); ``on_event(type, raw)`` each
    ADDED/MODIFIED/DELETED event's object, undecoded (the owner decides how to decode it).
    With ``metadata_only`` the server sends each object's metadata alone
    (``PartialObjectMetadata``): what a change of a Secret needs to re-queue its users, without
    its data crossing the wire or being decoded.
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        path: str,
        what: str,
        on_list: Callable[[list[Any]], None],
        on_event: Callable[[str, msgspec.Raw], None],
        settings: WatchSettings,
        hooks: SourceHooks,
        label_selector: str | None = None,
        optional: bool = False,
        metadata_only: bool = False,
        decode: Callable[[msgspec.Raw], Any] | None = None,
        on_first_page: Callable[[list[Any]], None] | None = None,
    ) -> None:
        self._client = client
        self._decode = decode
        self._on_first_page = on_first_page
        self._path = path
        self._accept = (METADATA_LIST, METADATA_WATCH) if metadata_only else (JSON, JSON)
        # An optional collection may not exist (a CRD not installed): that is waited out.
        self._optional = optional
        self.what = what
        self._on_list = on_list
        self._on_event = on_event
        self._settings = settings
        self._hooks = hooks
        self._selector = label_selector
        self._resource_version = ""
        # Whether a list was asked of the watch cache: only the first may be.
        self._cache_asked = False
        self.synced = asyncio.Event()

    def _query(self) -> list[tuple[str, str]]:
        return [("labelSelector", self._selector)] if self._selector else []

    async def relist(self) -> None:
        """List every object (page by page) and hand them over; remember the version.

        The first list of all may come from the watch cache (see the module's text); any other
        never does."""
        items: list[msgspec.Raw] = []
        token = ""
        from_cache = self._settings.list_from_cache and not self._cache_asked
        self._cache_asked = True
        while True:
            query = [*self._query(), ("limit", str(self._settings.page_size))]
            if token:
                query.append(("continue", token))
            elif from_cache:
                # A server without a watch cache pages as usual; a continue token carries
                # the version, so it is asked for on the first page alone.
                query.append(("resourceVersion", "0"))
            try:
                body = await self._client.request(
                    "GET", self._path, query=query, accept=self._accept[0], api="list"
                )
            except GoneError:
                if not token:
                    raise
                # The continue token expired mid-list: start over.
                items, token = [], ""
                continue
            try:
                page = _list_decoder.decode(body)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise RequestDecodeError(f"invalid list of {self.what}: {exc}") from exc
            if self._decode is None:
                decoded: list[Any] = list(page.items or ())
            else:
                # Each page decoded as it comes: no page's bytes outlive it, so a relist of
                # thousands of objects never holds them all twice (as bytes and as objects).
                decoded = list(map(self._decode, page.items or ()))
            items.extend(decoded)
            if self._on_first_page is not None and not self.synced.is_set():
                # The first list: its objects can be worked on while the next page is fetched.
                self._on_first_page(decoded)
            token = page.metadata.continue_
            if not token:
                self._resource_version = page.metadata.resource_version
                break
        self._on_list(items)
        self.synced.set()

    async def run(self) -> None:
        """List and watch until cancelled."""
        delay = self._settings.reconnect_initial
        need_list = True
        while True:
            try:
                if need_list:
                    await self.relist()
                    need_list = False
                    if self._hooks.on_ready:
                        self._hooks.on_ready(True)
                received = await self._watch_once()
                self._restarted("closed")
                if received:
                    delay = self._settings.reconnect_initial
                else:
                    # Closed before saying anything: do not hammer a server that does that.
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._settings.reconnect_max)
            except _Restart as restart:
                self._restarted(restart.reason)
            except NotFoundError as exc:
                if not self._optional:
                    delay = await self._back_off(exc, delay)
                    continue
                # Not installed (yet): nothing of it to watch; look again later.
                if not self.synced.is_set():
                    log.warning("not served; watching it once it is", extra={"what": self.what})
                    self.synced.set()
                if self._hooks.on_ready:
                    self._hooks.on_ready(True)
                need_list = True
                await asyncio.sleep(self._settings.reconnect_max)
            except GoneError:
                need_list = True
                self._restarted("expired")
                log.info("resource version expired; listing again", extra={"what": self.what})
            except WinspecError as exc:
                delay = await self._back_off(exc, delay)

    async def _back_off(self, exc: WinspecError, delay: float) -> float:
        """Count and log a failed list or watch, wait ``delay`` (or the server's
        ``Retry-After``, capped, when longer); the next delay."""
        self._restarted("error")
        if self._hooks.on_ready:
            self._hooks.on_ready(False)
        wait = delay
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            wait = max(delay, min(exc.retry_after, MAX_RETRY_AFTER))
        log.warning(
            "list or watch failed; retrying",
            extra={"what": self.what, "error": str(exc), "delay": round(wait, 2)},
        )
        await asyncio.sleep(wait)
        return min(delay * 2, self._settings.reconnect_max)

    def _restarted(self, reason: str) -> None:
        if self._hooks.on_restart:
            self._hooks.on_restart(reason)

    async def _watch_once(self) -> int:
        """Watch until the server ends it; how many events (bookmarks too) it delivered."""
        s = self._settings
        received = 0
        query = [
            *self._query(),
            ("resourceVersion", self._resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(s.timeout_seconds)),
        ]
        async with self._client.watch(self._path, query=query, accept=self._accept[1]) as response:
            while True:
                try:
                    line = await read_line(response, idle=s.idle_timeout)
                except TimeoutError:
                    log.info(
                        "watch silent for too long; re-opening",
                        extra={"what": self.what, "idle_timeout": s.idle_timeout},
                    )
                    raise _Restart("idle") from None
                except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                    raise _Restart("error") from exc
                except Exception as exc:  # aiohttp's payload errors
                    if type(exc).__module__.startswith("aiohttp"):
                        raise _Restart("error") from exc
                    raise
                if not line:
                    return received  # the server ended it (timeoutSeconds)
                if line.strip():
                    self._handle(line)
                    received += 1

    def _handle(self, line: bytes) -> None:
        try:
            event = _event_decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("malformed watch event; re-watching", extra={"what": self.what})
            raise _Restart("error") from exc
        if event.type == "ERROR":
            try:
                status = _status_decoder.decode(event.object)
            except (msgspec.DecodeError, msgspec.ValidationError):
                status = _Status()
            if status.code == 410:
                raise GoneError(f"watch {self.what}: {status.message}")
            raise _Restart("error")
        meta = object_meta(event.object)
        if meta.resource_version:
            self._resource_version = meta.resource_version
        if self._hooks.on_event:
            self._hooks.on_event(event.type)
        if event.type != "BOOKMARK":
            self._on_event(event.type, event.object)


def collection_path(*, group: str, version: str, plural: str, namespace: str | None = None) -> str:
    """The URL path of a collection (core group when ``group`` is empty)."""
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespace:
        return f"{base}/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{base}/{plural}"
