"""Docker mode's composition root: ``winspec run --source docker`` (the default).

Docker client → event source → work queue → controller loop with the bundle reconciler
(Docker request resolver + local bundle writer) → HTTP endpoints for metrics and health.

It plugs into :class:`~adapters.runtime.Runtime`, which listens, connects, runs and stops it
within ``shutdown_timeout`` + :data:`~adapters.runtime.SHUTDOWN_MARGIN_SECONDS` as it does
cluster mode: :meth:`DockerMode.connect` reaches the engine (and the swarm manager),
:meth:`DockerMode.serve` runs the event source and the controller, :meth:`DockerMode.close`
closes the engine clients.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from adapters.bundles.local import LocalBundleWriter
from adapters.docker.client import DockerClient
from adapters.docker.events import (
    EVENT_TYPES,
    READY_CONDITION,
    DockerEventSource,
    EventSourceSettings,
)
from adapters.docker.resolver import (
    DEPENDENCY_KINDS,
    DockerRequestResolver,
    node_facts_from_info,
)
from adapters.docker.types import Info, decode
from adapters.retry import RetryPolicy
from adapters.runtime import Manager, Meters, Runtime, StartupError
from controller.errors import WinspecError
from controller.loop import Controller
from controller.models import NodeFacts
from controller.ports import SourceHooks
from controller.reconcile import BundleReconciler
from controller.settings import Settings
from controller.workqueue import WorkQueue

log = logging.getLogger("winspec")

CONTROLLER_NAME = "docker-bundles"
INITIAL_LIST_CONDITION = "initial-list"
ATOMIC_REPLACE_WARNING = (
    "the bundle root cannot swap directories atomically (no RENAME_EXCHANGE): a bundle whose "
    "payloads change is absent for an instant while it is replaced"
)
DOCKER_APIS = (
    "version",
    "info",
    "container_list",
    "container_inspect",
    "image_inspect",
    "task_inspect",
    "config_inspect",
)


class EngineUnreachableError(StartupError):
    """The Docker engine could not be reached at start-up."""


class DockerMode(Runtime):
    """One running Docker-mode controller; :meth:`run` returns when it has stopped."""

    backend = "Docker engine"

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        super().__init__(
            settings,
            registry=registry,
            conditions=[READY_CONDITION, INITIAL_LIST_CONDITION],
            meters=Meters(
                controller=CONTROLLER_NAME,
                apis=DOCKER_APIS,
                source="docker",
                event_types=EVENT_TYPES,
                dependency_kinds=DEPENDENCY_KINDS,
            ),
        )
        m = self.metrics

        def engine_client(host: str | None) -> DockerClient:
            # The same TLS settings (DOCKER_TLS_VERIFY/DOCKER_CERT_PATH), retries and timeout.
            return DockerClient(
                host,
                retry=RetryPolicy(attempts=settings.retry_attempts),
                on_retry=lambda api: m.api_retries.labels(api=api).inc(),
                timeout=settings.api_timeout,
            )

        self._client = engine_client(settings.docker_host)
        # Tasks and configs come from a swarm manager: --swarm-host, else the node's engine.
        self._swarm_client = engine_client(settings.swarm_host) if settings.swarm_host else None
        self._info: Info | None = None

    def backend_address(self) -> dict[str, str]:
        """The engine's endpoint, as log fields."""
        return {"docker_host": self._client.endpoint.display}

    async def connect(self) -> None:
        """Reach the engine (and the swarm manager): :class:`EngineUnreachableError` when it
        cannot; :class:`PermanentError` for TLS files, a named pipe off Windows."""
        client, swarm_client = self._client, self._swarm_client
        info = self._info = await self._connect(client, swarm_client)
        log.info(
            "connected to the Docker engine",
            extra={
                "docker_host": client.endpoint.display,
                "api_version": client.api_version,
                "os_type": info.os_type,
                "swarm_node_state": info.swarm.local_node_state if info.swarm else "",
                "swarm_manager": bool(info.swarm and info.swarm.control_available),
                "swarm_host": swarm_client.endpoint.display if swarm_client else None,
            },
        )

    async def serve(self, manager: Manager) -> None:
        """Run the event source and the controller until stopped."""
        s = self.settings
        info = self._info
        assert info is not None
        node = node_facts_from_info(info, s.node_settings())
        await self._serve(
            manager,
            self._client,
            node,
            swarm_client=self._swarm_client,
            swarm_worker=info.swarm_worker,
        )

    async def close(self) -> None:
        """Close the engine clients."""
        clients = [c for c in (self._client, self._swarm_client) if c is not None]
        await asyncio.gather(*(c.close() for c in clients))

    async def _connect(self, client: DockerClient, swarm_client: DockerClient | None) -> Info:
        """Open the clients, negotiate the API versions and read ``/info``.

        The first failed attempt is logged at once, before the retries: ``/metrics`` already
        answers (all zeros) and a user stopping winspec meanwhile must still learn why."""
        await client.open()  # PermanentError: TLS files, a named pipe off Windows

        def not_answering(api: str, exc: BaseException) -> None:
            client.on_retry_error = None  # once
            log.warning(
                "cannot reach the Docker engine yet; retrying (no bundle is written until it "
                "answers)",
                extra={"docker_host": client.endpoint.display, "error": str(exc)},
            )

        client.on_retry_error = not_answering
        try:
            await client.negotiate()
            raw_info = await client.get_raw("/info", api="info")
        except WinspecError as exc:
            # The client's errors already name the endpoint.
            raise EngineUnreachableError(f"cannot reach the Docker engine: {exc}") from exc
        finally:
            client.on_retry_error = None
        info = decode(raw_info, Info, "/info")
        if swarm_client is not None:
            await swarm_client.open()
            try:
                await swarm_client.negotiate()
            except WinspecError as exc:
                raise EngineUnreachableError(
                    f"cannot reach the swarm manager (--swarm-host): {exc}"
                ) from exc
        elif info.swarm_worker:
            log.warning(
                "this node is a swarm worker and no --swarm-host is set: containers of "
                "swarm tasks will be refused (workers cannot inspect tasks or configs)"
            )
        return info

    async def _serve(
        self,
        manager: Manager,
        client: DockerClient,
        node: NodeFacts,
        *,
        swarm_client: DockerClient | None = None,
        swarm_worker: bool = False,
    ) -> None:
        s = self.settings
        m = self.metrics
        root = Path(self._bundle_root)
        # The reconciler counts written/unchanged/removed bundles and times the writes.
        writer = LocalBundleWriter(root)
        # Leftover temp directories from a crash go now; dead bundles go through the
        # relist, which enqueues every bundle whose container no longer exists.
        removed = await writer.sweep(None)
        if removed:
            log.info("removed leftovers of an earlier run", extra={"count": len(removed)})
        if not await writer.atomic_replace_supported():
            log.warning(ATOMIC_REPLACE_WARNING, extra={"bundle_root": self._bundle_root})
        resolver = DockerRequestResolver(
            client,
            node=node,
            bundle_root=self._bundle_root,
            secrets_dir=Path(s.secrets_dir),
            observe=lambda kind, seconds: m.dependency_fetch_seconds.labels(kind=kind).observe(
                seconds
            ),
            swarm_client=swarm_client,
            swarm_worker=swarm_worker,
        )
        queue = WorkQueue(CONTROLLER_NAME, metrics=m.queue_metrics(CONTROLLER_NAME))

        def on_synced() -> None:
            m.last_sync_timestamp.labels(source="docker").set(time.time())
            self.health.set_ready(INITIAL_LIST_CONDITION, True)

        source = DockerEventSource(
            client,
            enqueue=queue.add,
            bundle_ids=writer.list_ids,
            settings=EventSourceSettings(
                resync_interval=s.resync_interval, idle_timeout=s.idle_timeout
            ),
            hooks=SourceHooks(
                on_event=lambda action: m.events_received.labels(
                    source="docker", type=action
                ).inc(),
                on_restart=lambda reason: m.watch_restarts.labels(
                    source="docker", reason=reason
                ).inc(),
                on_synced=on_synced,
                on_ready=lambda ready: self.health.set_ready(READY_CONDITION, ready),
            ),
        )
        controller = Controller(
            CONTROLLER_NAME,
            queue=queue,
            # No credential spec reader: the resolver reads file:// and registry:// specs in a
            # worker thread and fills the request's map, so nothing blocks the event loop.
            reconciler=BundleReconciler(resolver=resolver, writer=writer, metrics=m),
            workers=s.workers,
            metrics=m,
            initial=source,
        )
        manager.add_source("docker-events", source)
        manager.add_controller(controller)
        try:
            await manager.run(started=self.started.set)
        finally:
            writer.close()
