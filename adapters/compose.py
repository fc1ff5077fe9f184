"""The composition root: builds one mode of winspec from :class:`Settings` and runs it.

Docker mode: Docker client → event source → work queue → controller loop with the bundle
reconciler (Docker request resolver + local bundle writer) → HTTP endpoints for metrics and
health.

Start-up: listen for HTTP first (a busy port fails before anything connects; ``/healthz``
answers while the engine is still being reached), then connect to the engine. A stop asked for
during start-up ends it at once: :meth:`DockerMode.run` returns without having connected.

Shutdown on SIGTERM/SIGINT (or when a part fails): stop taking events, let in-flight
reconciles finish within ``shutdown_timeout``, stop serving, close the clients. Every step is
bounded and runs whatever became of the others (a step that overruns is cancelled, then
abandoned), so a shutdown takes at most ``shutdown_timeout`` + :data:`SHUTDOWN_MARGIN_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from adapters.bundles.local import LocalBundleWriter
from adapters.docker.client import DockerClient
from adapters.docker.events import (
    EVENT_TYPES,
    READY_CONDITION,
    DockerEventSource,
    EventSourceHooks,
    EventSourceSettings,
)
from adapters.docker.resolver import (
    DEPENDENCY_KINDS,
    DockerRequestResolver,
    node_facts_from_info,
)
from adapters.docker.types import Info, decode
from adapters.http import (
    bound_port,
    build_app,
    register_process_metrics,
    start_http_server,
    stop_http_server,
)
from adapters.retry import RetryPolicy
from controller.errors import WinspecError
from controller.health import HealthState
from controller.loop import Controller
from controller.metrics import Metrics
from controller.models import NodeFacts
from controller.reconcile import BundleReconciler
from controller.settings import Settings, split_listen
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


#: How long the event source gets to return after being asked to stop.
SOURCE_STOP_SECONDS = 1.0
#: How long a task that overran its step gets to unwind once cancelled, before it is abandoned.
CANCEL_GRACE_SECONDS = 0.5
#: How long closing the HTTP server or an engine client may take.
CLOSE_SECONDS = 1.0
#: A shutdown ends within ``shutdown_timeout`` plus this. The steps, each bounded and cancelled
#: (then given CANCEL_GRACE_SECONDS) when it overruns: the event source (SOURCE_STOP_SECONDS)
#: beside the controller (its stop: ``shutdown_timeout`` + a grace; its workers: a grace);
#: then the HTTP server beside the clients (CLOSE_SECONDS each).
SHUTDOWN_MARGIN_SECONDS = 4 * CANCEL_GRACE_SECONDS + CLOSE_SECONDS + CANCEL_GRACE_SECONDS


class StartupError(WinspecError):
    """winspec could not start (not bad input: the same settings may work later)."""


class EngineUnreachableError(StartupError):
    """The Docker engine could not be reached at start-up."""


class ListenError(StartupError):
    """The HTTP endpoints could not listen on the address asked for."""


async def finish(task: asyncio.Future[Any], *, within: float, what: str) -> BaseException | None:
    """Give ``task`` up to ``within`` seconds to end, then cancel it and give it
    :data:`CANCEL_GRACE_SECONDS` more before abandoning it. Never raises (except when the caller
    itself is cancelled); returns the exception the task ended with, if any."""
    if not task.done():
        await asyncio.wait({task}, timeout=max(within, 0.0))
    if not task.done():
        log.warning(
            "cancelling a shutdown step that overran", extra={"step": what, "seconds": within}
        )
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_GRACE_SECONDS)
        if not task.done():
            log.error("abandoning a shutdown step that ignores cancellation", extra={"step": what})
            return None
    if task.cancelled():
        return None
    return task.exception()


async def _step(aw: Awaitable[Any], *, within: float, what: str) -> None:
    """Run one shutdown step under :func:`finish`; its failure is logged, never raised."""
    exc = await finish(asyncio.ensure_future(aw), within=within, what=what)
    if exc is not None:
        log.error("shutdown step failed", extra={"step": what, "error": repr(exc)}, exc_info=exc)


class DockerMode:
    """One running Docker-mode controller; :meth:`run` returns when it has stopped."""

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry, controller=CONTROLLER_NAME)
        register_process_metrics(self.registry)
        self.health = HealthState([READY_CONDITION, INITIAL_LIST_CONDITION])
        self._stop = asyncio.Event()
        self.http_port: int | None = None
        self._bundle_root = os.path.abspath(settings.bundle_root)
        self.started = asyncio.Event()

    def request_stop(self) -> None:
        """Ask the controller to shut down gracefully."""
        self._stop.set()

    async def run(self) -> None:
        """Listen, connect, serve, watch and reconcile until asked to stop.

        Returns when stopped (also when stopped before it connected). Raises
        :class:`ListenError` or :class:`EngineUnreachableError` when it cannot start,
        :class:`PermanentError` for settings found bad on use (TLS files, a named pipe off
        Windows), and what a part that failed raised, once everything is shut down.
        """
        s = self.settings
        m = self.metrics
        for api in DOCKER_APIS:
            m.declare_api(api)
        m.declare_source("docker", event_types=EVENT_TYPES)
        m.declare_dependency_kinds(DEPENDENCY_KINDS)

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
        host, port = split_listen(s.listen)
        try:
            runner = await start_http_server(
                host, port, build_app(registry=self.registry, health=self.health)
            )
        except OSError as exc:  # in use, not an address of this host, a name that resolves not
            raise ListenError(f"cannot listen on {s.listen}: {exc.strerror or exc}") from exc
        self.http_port = bound_port(runner)
        stopped = False  # ended as asked (not by a failure to start or a part that failed)
        try:
            connecting = asyncio.create_task(
                self._connect(client, swarm_client), name="docker-connect"
            )
            stop_wait = asyncio.create_task(self._stop.wait())
            try:
                await asyncio.wait({connecting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop_wait.cancel()
                if not connecting.done() and not self._stop.is_set():  # run() itself cancelled
                    connecting.cancel()
            if self._stop.is_set():
                await finish(connecting, within=0, what="connect")
                log.warning(
                    "stop asked for before the Docker engine was reached",
                    extra={"docker_host": client.endpoint.display},
                )
                stopped = True
                return
            info = connecting.result()
            node = node_facts_from_info(info, s.node_settings())
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
            # Logged only now, so that a start-up that fails prints its one error line alone.
            log.info(
                "serving /metrics, /healthz and /readyz",
                extra={"listen": f"{host}:{self.http_port}"},
            )
            await self._serve(
                client, node, swarm_client=swarm_client, swarm_worker=info.swarm_worker
            )
            stopped = True
        finally:
            closing = [_step(stop_http_server(runner), within=CLOSE_SECONDS, what="http server")]
            closing += [
                _step(c.close(), within=CLOSE_SECONDS, what="docker client")
                for c in (client, swarm_client)
                if c is not None
            ]
            await asyncio.gather(*closing)
            if stopped:
                log.info("stopped")

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
        controller_task = asyncio.create_task(controller.run(), name="controller")
        source_task = asyncio.create_task(source.run(), name="docker-events")
        self.started.set()
        failed: BaseException | None = None
        try:
            stop_wait = asyncio.create_task(self._stop.wait())
            try:
                done, _ = await asyncio.wait(
                    {stop_wait, controller_task, source_task}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stop_wait.cancel()
            for task in (source_task, controller_task):
                if task in done and not task.cancelled() and task.exception() is not None:
                    failed = task.exception()  # raised once, after the shutdown
                    break
        finally:
            log.info("shutting down", extra={"deadline_seconds": s.shutdown_timeout})
            source.stop()
            await asyncio.gather(
                self._stopped(source_task, SOURCE_STOP_SECONDS, "event source", failed),
                self._stop_controller(controller, controller_task, failed),
            )
            writer.close()
        if failed is not None:
            raise failed

    async def _stopped(
        self, task: asyncio.Task[None], within: float, what: str, failed: BaseException | None
    ) -> None:
        """Let a task that was asked to stop end; log a failure not already being raised."""
        exc = await finish(task, within=within, what=what)
        if exc is not None and exc is not failed:
            log.error(
                "shutdown step failed", extra={"step": what, "error": repr(exc)}, exc_info=exc
            )

    async def _stop_controller(
        self, controller: Controller, task: asyncio.Task[None], failed: BaseException | None
    ) -> None:
        deadline = self.settings.shutdown_timeout
        await _step(
            controller.stop(deadline), within=deadline + CANCEL_GRACE_SECONDS, what="reconciles"
        )
        await self._stopped(task, CANCEL_GRACE_SECONDS, "controller", failed)


class RunnableMode(Protocol):
    """What :func:`run_until_signalled` runs: Docker mode or cluster mode."""

    def request_stop(self) -> None:
        """Ask the mode to shut down gracefully."""
        ...

    async def run(self) -> None:
        """Run until stopped."""
        ...


async def run_until_signalled(mode: RunnableMode) -> None:
    """Run a mode, turning SIGTERM and SIGINT into a graceful stop."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, mode.request_stop)
    await mode.run()
