"""Central delivery (adapters/kubernetes/delivery.py), in-process stand-ins for the network: each
node's agent is a small HTTPS server keeping bundles in memory, and the agent pods are listed
from the in-process API server. The writer, the agent locator and the agent client are the real
ones: which node gets a bundle, per-node deadlines and limits, removals waiting for an agent and
given up, resync, the bundle root an agent reports.

The same writer with real agents and the real kube-apiserver:
tests/integration/test_remote_delivery.py, test_remote_deletion.py and
test_agent_killed_mid_delivery.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.agentapi.client import ClientPolicy
from adapters.kubernetes.bundles import BundleAbandonedError
from adapters.kubernetes.client import KubeClient
from adapters.kubernetes.delivery import (
    AgentEndpoint,
    AgentLocator,
    AgentUnreachableError,
    DeliveryPolicy,
    NodeDigestStatus,
    RemoteBundleWriter,
)
from controller.bundle import BundleContent
from controller.cluster import WindowsContainer, decode_windows_container
from controller.errors import RequestDecodeError, TransientError
from controller.metrics import ABANDON_AGENT_UNREACHABLE, ABANDON_NODE_DELETED
from tests.agent import TLSFiles, make_tls
from tests.fakes import FakeStatusReporter
from tests.processes import free_port
from tests.unit.cluster.apiserver import FakeAPIServer, windows_container

AGENTS = AgentEndpoint(namespace="winspec-system", selector="app=winspec-agent", port=1)
ROOT = "C:\\ProgramData\\winspec\\bundles"
CONTENT = BundleContent(files={"config.json": b'{"ociVersion": "1.1.0"}'})


@dataclass
class FakeAgent:
    """A node agent's bundle API over bundles in memory: id to digest."""

    bundles: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    root: str = ROOT
    #: Seconds each bundle call takes.
    delay: float = 0.0
    active: int = 0
    most_at_once: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one call of the agent API."""
        self.calls.append((request.method, request.path))
        if request.path == "/v1/node":
            return web.json_response({"bundleRoot": self.root})
        self.active += 1
        self.most_at_once = max(self.most_at_once, self.active)
        try:
            await request.read()
            await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        if request.path == "/v1/bundles":
            held = [{"id": k, "digest": v} for k, v in sorted(self.bundles.items())]
            return web.json_response({"bundles": held})
        bundle_id = request.path.removeprefix("/v1/bundles/")
        if request.method == "DELETE":
            return web.json_response(
                {"id": bundle_id, "changed": self.bundles.pop(bundle_id, None) is not None}
            )
        digest = hashlib.sha256(bundle_id.encode()).hexdigest()
        changed = self.bundles.get(bundle_id) != digest
        self.bundles[bundle_id] = digest
        return web.json_response({"id": bundle_id, "digest": digest, "changed": changed})


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A CA and an agent certificate for 127.0.0.1."""
    return make_tls(tmp_path_factory.mktemp("tls"))


def pod(node: str, port: int, *, name: str | None = None) -> dict[str, Any]:
    """A running agent pod on ``node`` serving on 127.0.0.1:``port``."""
    ports = [{"name": "https", "containerPort": port}]
    return {
        "metadata": {"name": name or f"agent-{node}", "labels": {"app": "winspec-agent"}},
        "spec": {"nodeName": node, "containers": [{"ports": ports}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1"},
    }


class Delivery:
    """A RemoteBundleWriter over the in-process API server, and the agents it can reach."""

    def __init__(self, api: FakeAPIServer, client: KubeClient, tls: TLSFiles) -> None:
        self.api = api
        self.tls = tls
        self.cache: dict[str, WindowsContainer | RequestDecodeError] = {}
        self.deleted_nodes: set[str] = set()
        self.requeued: list[tuple[str, float]] = []
        self.deliveries: list[tuple[str, bool]] = []
        self.policy = DeliveryPolicy(
            per_node=2, node_timeout=1.0, removal_grace=0.5,
            client=ClientPolicy(attempts=1, connect_timeout=1.0, timeout=5.0),
        )  # fmt: skip
        self.writer = RemoteBundleWriter(
            AgentLocator(client, AGENTS),
            cache=self.cache,
            token=lambda: "controller-token",
            ssl_context=ssl.create_default_context(cafile=str(tls.ca)),
            policy=self.policy,
            on_delivery=lambda node, ok: self.deliveries.append((node, ok)),
            node_deleted=self.deleted_nodes.__contains__,
            enqueue_after=lambda key, seconds: self.requeued.append((key, seconds)),
        )
        self._servers: dict[str, TestServer] = {}

    async def agent(self, node: str, agent: FakeAgent | None = None) -> FakeAgent:
        """Serve an agent for ``node`` over HTTPS, its pod listed; the agent."""
        agent = agent or FakeAgent()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", agent.handle)
        server = TestServer(app, host="127.0.0.1")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls.cert, self.tls.key)
        await server.start_server(ssl=context)
        self._servers[node] = server
        assert server.port is not None
        self.api.pods.append(pod(node, server.port))
        return agent

    def unreachable(self, node: str) -> None:
        """List an agent pod for ``node`` at a port where nothing listens."""
        self.api.pods.append(pod(node, free_port()))

    def resource(self, name: str, node: str, **metadata: Any) -> str:
        """Cache a WindowsContainer scheduled to ``node``; its key."""
        obj = windows_container("ns", name, **metadata)
        obj["spec"]["nodeName"] = node
        self.cache[f"ns/{name}"] = decode_windows_container(json.dumps(obj).encode())
        return f"ns/{name}"

    async def close(self) -> None:
        """Close the writer's connections and the agents."""
        await self.writer.close()
        for server in self._servers.values():
            await server.close()

    async def stop_agent(self, node: str) -> None:
        """Stop the agent of ``node`` (its pod still listed): nothing answers there."""
        await self._servers.pop(node).close()


@pytest.fixture
async def d(
    fake_api: FakeAPIServer, kube_client: KubeClient, tls: TLSFiles
) -> AsyncIterator[Delivery]:
    """Central delivery with no agent yet."""
    delivery = Delivery(fake_api, kube_client, tls)
    try:
        yield delivery
    finally:
        await delivery.close()


@contextlib.contextmanager
def took_less_than(seconds: float) -> Iterator[None]:
    """Fail when the block takes ``seconds`` or more."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    yield
    assert loop.time() - began < seconds


async def test_a_bundle_goes_to_the_agent_of_its_node_with_the_digest_it_answers(
    d: Delivery,
) -> None:
    """A bundle goes only to its node's agent; the status reports the digest that agent answered."""
    a, b = await d.agent("node-a"), await d.agent("node-b")
    key = d.resource("web", "node-b")
    assert await d.writer.write(key, CONTENT)
    assert not await d.writer.write(key, CONTENT)  # the agent had it already
    assert a.calls == []
    assert [m for m, _ in b.calls] == ["PUT", "PUT"]
    assert d.writer.delivered[key] == ("node-b", b.bundles[key])
    reporter = FakeStatusReporter()
    await NodeDigestStatus(reporter, d.writer).report(key, ok=True, message="ok", digest="local")
    assert reporter.details[-1]["digest"] == b.bundles[key]
    assert d.deliveries == [("node-b", True), ("node-b", True)]


async def test_a_resource_not_cached_yet_is_not_delivered(d: Delivery) -> None:
    """A key whose resource (and so node) is unknown is a transient error, and nothing is sent."""
    agent = await d.agent("node-a")
    with pytest.raises(TransientError, match="not known yet"):
        await d.writer.write("ns/unknown", CONTENT)
    assert agent.calls == []


async def test_a_slow_node_holds_only_its_own_deliveries(d: Delivery) -> None:
    """A hung node's delivery fails at its deadline, naming it; another node's goes through."""
    await d.agent("node-slow", FakeAgent(delay=30.0))
    fast = await d.agent("node-fast")
    slow_key, fast_key = d.resource("slow", "node-slow"), d.resource("fast", "node-fast")
    slow = asyncio.create_task(d.writer.write(slow_key, CONTENT))
    with took_less_than(d.policy.node_timeout):
        assert await d.writer.write(fast_key, CONTENT)
    assert fast_key in fast.bundles
    with pytest.raises(TransientError, match=r"node node-slow: delivering ns/slow took longer"):
        await slow
    assert ("node-slow", False) in d.deliveries


async def test_calls_to_one_node_are_limited_to_per_node_at_once(d: Delivery) -> None:
    """No more than ``per_node`` calls go to one node's agent at once."""
    agent = await d.agent("node-a", FakeAgent(delay=0.1))
    keys = [d.resource(f"web-{i}", "node-a") for i in range(6)]
    await asyncio.gather(*(d.writer.write(key, CONTENT) for key in keys))
    assert set(agent.bundles) == set(keys)
    assert agent.most_at_once == d.policy.per_node


async def test_a_failed_call_forgets_the_address_and_a_moved_agent_is_found(
    d: Delivery,
) -> None:
    """After a failed call the agent pod is listed again and found at its new address."""
    d.unreachable("node-a")
    key = d.resource("web", "node-a")
    with pytest.raises(TransientError, match="node node-a: delivering ns/web failed"):
        await d.writer.write(key, CONTENT)
    d.api.pods.clear()
    agent = await d.agent("node-a")
    assert await d.writer.write(key, CONTENT)
    assert key in agent.bundles


async def test_a_removal_waits_for_an_unreachable_agent_then_is_given_up(d: Delivery) -> None:
    """A removal waits for an unreachable agent (re-queued), then is given up after the grace."""
    await d.agent("node-a")
    key = d.resource("web", "node-a", deletionTimestamp="2026-01-01T00:00:00Z")
    await d.writer.write(key, CONTENT)
    await d.stop_agent("node-a")
    with pytest.raises(AgentUnreachableError, match="waiting for the agent on node node-a"):
        await d.writer.remove(key)
    [(requeued, seconds)] = d.requeued
    assert requeued == key
    assert 0 < seconds <= d.policy.removal_grace
    await asyncio.sleep(seconds)
    with pytest.raises(BundleAbandonedError) as given_up:
        await d.writer.remove(key)
    assert given_up.value.cause == ABANDON_AGENT_UNREACHABLE
    assert key not in d.writer.delivered


async def test_a_removal_from_a_deleted_node_is_given_up_at_once(d: Delivery) -> None:
    """When the Node object is gone, a removal its agent cannot take is given up at once."""
    d.unreachable("node-a")
    key = d.resource("web", "node-a")
    d.deleted_nodes.add("node-a")
    with pytest.raises(BundleAbandonedError) as given_up:
        await d.writer.remove(key)
    assert given_up.value.cause == ABANDON_NODE_DELETED
    assert d.requeued == []


async def test_resync_removes_orphans_and_requeues_missing_or_different_bundles(
    d: Delivery,
) -> None:
    """Resync deletes owned orphans and enqueues keys the node lacks or holds differently."""
    agent = await d.agent("node-a")
    current, stale = d.resource("current", "node-a"), d.resource("stale", "node-a")
    missing = d.resource("missing", "node-a")
    going = d.resource("going", "node-a", deletionTimestamp="2026-01-01T00:00:00Z")
    for key in (current, stale):
        await d.writer.write(key, CONTENT)
    agent.bundles.update({stale: "changed-on-the-node", "ns/gone": "x", "other/gone": "y"})
    agent.bundles[going] = "z"
    queued: list[str] = []
    removed, enqueued = await d.writer.resync(
        ["node-a"], queued.append, owns=lambda key: key.startswith("ns/")
    )
    assert removed == ["ns/gone"]
    assert enqueued == queued == [missing, stale]
    assert set(agent.bundles) == {current, stale, going, "other/gone"}


async def test_the_bundle_root_is_asked_once_per_agent_and_an_unusable_one_refused(
    d: Delivery,
) -> None:
    """The bundle root is asked once per agent address; a relative one is refused."""
    agent = await d.agent("node-a")
    await d.agent("node-b", FakeAgent(root="bundles"))
    assert await d.writer.bundle_root("node-a") == ROOT
    assert await d.writer.bundle_root("node-a") == ROOT
    assert agent.calls == [("GET", "/v1/node")]
    with pytest.raises(TransientError, match="unusable bundle root 'bundles'"):
        await d.writer.bundle_root("node-b")
