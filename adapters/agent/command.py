"""``winspec agent``: the command, its flags, and running the agent until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import ssl
import sys
from pathlib import Path

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry

from adapters.agent.auth import Authenticator, KubeTokenReviewer
from adapters.agent.listener import ConnectionLimits, GuardedSite
from adapters.agent.metrics import AgentMetrics
from adapters.agent.server import build_agent_app, watch_readiness
from adapters.agent.settings import (
    AgentSettings,
    env_agent_settings,
    load_agent_settings,
)
from adapters.agent.store import AgentStore
from adapters.agentapi.wire import ReplayGuard
from adapters.http import register_process_metrics
from adapters.kubernetes.client import KubeClient, load_api_client
from adapters.logs import RepeatFilter, configure_logging
from adapters.runtime import (
    CANCEL_GRACE_SECONDS,
    CLOSE_SECONDS,
    on_signals,
    run_loop,
    step,
)
from controller.errors import PermanentError, TransientError
from controller.health import HealthState
from controller.settings import split_listen

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
log = logging.getLogger("winspec.agent")


def agent_command(args: argparse.Namespace) -> int:
    """Run the agent until stopped; the process exit code."""
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = load_agent_settings(flags, env_layer=env_agent_settings(os.environ))
    except PermanentError as exc:
        print(f"winspec: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    # Clients can make the agent log at will (refusals, dropped connections): bounded.
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatFilter())
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    try:
        run_loop(_run_until_signalled(settings))
    except PermanentError as exc:
        print(f"winspec: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # the listen address unusable
        print(f"winspec: cannot listen on {settings.listen}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


async def _run_until_signalled(settings: AgentSettings) -> None:
    stop = asyncio.Event()
    on_signals(stop.set)
    await serve(settings, stop)


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context; unreadable or mismatched files are a PermanentError."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise PermanentError(f"cannot use the TLS certificate {cert} and key {key}: {exc}") from exc
    return context


def _mtimes(*paths: str) -> tuple[int, ...]:
    try:
        return tuple(os.stat(p).st_mtime_ns for p in paths)
    except OSError:
        return ()


async def reload_tls(context: ssl.SSLContext, cert: str, key: str, *, interval: float) -> None:
    """Load the certificate and key again whenever either file changes (a rotation by
    cert-manager or a mounted Secret), so new connections get the new one without a restart.

    Runs until cancelled. A pair that does not load (caught between the two files' updates,
    or broken) is logged and tried again next time; the context keeps the last good pair.
    """
    loaded = await asyncio.to_thread(_mtimes, cert, key)
    while True:
        await asyncio.sleep(interval)
        current = await asyncio.to_thread(_mtimes, cert, key)
        if not current or current == loaded:
            continue
        try:
            await asyncio.to_thread(context.load_cert_chain, cert, key)
        except (OSError, ssl.SSLError) as exc:
            log.warning("cannot load the new TLS certificate yet", extra={"error": str(exc)})
            continue
        loaded = current
        log.info("TLS certificate reloaded", extra={"cert": cert})


#: File descriptors kept for everything but client connections: the listening socket, the API
#: server's connections, bundle files being written, logs.
FD_RESERVE = 128


def fit_connections(wanted: int) -> int:
    """``wanted`` connections, or fewer when the file descriptor limit cannot hold them and
    :data:`FD_RESERVE` more (the soft limit is raised towards the hard one first)."""
    try:
        import resource
    except ImportError:  # Windows: no such per-process limit on sockets
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    fitted = max(1, soft - FD_RESERVE)
    log.warning(
        "max_connections lowered to fit the file descriptor limit",
        extra={"max_connections": wanted, "fitted": fitted, "nofile": soft},
    )
    return fitted


async def serve(settings: AgentSettings, stop: asyncio.Event) -> None:
    """Run the agent until ``stop`` is set; requests in flight then get
    ``shutdown_timeout`` seconds to finish, and the whole stop ends within ``shutdown_timeout``
    + :data:`~adapters.runtime.SHUTDOWN_MARGIN_SECONDS` (each step bounded, as the runtime's):
    the server beside the background tasks, then the TokenReview client."""
    host, port = split_listen(settings.listen)
    context = (
        None
        if settings.insecure_http
        else server_ssl_context(settings.tls_cert or "", settings.tls_key or "")
    )
    registry = CollectorRegistry()
    metrics = AgentMetrics.create(registry)
    register_process_metrics(registry)
    store = AgentStore(Path(settings.bundle_root))
    reviewer = KubeTokenReviewer(
        KubeClient(await load_api_client(settings.kubeconfig), timeout=settings.api_timeout)
    )
    authenticator = Authenticator(
        reviewer,
        audience=settings.token_audience,
        allowed=settings.allowed_identity,
        ttl=settings.token_cache_ttl,
        negative_ttl=settings.token_negative_ttl,
        max_entries=settings.token_cache_size,
        review_rate=settings.token_review_rate,
        review_burst=settings.token_review_burst,
        on_review=lambda result: metrics.token_reviews.labels(result).inc(),
        on_cache=lambda hit: metrics.token_cache.labels("hit" if hit else "miss").inc(),
    )
    health = HealthState()
    try:
        # An interrupted write (a crash, a kill) leaves only temporary directories: gone
        # before the first request, every complete bundle kept.
        with contextlib.suppress(TransientError):
            await store.check_root()
            swept = await store.sweep()
            if swept:
                log.info("removed leftovers of interrupted writes", extra={"count": len(swept)})
        app = build_agent_app(
            store=store,
            authenticator=authenticator,
            registry=registry,
            health=health,
            metrics=metrics,
            max_request_bytes=settings.max_request_bytes,
            # As the node names it: the shipped DaemonSet mounts the hostPath at this path.
            bundle_root=await asyncio.to_thread(os.path.abspath, settings.bundle_root),
            body_timeout=settings.body_timeout,
            replay=ReplayGuard(settings.replay_window),
        )
        # aiohttp's keep-alive timeout runs from a connection's start and from each answer
        # until the next complete request head: the header timeout (its header size limits
        # stay at their defaults, 8190 bytes a line or field and 128 fields).
        runner = web.AppRunner(
            app,
            access_log=None,
            keepalive_timeout=settings.header_timeout,
            shutdown_timeout=settings.shutdown_timeout,
        )
        await runner.setup()
        cleaned = False
        try:
            total = fit_connections(settings.max_connections)
            limits = ConnectionLimits(
                total=total,
                per_peer=min(settings.max_connections_per_peer, total),
                handshake_timeout=settings.header_timeout,
            )
            site = GuardedSite(
                runner,
                host,
                port,
                ssl_context=context,
                limits=limits,
                on_count=metrics.connections.set,
                on_refused=lambda reason: metrics.connections_refused.labels(reason).inc(),
            )
            await site.start()
            log.info(
                "agent listening",
                extra={
                    "listen": settings.listen,
                    "tls": context is not None,
                    "bundle_root": settings.bundle_root,
                },
            )
            tasks = [asyncio.create_task(watch_readiness(store, authenticator, health, metrics))]
            if context is not None:
                tasks.append(
                    asyncio.create_task(
                        reload_tls(
                            context,
                            settings.tls_cert or "",
                            settings.tls_key or "",
                            interval=settings.tls_reload_interval,
                        )
                    )
                )
            try:
                await stop.wait()
            finally:
                log.info("agent stopping")
                for task in tasks:
                    task.cancel()
                cleaned = True
                await asyncio.gather(
                    # aiohttp gives the requests in flight shutdown_timeout, then cancels them.
                    step(
                        runner.cleanup(),
                        within=settings.shutdown_timeout + CANCEL_GRACE_SECONDS,
                        what="https server",
                    ),
                    *(step(t, within=CANCEL_GRACE_SECONDS, what=t.get_name()) for t in tasks),
                )
        finally:
            if not cleaned:  # it never listened
                await step(runner.cleanup(), within=CLOSE_SECONDS, what="https server")
    finally:
        await step(reviewer.close(), within=CLOSE_SECONDS, what="tokenreview client")
        store.close()
