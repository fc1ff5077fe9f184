"""Cluster mode's composition root: ``winspec run --source kubernetes``.

Kubernetes client → :class:`~adapters.kubernetes.source.ClusterSource` (list+watch of
WindowsContainers, Secrets, ConfigMaps, GMSACredentialSpecs) → the work queue → the controller
loop with the shared :class:`~controller.reconcile.BundleReconciler`, whose ports here are the
Kubernetes resolver, the local bundle writer under ``<bundle root>/<namespace>/<name>/``
guarded by the finalizer, and the status writer → HTTP endpoints for metrics and health.

It plugs into :class:`~adapters.runtime.Runtime` as Docker mode does: listen first (a busy
port fails before anything connects), then :meth:`ClusterMode.connect` loads the configuration
(a kubeconfig that cannot be used: exit 2), reaches the API server and checks that the CRD is
served (else exit 1 with one clear line); :meth:`ClusterMode.serve` campaigns for the Lease and
runs the source, the controller and the agent tasks; the shutdown is the runtime's, bounded by
``shutdown_timeout`` + :data:`~adapters.runtime.SHUTDOWN_MARGIN_SECONDS`, the Lease released,
the delivery client and the API client closed within it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from adapters.agentapi.client import AGENT_APIS, AGENT_NODE_API
from adapters.bundles.namespaced import NamespacedBundleWriter
from adapters.kubernetes.bundles import (
    BundleAbandonedError,
    BundleScope,
    FinalizingWriter,
    OnAbandoned,
)
from adapters.kubernetes.client import KubeClient, load_api_client, windows_container_path
from adapters.kubernetes.delivery import (
    AgentEndpoint,
    AgentLocator,
    DeliveryPolicy,
    NodeDigestStatus,
    RemoteBundleWriter,
    agent_ssl_context,
    token_reader,
)
from adapters.kubernetes.leader import LeaderElector, LeaseSettings
from adapters.kubernetes.reflector import WatchSettings
from adapters.kubernetes.resolver import DEPENDENCY_KINDS, KubernetesResolver
from adapters.kubernetes.source import EVENT_TYPES, READY_CONDITION, SOURCE, ClusterSource
from adapters.kubernetes.status import KeptDigestStatus, StatusWriter
from adapters.retry import RetryPolicy
from adapters.runtime import (
    CANCEL_GRACE_SECONDS,
    Manager,
    Meters,
    Runtime,
    StartupError,
    finish,
    until_stopped,
)
from controller.bundle import check_key
from controller.cluster import GROUP, NODE, NODE_LABEL, VERSION, ObjectMeta
from controller.errors import NotFoundError, WinspecError
from controller.loop import Controller
from controller.metrics import Metrics
from controller.ports import SourceHooks, StatusReporter
from controller.reconcile import BundleReconciler
from controller.settings import Settings
from controller.workqueue import WorkQueue

log = logging.getLogger("winspec")

CONTROLLER_NAME = "windowscontainer-bundles"
INITIAL_LIST_CONDITION = "initial-list"
LEADER_CONDITION = "leader"
KUBERNETES_APIS = (
    "version",
    "discovery",
    "list",
    "secret_get",
    "config_get",
    "credential_spec_get",
    "node_get",
    "subjectaccessreview",
    "finalizer_patch",
    "status_patch",
    "resource_get",
    "event_create",
    "lease_get",
    "lease_create",
    "lease_update",
    "agent_pod_list",
    *AGENT_APIS.values(),
    AGENT_NODE_API,
)
#: The first agent resync waits this long once the first list is in (the first deliveries of the
#: start-up are under way by then, so it re-queues fewer of them).
AGENT_RESYNC_FIRST_SECONDS = 5.0


class LeaseLostError(WinspecError):
    """This replica lost the Lease: it stopped reconciling (a restart campaigns again)."""


class APIServerUnreachableError(StartupError):
    """The Kubernetes API server could not be reached at start-up (or lacks the CRD)."""


class ClusterMode(Runtime):
    """One running cluster-mode controller; :meth:`run` returns when it has stopped."""

    backend = "Kubernetes API server"

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        conditions = [READY_CONDITION, INITIAL_LIST_CONDITION]
        # With --node-name each node's instance owns its own resources: no election.
        elect = settings.leader_elect and settings.node_name is None
        if elect:
            conditions.append(LEADER_CONDITION)  # /readyz: whether this replica leads
        super().__init__(
            settings,
            registry=registry,
            conditions=conditions,
            meters=Meters(
                controller=CONTROLLER_NAME,
                apis=KUBERNETES_APIS,
                source=SOURCE,
                event_types=EVENT_TYPES,
                dependency_kinds=DEPENDENCY_KINDS,
            ),
        )
        self._elect = elect
        self._client: KubeClient | None = None
        self._elector: LeaderElector | None = None
        self._leading: asyncio.Task[None] | None = None
        self._remote: RemoteBundleWriter | None = None

    async def _local_root(self, node: str) -> str:
        """The bundle root of every node when bundles are written here: ``--bundle-root``."""
        return self._bundle_root

    async def connect(self) -> None:
        """Load the configuration (:class:`PermanentError`: exit 2), reach the API server and
        check that the WindowsContainer CRD is served (:class:`APIServerUnreachableError`)."""
        s = self.settings
        m = self.metrics
        api_client = await load_api_client(s.kubeconfig, service_account_dir=s.service_account_dir)
        self._client = KubeClient(
            api_client,
            retry=RetryPolicy(attempts=s.retry_attempts),
            on_retry=lambda api: m.api_retries.labels(api=api).inc(),
            timeout=s.api_timeout,
        )
        await self._connect(self._client)

    async def close(self) -> None:
        """Give the Lease up (a standby takes over at once), close the delivery client and the
        API client."""
        if self._leading is not None:
            self._leading.cancel()
            await finish(self._leading, within=CANCEL_GRACE_SECONDS, what="leader election")
        if self._elector is not None:
            await self._elector.release()
        if self._remote is not None:
            await self._remote.close()
        if self._client is not None:
            await self._client.close()

    async def _connect(self, client: KubeClient) -> None:
        """Reach the API server and check that the WindowsContainer CRD is served."""
        try:
            await client.request("GET", "/version", api="version")
        except WinspecError as exc:
            raise APIServerUnreachableError(
                f"cannot reach the Kubernetes API server {client.host}: {exc}"
            ) from exc
        try:
            await client.request("GET", f"/apis/{GROUP}/{VERSION}", api="discovery")
        except NotFoundError as exc:
            raise APIServerUnreachableError(
                f"the API server {client.host} does not serve {GROUP}/{VERSION}: apply "
                "manifests/base/crd.yaml first"
            ) from exc
        except WinspecError as exc:
            raise APIServerUnreachableError(
                f"cannot reach the Kubernetes API server {client.host}: {exc}"
            ) from exc
        log.info("connected to the Kubernetes API server", extra={"server": client.host})

    async def serve(self, manager: Manager) -> None:
        """Campaign for the Lease (unless --node-name or --no-leader-elect), then watch and
        reconcile until asked to stop, a part fails, or the Lease is lost."""
        client = self._client
        assert client is not None
        # Started: connected, and campaigning or reconciling (a standby is started too).
        self.started.set()
        if self._elect:
            elector = self._elector = self._new_elector(client)
            leading = self._leading = asyncio.create_task(elector.run(), name="leader-election")
            became = asyncio.ensure_future(elector.leading.wait())
            try:
                await until_stopped(
                    self.stopping,
                    asyncio.wait({leading, became}, return_when=asyncio.FIRST_COMPLETED),
                    what="campaign",
                )
            finally:
                became.cancel()
            if not elector.leading.is_set():
                return  # asked to stop while standing by (the campaign ends in close())

            async def lease_kept() -> None:
                await asyncio.wait({leading})
                # The lease is gone: another replica may be reconciling already. Stop now.
                raise LeaseLostError("lost the leader election lease; stopped reconciling")

            manager.add_task("lease", lease_kept, essential=True)
        await self._reconcile_all(manager, client)

    def _new_elector(self, client: KubeClient) -> LeaderElector:
        s = self.settings
        lease = s.leader_election_id
        self.metrics.declare_lease(lease)

        def changed(leading: bool) -> None:
            self.metrics.leader_election_master_status.labels(name=lease).set(int(leading))
            self.health.set_ready(LEADER_CONDITION, leading)

        return LeaderElector(
            client,
            LeaseSettings(
                namespace=s.leader_election_namespace,
                name=lease,
                identity=f"{socket.gethostname()}_{secrets.token_hex(4)}",
                lease_duration=s.lease_duration,
                renew_deadline=s.lease_duration * 2 / 3,
                retry_period=s.lease_duration * 2 / 15,
            ),
            on_change=changed,
        )

    async def _reconcile_all(self, manager: Manager, client: KubeClient) -> None:
        """Watch and reconcile until asked to stop, a part fails, or the lease is lost."""
        s = self.settings
        m = self.metrics
        queue = WorkQueue(CONTROLLER_NAME, metrics=m.queue_metrics(CONTROLLER_NAME))
        bundles = NamespacedBundleWriter(Path(self._bundle_root))
        scope = _scope(s)
        watch = WatchSettings(
            timeout_seconds=s.watch_timeout,
            idle_timeout=s.idle_timeout,
            list_from_cache=s.list_from_cache,
        )
        # Set once every resource is in the cache: only then can a bundle be judged an orphan.
        listed = asyncio.Event()

        async def synced() -> None:
            listed.set()
            # Agent delivery leaves the local root alone (resync cleans the agents instead).
            if s.delivery != "agent":
                try:
                    await _clean_local(
                        bundles, scope, source.cache.keys(), queue.add,
                        _exists_in(client) if s.list_from_cache else None,
                    )  # fmt: skip
                except WinspecError as exc:
                    log.warning("start-up clean-up of the bundle root failed",
                                extra={"error": str(exc)})  # fmt: skip
            m.last_sync_timestamp.labels(source=SOURCE).set(time.time())
            self.health.set_ready(INITIAL_LIST_CONDITION, True)

        source = ClusterSource(
            client,
            enqueue=queue.add,
            enqueue_after=queue.add_after,
            namespaces=s.namespace,
            label_selector=_selector(s.selector, s.node_name),
            settings=watch,
            hooks=SourceHooks(
                on_event=lambda kind: m.events_received.labels(source=SOURCE, type=kind).inc(),
                on_restart=lambda reason: m.watch_restarts.labels(
                    source=SOURCE, reason=reason
                ).inc(),
                on_ready=lambda ready: self.health.set_ready(READY_CONDITION, ready),
                on_synced=lambda: _spawn(synced()),
            ),
        )
        remote = _remote_writer(s, client, source, queue, m) if s.delivery == "agent" else None
        self._remote = remote
        resolver = KubernetesResolver(
            client,
            cache=source.cache,
            node_defaults=s.node_settings(),
            observe=lambda kind, seconds: m.dependency_fetch_seconds.labels(kind=kind).observe(
                seconds
            ),
            node_name=s.node_name,
            # Where each bundle will be on its node: the agent's root, or this instance's own.
            bundle_root=remote.bundle_root if remote is not None else self._local_root,
            namespaces=source.namespace_labels,
            pod_security_default=s.pod_security_default,
            grace_period=s.dependency_grace_period,
            enqueue_after=queue.add_after,
            payloads=source.store.payloads,
        )
        status_writer = StatusWriter(
            client,
            cache=source.cache,
            generations=resolver.resolved_generation,
            remember=source.remember,
        )
        writer = FinalizingWriter(
            remote or bundles,
            client,
            cache=source.cache,
            remember=source.remember,
            released=source.released,
            on_abandoned=_abandoned_reporter(m, status_writer),
        )
        status: StatusReporter = status_writer
        if remote is not None:
            m.declare_abandon_reasons()
            m.agents_missing.report(remote.agents_missing)
            status = NodeDigestStatus(status, remote)
            manager.add_task(
                "agent-resync",
                lambda: _resync_agents(
                    remote, queue.add, s.resync_interval, scope.owns_unseen, listed
                ),
            )
            pods = remote.locator.watcher(
                watch,
                SourceHooks(
                    on_restart=lambda reason: m.watch_restarts.labels(
                        source=SOURCE, reason=reason
                    ).inc()
                ),
            )
            manager.add_task("agent-pod-watch", pods.run)
        else:
            status = KeptDigestStatus(status, bundles.kept_digest)
        controller = Controller(
            CONTROLLER_NAME,
            queue=queue,
            reconciler=BundleReconciler(
                resolver=resolver, writer=writer, metrics=m, status=status, check_key=check_key
            ),
            workers=s.workers,
            metrics=m,
            initial=source,
        )
        manager.add_source("kubernetes-source", source)
        manager.add_controller(controller)
        try:
            await manager.run()
        finally:
            bundles.close()


def _remote_writer(
    s: Settings,
    client: KubeClient,
    source: ClusterSource,
    queue: WorkQueue,
    m: Metrics,
) -> RemoteBundleWriter:
    """The writer of ``--delivery agent``: each bundle to the agent pod on its node, its
    retries and per-node failures counted. A node's agent found anew (a pod recreated or
    moved) re-queues that node's resources."""

    def delivered(node: str, ok: bool) -> None:
        m.declare_node(node)
        if not ok:
            m.delivery_failures.labels(node=node).inc()

    def found(node: str) -> None:
        for key in source.index.keys_for((NODE, "", node)):
            queue.add(key)

    locator = AgentLocator(
        client,
        AgentEndpoint(namespace=s.agent_namespace, selector=s.agent_selector, port=s.agent_port),
        on_found=found,
    )
    return RemoteBundleWriter(
        locator,
        cache=source.cache,
        token=token_reader(Path(s.agent_token_file)),
        ssl_context=agent_ssl_context(Path(s.agent_ca_file) if s.agent_ca_file else None),
        policy=DeliveryPolicy(
            per_node=s.agent_concurrency,
            node_timeout=s.agent_timeout,
            removal_grace=s.agent_removal_grace,
        ),
        server_name=s.agent_server_name,
        on_retry=lambda api: m.api_retries.labels(api=api).inc(),
        on_delivery=delivered,
        node_deleted=source.node_deleted,
        enqueue_after=queue.add_after,
    )


async def _clean_local(
    bundles: NamespacedBundleWriter,
    scope: BundleScope,
    seen: Collection[str],
    enqueue: Callable[[str], None],
    exists: Callable[[str], Awaitable[bool]] | None = None,
) -> None:
    """Once the first list is in: delete the leftovers of interrupted writes that ``scope``
    owns, and queue the bundles whose resource is gone (deleted while winspec was down) that it
    owns: their reconcile removes them. What other instances sharing the root own is left.
    ``exists``, when given, is asked first of each such resource (the list may have come from
    the watch cache): one that exists keeps its bundle."""
    removed = await bundles.sweep(scope.owned(seen))
    if removed:
        log.info("removed leftovers of an earlier run", extra={"count": len(removed)})
    for key in await bundles.list_ids():
        if key not in seen and scope.owns_unseen(key):
            if exists is not None and await exists(key):
                # The first list came from the watch cache, which had not caught up: the watch
                # brings the resource, and the bundle stays.
                log.info("bundle kept: its resource exists", extra={"key": key})
                continue
            enqueue(key)


def _exists_in(client: KubeClient) -> Callable[[str], Awaitable[bool]]:
    """Whether the WindowsContainer of a key exists, asked of the API server with a consistent
    read (what a list served from the watch cache may not show yet). Unsure (the server did not
    answer) counts as existing: a bundle is never removed on a guess."""

    async def exists(key: str) -> bool:
        namespace, _, name = key.partition("/")
        try:
            await client.request("GET", windows_container_path(namespace, name), api="resource_get")
        except NotFoundError:
            return False
        except WinspecError as exc:
            log.warning("bundle kept: cannot tell whether its resource exists",
                        extra={"key": key, "error": str(exc)})  # fmt: skip
        return True

    return exists


def _abandoned_reporter(m: Metrics, status: StatusWriter) -> OnAbandoned:
    """What a removal given up leaves: a log line, the metric, and a Warning Event on the
    object (when it still exists)."""

    async def report(key: str, meta: ObjectMeta | None, exc: BundleAbandonedError) -> None:
        m.bundle_removals_abandoned.labels(reason=exc.cause).inc()
        log.warning(
            "finalizer released without removing the bundle",
            extra={"key": key, "node": exc.node, "reason": exc.cause, "error": str(exc)},
        )
        if meta is not None:
            await status.event(meta, exc.reason, f"{exc}; the finalizer was released")

    return report


async def _resync_agents(
    remote: RemoteBundleWriter,
    enqueue: Callable[[str], None],
    interval: float,
    owns: Callable[[str], bool],
    listed: asyncio.Event,
) -> None:
    """Once the first list is in (never before: a resource not yet listed would look like an
    orphan), then every ``interval``: compare agents' bundles with the desired state (orphans
    that ``owns`` accepts deleted, missing or different ones re-queued)."""
    await listed.wait()
    await asyncio.sleep(min(interval, AGENT_RESYNC_FIRST_SECONDS))
    while True:
        try:
            removed, queued = await remote.resync(await remote.agent_nodes(), enqueue, owns)
            if removed or queued:
                log.info(
                    "agent resync", extra={"orphans_removed": len(removed), "requeued": len(queued)}
                )
        except WinspecError as exc:
            log.warning("agent resync failed", extra={"error": str(exc)})
        await asyncio.sleep(interval)


def _scope(s: Settings) -> BundleScope:
    """What this instance owns: its namespaces, and whether a selector (--selector, or the
    node label of --node-name) makes it see only part of each."""
    return BundleScope(
        namespaces=frozenset(s.namespace), selective=_selector(s.selector, s.node_name) is not None
    )


def _selector(selector: str | None, node_name: str | None) -> str | None:
    """The label selector of the resources: --selector, and the node label of --node-name."""
    parts = [p for p in (selector, f"{NODE_LABEL}={node_name}" if node_name else None) if p]
    return ",".join(parts) or None


_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine in the background, holding a reference until it ends."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
