"""Cluster mode's key source: list+watch of WindowsContainers and of what they refer to.

:class:`Reflector` keeps one collection in view the way client-go's reflector does: list
(paginated), then watch from the list's ``resourceVersion`` with ``allowWatchBookmarks``, so
nothing that happens between the two is missed. A watch the server ends (its
``timeoutSeconds``) is re-opened from the last resourceVersion seen (bookmarks keep it
fresh); a watch silent for longer than the inactivity watchdog (``idle_timeout``: a dead
connection that no TCP error reveals) is abandoned and re-opened; a connection error is
retried with exponential backoff; 410 Gone (the resourceVersion compacted away, as an HTTP
status or a watch ERROR event) means list again. Every restart is counted by reason.

:class:`ClusterSource` runs one reflector for WindowsContainers (per namespace watched, or one
for all) and one each for Secrets, ConfigMaps, GMSACredentialSpecs and Namespaces (whose Pod
Security label decides what a resource in it may ask for; a change of it re-queues the
namespace's resources). It keeps the decoded
WindowsContainers in a cache the resolver reads (no GET per reconcile), keeps the
:class:`~controller.cluster.ReferenceIndex` up to date, and puts only keys
(``<namespace>/<name>``) on the queue: every added, changed or deleted WindowsContainer, and
every resource referring to a Secret, ConfigMap or GMSACredentialSpec that changed. A relist
also enqueues the resources that disappeared while nobody watched; one that disappeared still
carrying winspec's finalizer left the label selector (a deletion waits for the finalizer) and is
released, as one a watch reports DELETED. An object whose spec does not decode is cached as its
:class:`~controller.cluster.InvalidObjectError` (metadata and status kept), so it is reported on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
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
from controller.cluster import (
    CONFIG_MAP,
    FINALIZER,
    GMSA_CREDENTIAL_SPEC,
    GROUP,
    NODE,
    PLURAL,
    SECRET,
    VERSION,
    InvalidObjectError,
    ObjectMeta,
    ReferenceIndex,
    WindowsContainer,
    decode_windows_container,
    references,
)
from controller.errors import NotFoundError, RequestDecodeError, WinspecError
from controller.podsecurity import ENFORCE_LABEL
from controller.ports import SourceHooks

log = logging.getLogger(__name__)

SOURCE = "kubernetes"
#: The ``type`` label values of ``winspec_events_received_total`` in cluster mode.
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK")
READY_CONDITION = "kubernetes-watch"
#: How long after an RBAC change a denied credential spec is asked about once more.
GRANT_SETTLE_SECONDS = 2.0
#: How long a reconcile waits for its namespace's Pod Security label to be known.
NAMESPACE_WAIT_SECONDS = 10.0
#: The longest ``Retry-After`` a refused list or watch obeys (as for every other call).
MAX_RETRY_AFTER = RetryPolicy().max_retry_after


@dataclass(frozen=True, slots=True)
class WatchSettings(StreamTiming):
    """Timing and scope of the reflectors: the watches', and the size of a list's pages."""

    #: Server-side end of each watch (client-go picks 5-10 minutes).
    timeout_seconds: int = 300
    page_size: int = 500


class _Meta(msgspec.Struct, rename="camel"):
    name: str = ""
    namespace: str = ""
    resource_version: str = ""


class _Object(msgspec.Struct):
    """Just enough of any object: its metadata."""

    metadata: _Meta = msgspec.field(default_factory=_Meta)


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


class _NamespaceMeta(msgspec.Struct):
    name: str = ""
    labels: dict[str, str] | None = None


class _Namespace(msgspec.Struct):
    metadata: _NamespaceMeta = msgspec.field(default_factory=_NamespaceMeta)


_list_decoder = msgspec.json.Decoder(_List)
_namespace_decoder = msgspec.json.Decoder(_Namespace)
_event_decoder = msgspec.json.Decoder(_Event)
_object_decoder = msgspec.json.Decoder(_Object)
_status_decoder = msgspec.json.Decoder(_Status)


def _meta(raw: msgspec.Raw) -> _Meta:
    """An object's metadata; an empty one when it does not decode (nothing to key it by)."""
    try:
        return _object_decoder.decode(raw).metadata
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _Meta()


#: A WindowsContainer as the source keeps it: its key (None without a name) and the object,
#: or why it does not decode.
_Decoded = tuple[str | None, "WindowsContainer | RequestDecodeError"]


def _decode_container(raw: msgspec.Raw) -> _Decoded:
    """One WindowsContainer from the server, decoded; the key from its metadata alone when
    nothing else decodes."""
    try:
        wc: WindowsContainer | RequestDecodeError = decode_windows_container(bytes(raw))
    except RequestDecodeError as exc:
        wc = exc
    if isinstance(wc, WindowsContainer | InvalidObjectError):
        return wc.key, wc
    meta = _meta(raw)
    return (f"{meta.namespace}/{meta.name}" if meta.name else None), wc


class _Restart(Exception):  # noqa: N818 - a signal, not an error
    """End this watch and open another from the last resourceVersion."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Reflector:
    """List, then watch, one collection forever; hands every object to the callbacks.

    ``on_list(items)`` gets every object of a (re)list at once (each passed through ``decode``
    page by page, when given); ``on_event(type, raw)`` each ADDED/MODIFIED/DELETED event's
    object, undecoded (the owner decides how to decode it).
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
    ) -> None:
        self._client = client
        self._decode = decode
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
        self.synced = asyncio.Event()

    def _query(self) -> list[tuple[str, str]]:
        return [("labelSelector", self._selector)] if self._selector else []

    async def relist(self) -> None:
        """List every object (page by page) and hand them over; remember the version."""
        items: list[msgspec.Raw] = []
        token = ""
        while True:
            query = [*self._query(), ("limit", str(self._settings.page_size))]
            if token:
                query.append(("continue", token))
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
                items.extend(page.items or ())
            else:
                # Each page decoded as it comes: no page's bytes outlive it, so a relist of
                # thousands of objects never holds them all twice (as bytes and as objects).
                items.extend(map(self._decode, page.items or ()))
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
        meta = _meta(event.object)
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


class ClusterSource:
    """The reflectors of cluster mode, the WindowsContainer cache and the reference index."""

    def __init__(
        self,
        client: KubeClient,
        *,
        enqueue: Callable[[str], None],
        enqueue_after: Callable[[str, float], None] | None = None,
        namespaces: Sequence[str] = (),
        label_selector: str | None = None,
        settings: WatchSettings | None = None,
        hooks: SourceHooks | None = None,
    ) -> None:
        self._enqueue = enqueue
        self._enqueue_after = enqueue_after
        self._settings = settings or WatchSettings()
        self._hooks = hooks or SourceHooks()
        self.cache: dict[str, WindowsContainer | RequestDecodeError] = {}
        #: Resources that left the watched set (a label no longer matching --selector or
        #: --node-name) while still carrying winspec's finalizer: their bundle is removed like
        #: a deleted one's, and the finalizer taken off so a later deletion is not blocked.
        self.released: dict[str, ObjectMeta] = {}
        self.index = ReferenceIndex()
        #: Each namespace's Pod Security label (only that label; empty without it), once listed.
        self._namespace_labels: dict[str, dict[str, str]] = {}
        self._namespaces_listed = False
        #: Set (and replaced) at every change of what is known of namespaces.
        self._namespaces_changed = asyncio.Event()
        #: The names of the Nodes that exist (None until the Nodes are first listed).
        self.nodes: set[str] | None = None
        self._ready: dict[str, bool] = {}
        self._first_list: frozenset[str] | None = None
        self._first_listed = asyncio.Event()
        self._stopping = asyncio.Event()
        scopes: list[str | None] = list(namespaces) or [None]
        self.reflectors: list[Reflector] = []
        for ns in scopes:
            self._add(
                client,
                collection_path(group=GROUP, version=VERSION, plural=PLURAL, namespace=ns),
                f"{PLURAL}.{GROUP}",
                self._on_containers_listed(ns),
                self._on_container_event,
                label_selector,
                metadata_only=False,
                decode=_decode_container,
            )
            for kind, plural in ((SECRET, "secrets"), (CONFIG_MAP, "configmaps")):
                self._add(
                    client,
                    collection_path(group="", version="v1", plural=plural, namespace=ns),
                    plural,
                    self._on_dependencies_listed(kind),
                    self._on_dependency_event(kind),
                    None,
                )
        # A grant of `use` on a credential spec (RBAC objects changing) re-queues the resources
        # that name one: a resource that was denied becomes Ready without polling.
        rbac = "rbac.authorization.k8s.io"
        grants = [(plural, ns) for plural in ("roles", "rolebindings") for ns in scopes]
        grants += [("clusterroles", None), ("clusterrolebindings", None)]
        for plural, ns in grants:
            self._add(
                client,
                collection_path(group=rbac, version="v1", plural=plural, namespace=ns),
                f"{plural}.{rbac}",
                self._on_dependencies_listed(GMSA_CREDENTIAL_SPEC),
                self._on_grant_event,
                None,
            )
        # A Node appearing re-queues the resources scheduled to it: a resource waiting for its
        # Node (retried with backoff until then) becomes Ready at once; one going re-queues
        # them too (a deletion waiting for that node's agent need not wait any more).
        self._add(
            client,
            collection_path(group="", version="v1", plural="nodes"),
            "nodes",
            self._on_nodes_listed(),
            self._on_node_event,
            None,
        )
        # Namespaces, for their Pod Security label: cluster-scoped, so watched whole (also under
        # --namespace); a change of the label re-queues the namespace's resources.
        self._add(
            client,
            collection_path(group="", version="v1", plural="namespaces"),
            "namespaces",
            self._on_namespaces_listed,
            self._on_namespace_event,
            None,
        )
        self._add(
            client,
            collection_path(group="windows.k8s.io", version="v1", plural="gmsacredentialspecs"),
            "gmsacredentialspecs.windows.k8s.io",
            self._on_dependencies_listed(GMSA_CREDENTIAL_SPEC),
            self._on_dependency_event(GMSA_CREDENTIAL_SPEC),
            None,
            optional=True,
        )

    def _add(
        self,
        client: KubeClient,
        path: str,
        what: str,
        on_list: Callable[[list[Any]], None],
        on_event: Callable[[str, msgspec.Raw], None],
        selector: str | None,
        *,
        optional: bool = False,
        metadata_only: bool = True,
        decode: Callable[[msgspec.Raw], Any] | None = None,
    ) -> None:
        """One more reflector. Only the WindowsContainers are needed whole
        (``metadata_only=False``); of everything else (Secrets above all) a change is all
        that matters: the resolver reads what it uses when it reconciles."""
        name = f"{what}@{path}"
        self._ready[name] = False
        hooks = SourceHooks(
            on_event=self._hooks.on_event,
            on_restart=self._hooks.on_restart,
            on_ready=lambda ready: self._set_ready(name, ready),
        )
        self.reflectors.append(
            Reflector(
                client,
                path=path,
                what=what,
                on_list=on_list,
                on_event=on_event,
                settings=self._settings,
                hooks=hooks,
                label_selector=selector,
                optional=optional,
                metadata_only=metadata_only,
                decode=decode,
            )
        )

    def _set_ready(self, name: str, ready: bool) -> None:
        self._ready[name] = ready
        if self._hooks.on_ready:
            self._hooks.on_ready(all(self._ready.values()))

    def stop(self) -> None:
        """Ask :meth:`run` to return (at once: every reflector is cancelled)."""
        self._stopping.set()

    async def run(self) -> None:
        """Run every reflector until stopped (or cancelled); ``on_synced`` once all have
        listed."""
        tasks = [asyncio.create_task(r.run(), name=f"reflector-{r.what}") for r in self.reflectors]
        stop_wait = asyncio.create_task(self._stopping.wait())
        try:
            synced: asyncio.Future[Any] = asyncio.gather(
                *(r.synced.wait() for r in self.reflectors)
            )
            waiting: set[asyncio.Future[Any]] = {*tasks, synced, stop_wait}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if synced in done:
                self._first_list = frozenset(self.cache)
                self._first_listed.set()
                if self._hooks.on_synced:
                    self._hooks.on_synced()
            else:
                synced.cancel()
            failure = asyncio.ensure_future(_first_failure(tasks))
            try:
                await asyncio.wait({stop_wait, failure}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                failure.cancel()
            if failure.done() and not failure.cancelled():
                failure.result()  # a reflector's failure
        finally:
            stop_wait.cancel()
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def initial_keys(self) -> frozenset[str]:
        """The WindowsContainers of the first complete lists
        (:class:`controller.ports.InitialKeys`), once every reflector has listed."""
        await self._first_listed.wait()
        assert self._first_list is not None
        return self._first_list

    # -- WindowsContainers -------------------------------------------------------------------

    def remember(self, body: bytes) -> None:
        """Cache an object the API returned to winspec's own write (ahead of its watch event)."""
        self._store(msgspec.Raw(body))

    def _store(self, raw: msgspec.Raw) -> tuple[str | None, bool]:
        """Decode and cache one object; its key (None when it has none) and whether the change
        can matter to its bundle (not a status-only write, such as winspec's own)."""
        return self._store_decoded(_decode_container(raw))

    def _store_decoded(self, decoded: _Decoded) -> tuple[str | None, bool]:
        """Cache one decoded object (see :meth:`_store`)."""
        key, wc = decoded
        if key is None:
            return None, False
        if not isinstance(wc, WindowsContainer | InvalidObjectError):
            # Not even its metadata decodes: nothing to report on, but its key is still
            # refused rather than forgotten.
            self.index.remove(key)
            self.cache[key] = wc
            return key, True
        cached = self.cache.get(key)
        if isinstance(cached, WindowsContainer | InvalidObjectError):
            if not _newer(wc.metadata.resource_version, cached.metadata.resource_version):
                return key, False  # a copy winspec already has, or an older one
            matters = _matters(cached, wc)
        else:
            matters = True
        if isinstance(wc, WindowsContainer):
            self.released.pop(key, None)  # back in the watched set
            self.index.record(key, references(wc))
        else:
            # An object that does not decode refers to nothing winspec can know of.
            self.index.remove(key)
        self.cache[key] = wc
        return key, matters

    def _on_containers_listed(self, namespace: str | None) -> Callable[[list[Any]], None]:
        def listed(items: list[Any]) -> None:
            before = {
                key for key in self.cache if namespace is None or key.startswith(f"{namespace}/")
            }
            seen: set[str] = set()
            for decoded in items:  # decoded page by page (_decode_container)
                key, _ = self._store_decoded(decoded)
                if key is not None:
                    # Every listed key: a relist is how anything missed is caught up.
                    seen.add(key)
                    self._enqueue(key)
            for key in before - seen:  # deleted, or out of the selector, while nobody watched
                self._forget(key, self.cache.get(key))

        return listed

    def _on_container_event(self, event_type: str, raw: msgspec.Raw) -> None:
        if event_type == "DELETED":
            meta = _meta(raw)
            try:
                last: WindowsContainer | RequestDecodeError = decode_windows_container(bytes(raw))
            except RequestDecodeError as exc:
                last = exc
            self._forget(f"{meta.namespace}/{meta.name}", last)
            return
        key, matters = self._store(raw)
        if key is not None and matters:
            self._enqueue(key)

    def _forget(self, key: str, last: WindowsContainer | RequestDecodeError | None) -> None:
        """A resource left the watched set: deleted, or no longer matching the selector (a
        watch says DELETED either way; a relist simply no longer lists it). ``last`` is its
        last known state. A real deletion ends only once the finalizers are off, so one that
        still carries winspec's merely left the selector: it is released (bundle removed,
        finalizer taken off), and a deleted one costs one GET that answers 404."""
        if isinstance(last, WindowsContainer | InvalidObjectError) and (
            FINALIZER in last.metadata.finalizers
        ):
            self.released[key] = last.metadata
        self.cache.pop(key, None)
        self.index.remove(key)
        self._enqueue(key)

    # -- Namespaces ---------------------------------------------------------------------------

    async def namespace_labels(
        self, namespace: str, *, wait: float = NAMESPACE_WAIT_SECONDS
    ) -> dict[str, str] | None:
        """The Pod Security label of ``namespace`` (empty without one), waiting up to ``wait``
        seconds for namespaces to be listed or this one to be seen; None if it is not by then
        (a resource is not judged before its namespace's label is known)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not (self._namespaces_listed and namespace in self._namespace_labels):
            changed = self._namespaces_changed
            try:
                await asyncio.wait_for(changed.wait(), max(deadline - loop.time(), 0))
            except TimeoutError:
                return None
        return self._namespace_labels[namespace]

    def _namespaces_seen(self) -> None:
        """Wake whoever waits for a namespace."""
        self._namespaces_changed.set()
        self._namespaces_changed = asyncio.Event()

    def _on_namespaces_listed(self, items: list[msgspec.Raw]) -> None:
        seen: dict[str, dict[str, str]] = {}
        for raw in items:
            name, labels = _namespace(raw)
            if name:
                seen[name] = labels
        changed = {
            name
            for name in seen.keys() | self._namespace_labels.keys()
            if seen.get(name) != self._namespace_labels.get(name)
        }
        first = not self._namespaces_listed
        self._namespace_labels = seen
        self._namespaces_listed = True
        self._namespaces_seen()
        if not first:
            # A relist after a gap: a label may have changed unseen. (Before the first list
            # no resource was judged: each waited for it.)
            self._enqueue_namespaces(changed)

    def _on_namespace_event(self, event_type: str, raw: msgspec.Raw) -> None:
        name, labels = _namespace(raw)
        if not name:
            return
        before = self._namespace_labels.get(name)
        if event_type == "DELETED":
            self._namespace_labels.pop(name, None)
        else:
            self._namespace_labels[name] = labels
        self._namespaces_seen()
        if self._namespace_labels.get(name) != before:
            self._enqueue_namespaces({name})

    def _enqueue_namespaces(self, namespaces: set[str]) -> None:
        """Re-queue every resource in ``namespaces``."""
        if namespaces:
            for key in [k for k in self.cache if k.partition("/")[0] in namespaces]:
                self._enqueue(key)

    # -- Secrets, ConfigMaps, GMSACredentialSpecs ---------------------------------------------

    def _on_dependencies_listed(self, kind: str) -> Callable[[list[msgspec.Raw]], None]:
        first = [True]

        def listed(items: list[msgspec.Raw]) -> None:
            if first[0]:
                # The first list of the containers enqueues every one of them anyway.
                first[0] = False
                return
            # A relist after a gap: any referenced object may have changed unseen.
            for key in self.index.keys_for_kind(kind):
                self._enqueue(key)

        return listed

    def _on_grant_event(self, event_type: str, raw: msgspec.Raw) -> None:
        for key in self.index.keys_for_kind(GMSA_CREDENTIAL_SPEC):
            self._enqueue(key)
            if self._enqueue_after is not None:
                # The API server's authorizer learns of RBAC changes through its own watch,
                # a moment after winspec may: ask again once it surely has.
                self._enqueue_after(key, GRANT_SETTLE_SECONDS)

    def _on_nodes_listed(self) -> Callable[[list[msgspec.Raw]], None]:
        dependencies = self._on_dependencies_listed(NODE)

        def listed(items: list[msgspec.Raw]) -> None:
            before, self.nodes = self.nodes, {_meta(raw).name for raw in items} - {""}
            if before is not None:
                for name in before - self.nodes:  # deleted while nobody watched
                    self._node_changed(name)
            dependencies(items)

        return listed

    def _on_node_event(self, event_type: str, raw: msgspec.Raw) -> None:
        # Only a Node appearing or going: its status changes (kubelet heartbeats) would
        # re-queue every resource of the node again and again; the resolver re-reads node
        # facts anyway.
        name = _meta(raw).name
        if event_type == "ADDED":
            if self.nodes is not None:
                self.nodes.add(name)
            self._node_changed(name)
        elif event_type == "DELETED":
            if self.nodes is not None:
                self.nodes.discard(name)
            self._node_changed(name)

    def _node_changed(self, name: str) -> None:
        """Re-queue the resources scheduled to the Node ``name``."""
        for key in self.index.keys_for((NODE, "", name)):
            self._enqueue(key)

    def node_deleted(self, name: str) -> bool:
        """Whether the Node ``name`` is known not to exist (False until Nodes are listed)."""
        return self.nodes is not None and name not in self.nodes

    def _on_dependency_event(self, kind: str) -> Callable[[str, msgspec.Raw], None]:
        def changed(event_type: str, raw: msgspec.Raw) -> None:
            meta = _meta(raw)
            ns = "" if kind == GMSA_CREDENTIAL_SPEC else meta.namespace
            for key in self.index.keys_for((kind, ns, meta.name)):
                self._enqueue(key)

        return changed


def _namespace(raw: msgspec.Raw) -> tuple[str, dict[str, str]]:
    """A namespace's name and Pod Security label (("", {}) when it does not decode)."""
    try:
        meta = _namespace_decoder.decode(raw).metadata
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "", {}
    labels = meta.labels or {}
    return meta.name, {k: v for k, v in labels.items() if k == ENFORCE_LABEL}


def _matters(
    old: WindowsContainer | InvalidObjectError, new: WindowsContainer | InvalidObjectError
) -> bool:
    """Whether a change can change the bundle, the finalizer's work or what selects it: not
    a write of status alone, nor winspec's finalizer appearing (winspec's own writes come back
    as watch events, sometimes before the answer to the write itself). An object that does
    not decode changes only with its generation (its spec) or its metadata."""
    a, b = old.metadata, new.metadata
    return (
        a.generation != b.generation
        or a.uid != b.uid
        or a.deletion_timestamp != b.deletion_timestamp
        or _finalizers_matter(a.finalizers, b.finalizers)
        or a.labels != b.labels
        or type(old) is not type(new)
        or (
            isinstance(old, WindowsContainer)
            and isinstance(new, WindowsContainer)
            and old.spec != new.spec
        )
    )


def _finalizers_matter(before: Sequence[str], after: Sequence[str]) -> bool:
    """Whether finalizers changed other than by winspec's own being added."""
    if FINALIZER in before and FINALIZER not in after:
        return True  # someone removed it: the next reconcile puts it back
    return [f for f in before if f != FINALIZER] != [f for f in after if f != FINALIZER]


def _newer(version: str, than: str) -> bool:
    """Whether resourceVersion ``version`` is newer than ``than``. Versions are opaque to
    clients, but etcd's are increasing integers: compared as such when both are, else any
    other version counts as newer."""
    if version.isdigit() and than.isdigit():
        return int(version) > int(than)
    return version != than


async def _first_failure(tasks: list[asyncio.Task[Any]]) -> None:
    """Wait until one task fails (its exception is raised) or all end."""
    pending: set[asyncio.Task[Any]] = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
