"""Tests of /metrics, /healthz and /readyz over real HTTP against the aiohttp server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from adapters.http import (
    bound_port,
    build_app,
    register_process_metrics,
    start_http_server,
    stop_http_server,
)
from adapters.version import version
from controller.health import HealthState


@dataclass
class Served:
    url: str
    registry: CollectorRegistry
    health: HealthState
    session: aiohttp.ClientSession


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """The app on 127.0.0.1 (any free port) with its own registry and two conditions."""
    registry = CollectorRegistry()
    health = HealthState(["docker-events", "initial-list"])
    runner = await start_http_server("127.0.0.1", 0, build_app(registry=registry, health=health))
    try:
        async with aiohttp.ClientSession() as session:
            yield Served(f"http://127.0.0.1:{bound_port(runner)}", registry, health, session)
    finally:
        await stop_http_server(runner)


async def test_metrics_exposes_the_injected_registry(served: Served) -> None:
    """/metrics serves the text format with a metric registered on the injected registry."""
    Counter("winspec_test_things", "Things counted by the test", registry=served.registry).inc(3)

    async with served.session.get(f"{served.url}/metrics") as response:
        body = await response.text()
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "winspec_test_things_total 3.0" in body.splitlines()


async def test_metrics_negotiates_openmetrics(served: Served) -> None:
    """/metrics answers OpenMetrics, ending in # EOF, when Prometheus asks for it."""
    Counter("winspec_test_things", "Things counted by the test", registry=served.registry).inc()
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"

    async with served.session.get(f"{served.url}/metrics", headers={"Accept": accept}) as response:
        body = await response.text()
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert "winspec_test_things_total 1.0" in body.splitlines()
    assert body.endswith("# EOF\n")


async def test_healthz_is_ok_even_when_not_ready(served: Served) -> None:
    """/healthz answers 200 "ok" while the process runs, whatever readiness says."""
    async with served.session.get(f"{served.url}/healthz") as response:
        assert response.status == 200
        assert await response.text() == "ok\n"


async def test_readyz_lists_what_is_not_ready_until_everything_is(served: Served) -> None:
    """/readyz is 503 naming each unready condition, and 200 once all are ready."""
    async with served.session.get(f"{served.url}/readyz") as response:
        assert response.status == 503
        assert await response.text() == "not ready: docker-events\nnot ready: initial-list\n"

    served.health.set_ready("docker-events", True)
    async with served.session.get(f"{served.url}/readyz") as response:
        assert response.status == 503
        assert await response.text() == "not ready: initial-list\n"

    served.health.set_ready("initial-list", True)
    async with served.session.get(f"{served.url}/readyz") as response:
        assert response.status == 200
        assert await response.text() == "ok\n"

    served.health.set_ready("docker-events", False)
    async with served.session.get(f"{served.url}/readyz") as response:
        assert response.status == 503
        assert await response.text() == "not ready: docker-events\n"


async def test_stopped_server_releases_its_port() -> None:
    """After stop_http_server the port no longer accepts connections."""
    runner = await start_http_server(
        "127.0.0.1", 0, build_app(registry=CollectorRegistry(), health=HealthState())
    )
    url = f"http://127.0.0.1:{bound_port(runner)}/healthz"
    await stop_http_server(runner)

    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url)


def test_process_metrics_go_on_the_registry_given_with_the_build_info() -> None:
    """Process, platform and GC series and winspec_build_info go on the given registry only."""
    before = set(REGISTRY._names_to_collectors)
    registry = CollectorRegistry()
    register_process_metrics(registry)
    get = registry.get_sample_value
    assert get("winspec_build_info", {"version": version()}) == 1
    assert (get("process_resident_memory_bytes") or 0) > 0
    assert get("process_cpu_seconds_total") is not None
    assert get("python_gc_collections_total", {"generation": "0"}) is not None
    assert set(REGISTRY._names_to_collectors) == before
    register_process_metrics(CollectorRegistry())  # another registry: no clash
