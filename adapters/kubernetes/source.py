"""Cluster mode's key source: list+watch of WindowsContainers and of what they refer to.

:class:`ClusterSource` runs one :class:`~adapters.kubernetes.reflector.Reflector` for
WindowsContainers (per namespace watched, or one for all) and one each for Secrets, ConfigMaps,
GMSACredentialSpecs, the RBAC objects that grant their use, Nodes and Namespaces (whose Pod
Security label decides what a resource in it may ask for), and hands what they see to a
:class:`~adapters.kubernetes.store.ClusterStore`: the cache the resolver reads, the reference
index, and the keys (``<namespace>/<name>``) put on the queue. It reports readiness once every
reflector has listed, and the WindowsContainers of those first lists
(:class:`controller.ports.InitialKeys`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from adapters.kubernetes.client import KubeClient
from adapters.kubernetes.reflector import Reflector, WatchSettings, collection_path
from adapters.kubernetes.store import ClusterStore, decode_container
from controller.cluster import (
    CONFIG_MAP,
    GMSA_CREDENTIAL_SPEC,
    GROUP,
    PLURAL,
    SECRET,
    VERSION,
)
from controller.ports import SourceHooks

SOURCE = "kubernetes"
#: The ``type`` label values of ``winspec_events_received_total`` in cluster mode.
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK")
READY_CONDITION = "kubernetes-watch"


class ClusterSource:
    """The reflectors of cluster mode, feeding one store (:class:`ClusterStore`)."""

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
        self._settings = settings or WatchSettings()
        self._hooks = hooks or SourceHooks()
        self.store = ClusterStore(enqueue=enqueue, enqueue_after=enqueue_after)
        # What the resolver, the status writer and the finalizing writer read of the store.
        self.cache = self.store.cache
        self.released = self.store.released
        self.index = self.store.index
        self.remember = self.store.remember
        self.namespace_labels = self.store.namespace_labels
        self.node_deleted = self.store.node_deleted
        self._ready: dict[str, bool] = {}
        self._first_list: frozenset[str] | None = None
        self._first_listed = asyncio.Event()
        self._stopping = asyncio.Event()
        store = self.store
        scopes: list[str | None] = list(namespaces) or [None]
        self.reflectors: list[Reflector] = []
        for ns in scopes:
            self._add(
                client,
                collection_path(group=GROUP, version=VERSION, plural=PLURAL, namespace=ns),
                f"{PLURAL}.{GROUP}",
                store.on_containers_listed(ns),
                store.on_container_event,
                label_selector,
                metadata_only=False,
                decode=decode_container,
                on_first_page=store.on_containers_page,
            )
            for kind, plural in ((SECRET, "secrets"), (CONFIG_MAP, "configmaps")):
                self._add(
                    client,
                    collection_path(group="", version="v1", plural=plural, namespace=ns),
                    plural,
                    store.on_dependencies_listed(kind),
                    store.on_dependency_event(kind),
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
                store.on_dependencies_listed(GMSA_CREDENTIAL_SPEC),
                store.on_grant_event,
                None,
            )
        # A Node appearing re-queues the resources scheduled to it: a resource waiting for its
        # Node (retried with backoff until then) becomes Ready at once; one going re-queues
        # them too (a deletion waiting for that node's agent need not wait any more).
        self._add(
            client,
            collection_path(group="", version="v1", plural="nodes"),
            "nodes",
            store.on_nodes_listed(),
            store.on_node_event,
            None,
        )
        # Namespaces, for their Pod Security label: cluster-scoped, so watched whole (also under
        # --namespace); a change of the label re-queues the namespace's resources.
        self._add(
            client,
            collection_path(group="", version="v1", plural="namespaces"),
            "namespaces",
            store.on_namespaces_listed,
            store.on_namespace_event,
            None,
        )
        self._add(
            client,
            collection_path(group="windows.k8s.io", version="v1", plural="gmsacredentialspecs"),
            "gmsacredentialspecs.windows.k8s.io",
            store.on_dependencies_listed(GMSA_CREDENTIAL_SPEC),
            store.on_dependency_event(GMSA_CREDENTIAL_SPEC),
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
        on_first_page: Callable[[list[Any]], None] | None = None,
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
                on_first_page=on_first_page,
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
                self._first_list = frozenset(self.store.cache)
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


async def _first_failure(tasks: list[asyncio.Task[Any]]) -> None:
    """Wait until one task fails (its exception is raised) or all end."""
    pending: set[asyncio.Task[Any]] = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
