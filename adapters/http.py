"""The HTTP endpoints: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for probes.

``/healthz`` answers 200 whenever the event loop can answer at all (liveness: a wedged loop
fails it by timing out). ``/readyz`` answers 200 only when every readiness condition of the
:class:`~controller.health.HealthState` holds, otherwise 503 with the names of those that do
not. The registry and the health state are passed in, never global, so tests and several apps
in one process do not share them. Access logging is off: probes and scrapes every few seconds
would drown everything else.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from adapters.version import version
from controller.health import HealthState

REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
HEALTH_KEY = web.AppKey("health", HealthState)


def register_process_metrics(registry: CollectorRegistry) -> None:
    """The standard series of a process on ``registry``: prometheus-client's default
    collectors (``process_*`` from ``/proc``, so Linux only; ``python_info``; ``python_gc_*``)
    and ``winspec_build_info{version}`` (always 1), which says which version runs where."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Gauge(
        "winspec_build_info",
        "The winspec version this process runs (always 1)",
        ["version"],
        registry=registry,
    ).labels(version=version()).set(1)


def build_app(*, registry: CollectorRegistry, health: HealthState) -> web.Application:
    """The application serving ``/metrics``, ``/healthz`` and ``/readyz``."""
    app = web.Application()
    app[REGISTRY_KEY] = registry
    app[HEALTH_KEY] = health
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


async def start_http_server(host: str, port: int, app: web.Application) -> web.AppRunner:
    """Serve ``app`` on ``host:port`` (port 0: any free port, see ``runner.addresses``)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def stop_http_server(runner: web.AppRunner) -> None:
    """Stop serving and release the listening sockets."""
    await runner.cleanup()


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port the runner listens on (useful after asking for port 0)."""
    return int(runner.addresses[0][1])


async def _metrics(request: web.Request) -> web.Response:
    # Prometheus asks for OpenMetrics in Accept; anything else gets the text format 0.0.4.
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    waiting = request.app[HEALTH_KEY].not_ready()
    if not waiting:
        return web.Response(text="ok\n")
    text = "".join(f"not ready: {name}\n" for name in waiting)
    return web.Response(status=503, text=text)
