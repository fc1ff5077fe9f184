"""Cluster mode's store: what the reflectors have seen, kept for the reconciles.

:class:`ClusterStore` keeps the decoded WindowsContainers in a cache the resolver reads (no GET
per reconcile), keeps the :class:`~controller.cluster.ReferenceIndex` up to date, knows each
namespace's Pod Security label and which Nodes exist, and puts only keys
(``<namespace>/<name>``) on the queue: every added, changed or deleted WindowsContainer, and
every resource referring to a Secret, ConfigMap or GMSACredentialSpec that changed (a grant of
``use`` on a credential spec, a Node appearing or going, a namespace's label changing re-queue
theirs). A relist also enqueues the resources that disappeared while nobody watched; one that
disappeared still carrying winspec's finalizer left the label selector (a deletion waits for the
finalizer) and is released, as one a watch reports DELETED. An object whose spec does not decode
is cached as its :class:`~controller.cluster.InvalidObjectError` (metadata and status kept), so
it is reported on.

Its ``on_*`` methods are the callbacks of the reflectors
(:class:`~adapters.kubernetes.reflector.Reflector`) that
:class:`~adapters.kubernetes.source.ClusterSource` runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from adapters.kubernetes.payloads import PayloadCache
from adapters.kubernetes.reflector import object_meta
from controller.cluster import (
    FINALIZER,
    GMSA_CREDENTIAL_SPEC,
    NODE,
    InvalidObjectError,
    ObjectMeta,
    ReferenceIndex,
    WindowsContainer,
    decode_windows_container,
    references,
)
from controller.errors import RequestDecodeError
from controller.podsecurity import ENFORCE_LABEL

#: How long after an RBAC change a denied credential spec is asked about once more.
GRANT_SETTLE_SECONDS = 2.0
#: How long a reconcile waits for its namespace's Pod Security label to be known.
NAMESPACE_WAIT_SECONDS = 10.0


class _NamespaceMeta(msgspec.Struct):
    name: str = ""
    labels: dict[str, str] | None = None


class _Namespace(msgspec.Struct):
    metadata: _NamespaceMeta = msgspec.field(default_factory=_NamespaceMeta)


_namespace_decoder = msgspec.json.Decoder(_Namespace)


#: A WindowsContainer as the store keeps it: its key (None without a name) and the object,
#: or why it does not decode.
Decoded = tuple[str | None, "WindowsContainer | RequestDecodeError"]


def decode_container(raw: msgspec.Raw) -> Decoded:
    """One WindowsContainer from the server, decoded; the key from its metadata alone when
    nothing else decodes."""
    try:
        wc: WindowsContainer | RequestDecodeError = decode_windows_container(bytes(raw))
    except RequestDecodeError as exc:
        wc = exc
    if isinstance(wc, WindowsContainer | InvalidObjectError):
        return wc.key, wc
    meta = object_meta(raw)
    return (f"{meta.namespace}/{meta.name}" if meta.name else None), wc


class ClusterStore:
    """The WindowsContainer cache, the released set, the reference index, the namespaces' Pod
    Security labels and the Nodes known; it enqueues the keys each change concerns."""

    def __init__(
        self,
        *,
        enqueue: Callable[[str], None],
        enqueue_after: Callable[[str, float], None] | None = None,
    ) -> None:
        self._enqueue = enqueue
        self._enqueue_after = enqueue_after
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
        #: Secrets and ConfigMaps as the resolver last read them, dropped at each change the
        #: watches report.
        self.payloads: PayloadCache[Any] = PayloadCache()
        #: Keys the pages of a first list queued, until that whole list is in.
        self._paged: set[str] = set()

    # -- WindowsContainers -------------------------------------------------------------------

    def remember(self, body: bytes) -> None:
        """Cache an object the API returned to winspec's own write (ahead of its watch event)."""
        self._store(msgspec.Raw(body))

    def _store(self, raw: msgspec.Raw) -> tuple[str | None, bool]:
        """Decode and cache one object; its key (None when it has none) and whether the change
        can matter to its bundle (not a status-only write, such as winspec's own)."""
        return self._store_decoded(decode_container(raw))

    def _store_decoded(self, decoded: Decoded) -> tuple[str | None, bool]:
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

    def on_containers_page(self, items: list[Any]) -> None:
        """One page of a first list: cached and queued at once, so the workers start on it
        while the next page is fetched (the whole list still comes to ``listed``)."""
        for decoded in items:
            key, _ = self._store_decoded(decoded)
            if key is not None and key not in self._paged:
                self._paged.add(key)
                self._enqueue(key)

    def on_containers_listed(self, namespace: str | None) -> Callable[[list[Any]], None]:
        def listed(items: list[Any]) -> None:
            before = {
                key for key in self.cache if namespace is None or key.startswith(f"{namespace}/")
            }
            seen: set[str] = set()
            for decoded in items:  # decoded page by page (decode_container)
                key, _ = self._store_decoded(decoded)
                if key is not None:
                    # Every listed key: a relist is how anything missed is caught up (a key
                    # its page already queued is not queued twice).
                    seen.add(key)
                    if key in self._paged:
                        self._paged.discard(key)
                    else:
                        self._enqueue(key)
            for key in before - seen:  # deleted, or out of the selector, while nobody watched
                self._paged.discard(key)
                self._forget(key, self.cache.get(key))

        return listed

    def on_container_event(self, event_type: str, raw: msgspec.Raw) -> None:
        if event_type == "DELETED":
            meta = object_meta(raw)
            try:
                last: WindowsContainer | RequestDecodeError = decode_windows_container(bytes(raw))
            except RequestDecodeError as exc:
                last = exc
            self._forget(f"{meta.namespace}/{meta.name}", last)
            return
        if self._known(raw):
            return
        key, matters = self._store(raw)
        if key is not None and matters:
            self._enqueue(key)

    def _known(self, raw: msgspec.Raw) -> bool:
        """Whether the cache already holds this version of the object, or a newer one: most
        often the echo of winspec's own write, whose answer :meth:`remember` cached. Only the
        metadata is read then; the whole object is decoded only when it is news."""
        meta = object_meta(raw)
        cached = self.cache.get(f"{meta.namespace}/{meta.name}") if meta.name else None
        return (
            isinstance(cached, WindowsContainer | InvalidObjectError)
            and bool(meta.resource_version)
            and not _newer(meta.resource_version, cached.metadata.resource_version)
        )

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

    def on_namespaces_listed(self, items: list[msgspec.Raw]) -> None:
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

    def on_namespace_event(self, event_type: str, raw: msgspec.Raw) -> None:
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

    def on_dependencies_listed(self, kind: str) -> Callable[[list[msgspec.Raw]], None]:
        first = [True]

        def listed(items: list[msgspec.Raw]) -> None:
            self.payloads.clear(kind)
            if first[0]:
                # The first list of the containers enqueues every one of them anyway.
                first[0] = False
                return
            # A relist after a gap: any referenced object may have changed unseen.
            for key in self.index.keys_for_kind(kind):
                self._enqueue(key)

        return listed

    def on_grant_event(self, event_type: str, raw: msgspec.Raw) -> None:
        for key in self.index.keys_for_kind(GMSA_CREDENTIAL_SPEC):
            self._enqueue(key)
            if self._enqueue_after is not None:
                # The API server's authorizer learns of RBAC changes through its own watch,
                # a moment after winspec may: ask again once it surely has.
                self._enqueue_after(key, GRANT_SETTLE_SECONDS)

    def on_nodes_listed(self) -> Callable[[list[msgspec.Raw]], None]:
        dependencies = self.on_dependencies_listed(NODE)

        def listed(items: list[msgspec.Raw]) -> None:
            before, self.nodes = self.nodes, {object_meta(raw).name for raw in items} - {""}
            if before is not None:
                for name in before - self.nodes:  # deleted while nobody watched
                    self._node_changed(name)
            dependencies(items)

        return listed

    def on_node_event(self, event_type: str, raw: msgspec.Raw) -> None:
        # Only a Node appearing or going: its status changes (kubelet heartbeats) would
        # re-queue every resource of the node again and again; the resolver re-reads node
        # facts anyway.
        name = object_meta(raw).name
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

    def on_dependency_event(self, kind: str) -> Callable[[str, msgspec.Raw], None]:
        def changed(event_type: str, raw: msgspec.Raw) -> None:
            meta = object_meta(raw)
            ns = "" if kind == GMSA_CREDENTIAL_SPEC else meta.namespace
            self.payloads.changed((kind, ns, meta.name))
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
