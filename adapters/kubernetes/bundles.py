"""Cluster mode's bundle writers: ``<bundle root>/<namespace>/<name>/``, guarded by a finalizer.

Bundles on this host are written by the shared
:class:`~adapters.bundles.namespaced.NamespacedBundleWriter` (the node agent's tree too); it
remembers the digest each bundle it wrote keeps in ``.digest``, which is what ``status.digest``
reports.

:class:`BundleScope` says which bundles below a root shared with other instances are this
instance's to remove (see its docstring for the rule).

:class:`FinalizingWriter` wraps a writer with the finalizer ``winspec.io/bundle``: it is added to
the object before its first bundle is written (so a deletion always waits for winspec), and
removed only after the bundle is deleted. A removal that fails (the bundle root unreachable)
raises before the finalizer is touched, so the object stays until a retry succeeds, unless
the writer gives the removal up for good (:class:`BundleAbandonedError`: central delivery to a
node that is gone or whose agent stayed unreachable): then the finalizer of an object being
deleted is released all the same, and ``on_abandoned`` reports it (a Warning Event, a metric).
Both patches carry the object's resourceVersion: a concurrent change answers 409, and the
reconcile is retried with a fresh copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Collection, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from adapters.bundles.namespaced import Owned
from adapters.kubernetes.client import MERGE_PATCH, KubeClient, windows_container_path
from controller.bundle import BundleContent, WriteOutcome
from controller.cluster import (
    FINALIZER,
    InvalidObjectError,
    ObjectMeta,
    WindowsContainer,
    decode_windows_container,
)
from controller.errors import NotFoundError, RequestDecodeError, TransientError
from controller.ports import BundleWriter


class BundleAbandonedError(TransientError):
    """A writer gives up removing a bundle: its node is gone, or unreachable for too long.

    Raised by :meth:`~controller.ports.BundleWriter.remove`; ``cause`` is the metric's reason
    (:data:`~controller.metrics.ABANDON_REASONS`). For an object being deleted the finalizer
    is released all the same; for any other it stays a (retried) failure.
    """

    reason = "BundleNotRemoved"

    def __init__(self, message: str, *, node: str, cause: str) -> None:
        super().__init__(message)
        self.node = node
        self.cause = cause


#: What is told of a removal given up: the key, and the metadata of the object whose finalizer
#: was released for it (None: no finalizer was left to release).
OnAbandoned = Callable[[str, ObjectMeta | None, BundleAbandonedError], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class BundleScope:
    """What an instance owns below a bundle root that other instances may share.

    An instance owns the bundles of the resources it watches: those of its namespaces
    (``--namespace``; none given: all) that match its label selector (``--selector``, plus the
    node label of ``--node-name``). It removes a bundle only when it owns it:

    * a resource it watches that is deleted, refused, or leaves its selector carrying winspec's
      finalizer (the finalizer is what makes the owning instance see the deletion);
    * at start-up and in every resync, a bundle whose resource is not in its cache after a
      full list, only if the bundle is in one of its namespaces **and** it watches every
      resource there (no selector). With a selector, a bundle of a resource it does not see is
      another instance's, or an orphan of a resource whose finalizer was taken off by hand:
      it cannot tell which, so it leaves it (an instance without a selector for that
      namespace, or a person, removes such an orphan);
    * leftovers of interrupted writes only of bundles it owns: in its namespaces, and with a
      selector only those of resources in its cache (another instance's may be a write in
      progress).
    """

    #: The namespaces watched; empty: all of them.
    namespaces: frozenset[str] = frozenset()
    #: Whether a label selector makes it watch only part of each namespace.
    selective: bool = False

    def covers(self, namespace: str) -> bool:
        """Whether ``namespace`` is one of the watched namespaces."""
        return not self.namespaces or namespace in self.namespaces

    def owns_unseen(self, key: str) -> bool:
        """Whether the bundle of ``key``, a resource not in the cache after a full list, is this
        instance's to remove (the resource is gone from a namespace it watches whole)."""
        return not self.selective and self.covers(key.partition("/")[0])

    def owned(self, seen: Collection[str]) -> Owned:
        """Which leftovers of interrupted writes a sweep may delete in each namespace
        (``seen``: the keys of the resources in the cache), for
        :meth:`~adapters.bundles.namespaced.NamespacedBundleWriter.sweep`."""

        def names(namespace: str) -> Collection[str] | None:
            if not self.covers(namespace):
                return ()
            if self.selective:
                return {k.partition("/")[2] for k in seen if k.startswith(namespace + "/")}
            return None

        return names


class FinalizingWriter:
    """A :class:`~controller.ports.BundleWriter` that keeps the finalizer in step with the
    bundle: on the object before the bundle exists, off it only once the bundle is gone."""

    def __init__(
        self,
        inner: BundleWriter,
        client: KubeClient,
        *,
        cache: Mapping[str, WindowsContainer | RequestDecodeError],
        remember: Callable[[bytes], None],
        released: MutableMapping[str, ObjectMeta] | None = None,
        on_abandoned: OnAbandoned | None = None,
    ) -> None:
        self._inner = inner
        self._on_abandoned = on_abandoned
        self._client = client
        self._cache = cache
        self._remember = remember
        self._released: MutableMapping[str, ObjectMeta] = released if released is not None else {}

    async def write(self, bundle_id: str, content: BundleContent) -> bool | WriteOutcome:
        """Add the finalizer if missing, then write the bundle."""
        wc = self._cache.get(bundle_id)
        if isinstance(wc, WindowsContainer) and FINALIZER not in wc.metadata.finalizers:
            await self._set_finalizers(wc.metadata, [*wc.metadata.finalizers, FINALIZER])
        return await self._inner.write(bundle_id, content)

    async def remove(self, bundle_id: str) -> bool:
        """Remove the bundle, then the finalizer (of an object being deleted, also one whose
        spec does not decode: its deletion must not wait for a fix). A removal the writer
        gives up releases the finalizer of an object being deleted (or gone) too."""
        abandoned: BundleAbandonedError | None = None
        try:
            removed = await self._inner.remove(bundle_id)
        except BundleAbandonedError as exc:
            if not self._going(bundle_id):
                raise  # a live object's stale bundle: that stays a failure
            abandoned, removed = exc, False
        entry = self._cache.get(bundle_id)
        released: ObjectMeta | None = None  # the object whose finalizer this call took off
        if isinstance(entry, WindowsContainer | InvalidObjectError):
            meta = entry.metadata
            if meta.deletion_timestamp is not None and FINALIZER in meta.finalizers:
                rest = _without(meta.finalizers)
                with contextlib.suppress(NotFoundError):  # already gone
                    # The last finalizer off: the object is gone, its answer not worth caching
                    # (it could land after the watch's DELETED and outlive the object).
                    await self._set_finalizers(meta, rest, remember=bool(rest))
                released = meta
        elif entry is None and bundle_id in self._released:
            released = self._released[bundle_id]
            await self._release(bundle_id)
        if abandoned is not None and self._on_abandoned is not None:
            await self._on_abandoned(bundle_id, released, abandoned)
        return removed

    def _going(self, key: str) -> bool:
        """Whether the object of ``key`` is being deleted, gone, or out of the watched set."""
        entry = self._cache.get(key)
        if isinstance(entry, WindowsContainer | InvalidObjectError):
            return entry.metadata.deletion_timestamp is not None
        return entry is None

    async def _release(self, key: str) -> None:
        """Take the finalizer off an object that left the watched set (it still exists,
        unwatched: its current version is read, and the answer not cached)."""
        try:
            body = await self._client.request(
                "GET", self._path(self._released[key]), api="resource_get"
            )
            try:
                current = decode_windows_container(body).metadata
            except InvalidObjectError as exc:
                current = exc.metadata
            if FINALIZER in current.finalizers:
                await self._set_finalizers(current, _without(current.finalizers), remember=False)
        except NotFoundError:
            pass  # deleted meanwhile: nothing holds it
        self._released.pop(key, None)

    async def list_ids(self) -> list[str]:
        """Every bundle present, as ``<namespace>/<name>``."""
        return await self._inner.list_ids()

    @staticmethod
    def _path(meta: ObjectMeta) -> str:
        return windows_container_path(meta.namespace, meta.name)

    async def _set_finalizers(
        self, meta: ObjectMeta, finalizers: list[str], *, remember: bool = True
    ) -> None:
        body = {"metadata": {"finalizers": finalizers, "resourceVersion": meta.resource_version}}
        answer = await self._client.request(
            "PATCH", self._path(meta), body=body, content_type=MERGE_PATCH, api="finalizer_patch"
        )
        if remember:
            self._remember(answer)


def _without(finalizers: Sequence[str]) -> list[str]:
    """``finalizers`` without winspec's."""
    return [f for f in finalizers if f != FINALIZER]
