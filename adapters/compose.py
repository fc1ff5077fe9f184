"""The composition root: builds one mode of winspec from :class:`Settings` and runs it.

Docker mode: Docker client → event source → work queue → controller loop with the bundle
reconciler (Docker request resolver + local bundle writer) → HTTP endpoints for metrics and
health. Shutdown on SIGTERM/SIGINT: stop taking events, let in-flight reconciles finish within
the deadline, stop serving, return 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from adapters.bundles.local import LocalBundleWriter
from adapters.docker.client import DockerClient, RetryPolicy
from adapters.docker.events import (
    EVENT_FILTERS,
    READY_CONDITION,
    DockerEventSource,
    EventSourceHooks,
    EventSourceSettings,
)
from adapters.docker.resolver import DockerRequestResolver, NodeOverrides, node_facts_from_info
from adapters.docker.types import Info, decode
from adapters.http import bound_port, build_app, start_http_server, stop_http_server
from controller.errors import WinspecError
from controller.health import HealthState
from controller.loop import Controller
from controller.metrics import Metrics
from controller.models import NodeFacts
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
    "container_list",
    "container_inspect",
    "image_inspect",
    "task_inspect",
    "config_inspect",
)


class EngineUnreachableError(WinspecError):
    """The Docker engine could not be reached at start-up."""


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``:8080`` means every address) into its parts."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"invalid listen address {listen!r}: expected HOST:PORT")
    return (host.strip("[]") or "0.0.0.0"), int(port)


class DockerMode:
    """One running Docker-mode controller; :meth:`run` returns when it has stopped."""

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry, controller=CONTROLLER_NAME)
        self.health = HealthState([READY_CONDITION, INITIAL_LIST_CONDITION])
        self._stop = asyncio.Event()
        self.http_port: int | None = None
        self._bundle_root = os.path.abspath(settings.bundle_root)
        self.started = asyncio.Event()

    def request_stop(self) -> None:
        """Ask the controller to shut down gracefully."""
        self._stop.set()

    async def run(self) -> None:
        """Connect, serve, watch and reconcile until asked to stop."""
        s = self.settings
        m = self.metrics
        for api in DOCKER_APIS:
            m.declare_api(api)
        m.declare_source("docker", event_types=EVENT_FILTERS["event"])

        def engine_client(host: str | None) -> DockerClient:
            # The same TLS settings (DOCKER_TLS_VERIFY/DOCKER_CERT_PATH), retries and timeout.
            return DockerClient(
                host,
                retry=RetryPolicy(attempts=s.retry_attempts),
                on_retry=lambda api: m.api_retries.labels(api=api).inc(),
                timeout=s.api_timeout,
            )

        client = engine_client(s.docker_host)
        # Tasks and configs come from a swarm manager: --swarm-host, else the node's engine.
        swarm_client = engine_client(s.swarm_host) if s.swarm_host else None
        await client.open()
        try:
            try:
                await client.negotiate()
                raw_info = await client.get_raw("/info", api="version")
            except WinspecError as exc:
                # The client's errors already name the endpoint.
                raise EngineUnreachableError(f"cannot reach the Docker engine: {exc}") from exc
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
            node = node_facts_from_info(
                info,
                NodeOverrides(
                    windows_build=s.windows_build,
                    cpu_count=s.cpu_count,
                    default_isolation=s.default_isolation,
                    lcow_supported=s.lcow,
                    dns_search=list(s.dns_search),
                    daemon_root=s.daemon_root,
                ),
            )
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
            await self._serve(
                client, node, swarm_client=swarm_client, swarm_worker=info.swarm_worker
            )
        finally:
            if swarm_client is not None:
                await swarm_client.close()
            await client.close()

    async def _serve(
        self,
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
        removed = await writer.sweep(set(await writer.list_ids()))
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
        controller = Controller(
            CONTROLLER_NAME,
            queue=queue,
            # No credential spec reader: the resolver reads file:// and registry:// specs in a
            # worker thread and fills the request's map, so nothing blocks the event loop.
            reconciler=BundleReconciler(resolver=resolver, writer=writer, metrics=m),
            workers=s.workers,
            metrics=m,
        )

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
            hooks=EventSourceHooks(
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
        host, port = split_listen(s.listen)
        runner = await start_http_server(
            host, port, build_app(registry=self.registry, health=self.health)
        )
        self.http_port = bound_port(runner)
        log.info(
            "serving /metrics, /healthz and /readyz", extra={"listen": f"{host}:{self.http_port}"}
        )
        controller_task = asyncio.create_task(controller.run(), name="controller")
        source_task = asyncio.create_task(source.run(), name="docker-events")
        self.started.set()
        try:
            stop_wait = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait(
                {stop_wait, controller_task, source_task}, return_when=asyncio.FIRST_COMPLETED
            )
            stop_wait.cancel()
            for task in (controller_task, source_task):
                if task in done and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            log.info("shutting down", extra={"deadline_seconds": s.shutdown_timeout})
            source.stop()
            with contextlib.suppress(asyncio.CancelledError, WinspecError):
                await asyncio.wait_for(source_task, timeout=5)
            await controller.stop(s.shutdown_timeout)
            with contextlib.suppress(asyncio.CancelledError):
                await controller_task
            await stop_http_server(runner)
            writer.close()
            log.info("stopped")


async def run_until_signalled(mode: DockerMode) -> None:
    """Run a mode, turning SIGTERM and SIGINT into a graceful stop."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, mode.request_stop)
    await mode.run()
