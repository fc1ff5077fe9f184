"""The fault-injecting proxy in front of the real API server: it forwards, and it breaks things
when asked (injected 5xx / 429, dropped watches, silent watches)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.kube import KubeCluster
from tests.kubeproxy import FaultProxy, is_watch

pytestmark = pytest.mark.kube


@pytest.fixture
async def http(kube: KubeCluster) -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session carrying the admin token."""
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {kube.admin_token}"}
    ) as session:
        yield session


def _configmap(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {}}


async def _next_event(response: aiohttp.ClientResponse, within: float) -> dict[str, Any]:
    async with asyncio.timeout(within):
        line = await response.content.readline()
    if not line:
        raise EOFError("watch ended")
    event: dict[str, Any] = json.loads(line)
    return event


def test_watch_requests_are_recognised() -> None:
    """Only GETs with watch=true or watch=1 count as watches."""
    assert is_watch("GET", "/api/v1/configmaps?watch=true&resourceVersion=1")
    assert is_watch("GET", "/api/v1/configmaps?watch=1")
    assert not is_watch("GET", "/api/v1/configmaps?watch=false")
    assert not is_watch("POST", "/api/v1/configmaps?watch=true")


async def test_requests_pass_through(kube_proxy: FaultProxy, http: aiohttp.ClientSession) -> None:
    """A request through the proxy gets the server's own answer, and is logged."""
    async with http.get(kube_proxy.url + "/version") as response:
        assert response.status == 200
        assert (await response.json())["gitVersion"].startswith("v1.20")
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.get(kube_proxy.url + "/api/v1/namespaces") as response,
    ):
        assert response.status in (401, 403)  # the server still decides who is who
    first = kube_proxy.log[0]
    assert (first.method, first.path_qs, first.status) == ("GET", "/version", 200)


async def test_injected_failures_then_the_real_answer(
    kube_proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    """fail() answers the next matching requests itself (with Retry-After), then forwards again."""
    kube_proxy.fail(429, count=1, retry_after=2, when=lambda m, p: p.startswith("/version"))
    kube_proxy.fail(503, count=1)
    async with http.get(kube_proxy.url + "/version") as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "2"
        assert (await response.json())["kind"] == "Status"
    async with http.get(kube_proxy.url + "/version") as response:
        assert response.status == 503
    async with http.get(kube_proxy.url + "/version") as response:
        assert response.status == 200
    assert kube_proxy.count(lambda e: e.injected) == 2


async def test_a_dropped_watch_ends_mid_stream(
    kube: KubeCluster, kube_namespace: str, kube_proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    """drop_watches() cuts an open watch: the client's stream ends (reset or EOF) at once."""
    path = f"/api/v1/namespaces/{kube_namespace}/configmaps"
    kube.api("POST", path, _configmap("first"))
    async with http.get(kube_proxy.url + path + "?watch=true") as response:
        assert (await _next_event(response, 10))["object"]["metadata"]["name"] == "first"
        assert kube_proxy.open_watches == 1
        assert kube_proxy.drop_watches() == 1
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, EOFError)):
            await _next_event(response, 5)


async def test_a_silent_watch_stays_open_and_says_nothing(
    kube: KubeCluster, kube_namespace: str, kube_proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    """silence_watches() keeps the connection open but forwards nothing until resumed."""
    path = f"/api/v1/namespaces/{kube_namespace}/configmaps"
    kube.api("POST", path, _configmap("before"))
    async with http.get(kube_proxy.url + path + "?watch=true") as response:
        assert (await _next_event(response, 10))["object"]["metadata"]["name"] == "before"
        kube_proxy.silence_watches()
        kube.api("POST", path, _configmap("during"))
        with pytest.raises(asyncio.TimeoutError):
            await _next_event(response, 1.5)
        assert response.connection is not None  # still open
        kube_proxy.resume_watches()
        kube.api("POST", path, _configmap("after"))
        assert (await _next_event(response, 10))["object"]["metadata"]["name"] == "after"
