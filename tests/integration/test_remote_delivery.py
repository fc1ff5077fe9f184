"""Central delivery (``--delivery agent``): cluster mode hands each bundle to the node agent of
the resource's node, over real HTTPS on loopback, tokens checked by the real kube-apiserver.

No kubelet runs: each "node" is a Node object plus a Pod object bound to it whose status
(through the status subresource) says it runs at 127.0.0.1, with its agent's port as the
container port ``https``; the agent itself is a real ``winspec agent`` child process with its
own bundle root.
"""

from __future__ import annotations

import asyncio
import secrets
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.agentapi.client import AgentClient, ClientPolicy
from adapters.kubernetes.mode import ClusterMode
from tests.agent import AgentProcess, TLSFiles, make_tls
from tests.clustermode import (
    api,
    condition,
    eventually,
    metric,
    ready_object,
    running,
    server_requests,
    settled,
    wc_path,
)
from tests.clustermode import windows_container as _wc
from tests.kube import KubeAPIError, KubeCluster
from tests.kubeproxy import FaultProxy, is_watch

pytestmark = pytest.mark.kube

AUDIENCE = "winspec-agent"
#: The shipped agent DaemonSet's pod labels (manifests/overlays/central/agent.yaml), which the
#: default --agent-selector selects.
AGENT_POD_LABELS = {"app.kubernetes.io/name": "winspec", "app.kubernetes.io/component": "agent"}


@dataclass(frozen=True)
class Delivery:
    """One namespace holding the agent pods, the accounts, and the TLS files."""

    kube: KubeCluster
    namespace: str
    tls: TLSFiles
    agent_kubeconfig: Path
    controller: str
    token_file: Path
    token: str

    def central(
        self,
        tmp_path: Path,
        namespaces: list[str],
        *,
        kubeconfig: Path | None = None,
        **overrides: Any,
    ) -> Any:
        """Cluster mode with --delivery agent to these agents, for ``namespaces`` (a context);
        as admin, through ``kubeconfig`` when given (e.g. a fault proxy's)."""
        return running(
            kubeconfig or self.kube.admin_kubeconfig,
            tmp_path,
            namespace=namespaces,
            delivery="agent",
            agent_namespace=self.namespace,
            agent_ca_file=str(self.tls.ca),
            agent_token_file=str(self.token_file),
            **overrides,
        )

    def agent(self, root: Path) -> AgentProcess:
        """An agent (not started) writing below ``root`` and accepting only the controller."""
        return AgentProcess(
            root=root,
            tls=self.tls,
            kubeconfig=self.agent_kubeconfig,
            allowed=[self.controller],
            audience=AUDIENCE,
        )


def _token(kube: KubeCluster, ns: str, name: str, audiences: list[str] | None) -> str:
    return kube.service_account_token(ns, name, audiences=audiences)


@pytest.fixture(scope="module")
def delivery(kube: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Delivery:
    """Accounts (the agent may only create TokenReviews), TLS files, the controller's token."""
    return make_delivery(
        kube, f"deliver-{secrets.token_hex(4)}", tmp_path_factory.mktemp("delivery")
    )


def make_delivery(kube: KubeCluster, ns: str, files: Path) -> Delivery:
    """Namespace ``ns`` with the accounts (the agent may only create TokenReviews), TLS files
    below ``files``, and the controller's audience-bound token."""
    kube.create_namespace(ns)
    role = f"winspec-agent-{ns}"
    kube.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": role},
        "rules": [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
                   "verbs": ["create"]}],
    })  # fmt: skip
    kube.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}],
    })  # fmt: skip
    token = _token(kube, ns, "controller", [AUDIENCE])
    token_file = files / "token"
    token_file.write_text(token)
    return Delivery(
        kube=kube,
        namespace=ns,
        tls=make_tls(files / "tls"),
        agent_kubeconfig=kube.kubeconfig(_token(kube, ns, "agent", None)),
        controller=f"system:serviceaccount:{ns}:controller",
        token_file=token_file,
        token=token,
    )


def _node(kube: KubeCluster, name: str) -> None:
    """A Windows Node object (build 17763, 4 CPUs)."""
    try:
        kube.api("POST", "/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name,
                         "labels": {"node.kubernetes.io/windows-build": "10.0.17763"}},
        })  # fmt: skip
    except KubeAPIError as exc:
        if exc.status != 409:
            raise
    kube.api(
        "PATCH",
        f"/api/v1/nodes/{name}/status",
        {"status": {"capacity": {"cpu": "4"}, "nodeInfo": {"kernelVersion": "10.0.17763.1"}}},
        content_type="application/merge-patch+json",
    )


def _agent_pod(d: Delivery, node: str, port: int) -> None:
    """The agent's Pod object on ``node``, running at 127.0.0.1 (its status set by hand)."""
    name = f"agent-{node}"
    d.kube.api("POST", f"/api/v1/namespaces/{d.namespace}/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": AGENT_POD_LABELS},
        "spec": {"nodeName": node, "serviceAccountName": "agent",
                 "automountServiceAccountToken": False,
                 "containers": [{"name": "agent", "image": "winspec-agent:test",
                                 "ports": [{"name": "https", "containerPort": port}]}]},
    })  # fmt: skip
    d.kube.api(
        "PATCH",
        f"/api/v1/namespaces/{d.namespace}/pods/{name}/status",
        {"status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}},
        content_type="application/merge-patch+json",
    )


@dataclass
class Node:
    """A test node: its name and the agent serving it."""

    name: str
    agent: AgentProcess


@pytest.fixture
def nodes(delivery: Delivery, tmp_path: Path) -> Iterator[list[Node]]:
    """Two nodes, each with a started agent and its Pod object."""
    made: list[Node] = []
    try:
        for i in (1, 2):
            name = f"win-{secrets.token_hex(3)}-{i}"
            _node(delivery.kube, name)
            (tmp_path / f"node{i}").mkdir()
            agent = delivery.agent(tmp_path / f"node{i}" / "bundles")
            agent.start()
            _agent_pod(delivery, name, agent.port)
            made.append(Node(name, agent))
        yield made
    finally:
        for node in made:
            node.agent.stop()
            delivery.kube.api(
                "DELETE",
                f"/api/v1/namespaces/{delivery.namespace}/pods/agent-{node.name}",
                expect=(200, 404),
            )


@pytest.fixture
async def central(
    kube: KubeCluster, kube_namespace: str, delivery: Delivery, tmp_path: Path
) -> AsyncIterator[ClusterMode]:
    """Cluster mode with --delivery agent for the test's namespace, until the test ends."""
    async with delivery.central(
        tmp_path, [kube_namespace], agent_timeout=5.0, resync_interval=1.0
    ) as mode:
        yield mode


def _resource(name: str, node: str) -> dict[str, Any]:
    return _wc(name, nodeName=node)


def _on_agent(node: Node, ns: str, name: str) -> Path:
    return node.agent.root / ns / name


def _leftovers(root: Path) -> list[str]:
    """What interrupted writes left: ``.tmp-``/``.old-`` entries beside the bundles of each
    namespace (``<root>/<namespace>/``), where the writer builds and retires versions."""
    return sorted(p.name for p in root.glob("*/.*") if p.name.startswith((".tmp-", ".old-")))


def _not_ready(kube: KubeCluster, ns: str, name: str) -> Callable[[], dict[str, Any] | None]:
    """A probe: the resource's Ready condition once it is False."""

    def probe() -> dict[str, Any] | None:
        ready = condition(kube.api("GET", wc_path(ns, name)), "Ready")
        return ready if ready and ready["status"] == "False" else None

    return probe


async def _scraped(mode: ClusterMode, name: str, label: str) -> dict[str, float]:
    """The samples called ``name`` on the controller's /metrics, by the value of ``label``."""
    url = f"http://127.0.0.1:{mode.http_port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    return {
        s.labels[label]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name
    }


async def test_bundle_reaches_the_agent_of_its_node(
    kube: KubeCluster, kube_namespace: str, nodes: list[Node], central: None, tmp_path: Path
) -> None:
    """Created resource: bundle on its node's agent only, Ready with the agent's digest."""
    ns = kube_namespace
    a, b = nodes
    await api(kube, "POST", wc_path(ns), _resource("web", a.name))
    obj = await eventually(ready_object(kube, ns, "web"), within=30)
    bundle = _on_agent(a, ns, "web")
    assert (bundle / "config.json").is_file()
    assert obj["status"]["digest"] == (bundle / ".digest").read_text().strip()
    assert not _on_agent(b, ns, "web").exists()
    assert not (tmp_path / "bundles" / ns).exists()  # nothing written locally


async def test_a_dead_agent_holds_back_only_its_node(
    kube: KubeCluster, kube_namespace: str, nodes: list[Node], central: ClusterMode
) -> None:
    """One agent killed: others' resources Ready; the dead node named, its failures counted."""
    ns = kube_namespace
    a, b = nodes
    b.agent.kill()
    for i in range(3):
        await api(kube, "POST", wc_path(ns), _resource(f"dead-{i}", b.name))
    for i in range(3):
        await api(kube, "POST", wc_path(ns), _resource(f"live-{i}", a.name))
    for i in range(3):
        await eventually(ready_object(kube, ns, f"live-{i}"), within=30)
        assert (_on_agent(a, ns, f"live-{i}") / "config.json").is_file()

    # Its spec waits for the bundle root the dead node's agent reports (the payload mounts
    # point below it): Ready says why, naming the node.
    ready = await eventually(_not_ready(kube, ns, "dead-0"), within=30)
    assert ready["reason"] == "TransientError"
    assert b.name in ready["message"]
    failures = await _scraped(central, "winspec_delivery_failures_total", "node")
    assert failures[b.name] >= 1
    assert failures[a.name] == 0  # delivered to: its series exists, at zero


async def test_nodes_without_a_running_agent_pod_are_reported_missing(
    kube: KubeCluster,
    kube_namespace: str,
    delivery: Delivery,
    nodes: list[Node],
    central: ClusterMode,
) -> None:
    """winspec_delivery_agent_missing: per Node with resources, 1 while no agent pod runs there."""
    ns = kube_namespace
    a, b = nodes
    lone = f"win-{secrets.token_hex(3)}-lone"
    _node(kube, lone)  # a Node whose agent never came
    try:
        for name, node in (("on-a", a.name), ("on-b", b.name), ("on-lone", lone),
                           ("on-no-node", "win-no-such-node")):  # fmt: skip
            await api(kube, "POST", wc_path(ns), _resource(name, node))
        await eventually(ready_object(kube, ns, "on-b"), within=30)
        url = f"http://127.0.0.1:{central.http_port}/metrics"

        def missing(expected: dict[str, float]) -> Callable[[], dict[str, float] | None]:
            def probe() -> dict[str, float] | None:
                text = urllib.request.urlopen(url, timeout=10).read().decode()
                found = {
                    s.labels["node"]: s.value
                    for f in text_string_to_metric_families(text)
                    for s in f.samples
                    if s.name == "winspec_delivery_agent_missing"
                }
                return found if found == expected else None

            return probe

        # A node with no Node object is not reported (its resources wait for the Node).
        await eventually(missing({a.name: 0, b.name: 0, lone: 1}), within=30)
        # b's agent pod deleted: b is missing at once, its resources still there.
        kube.api("DELETE", f"/api/v1/namespaces/{delivery.namespace}/pods/agent-{b.name}")
        await eventually(missing({a.name: 0, b.name: 1, lone: 1}), within=30)
        # The resource on the lone node deleted: nothing goes there any more.
        kube.api("DELETE", wc_path(ns, "on-lone"))
        await eventually(missing({a.name: 0, b.name: 1}), within=60)
    finally:
        kube.api("DELETE", f"/api/v1/nodes/{lone}", expect=(200, 404))


async def test_agent_restarted_delivery_completes_untorn(
    kube: KubeCluster, kube_namespace: str, nodes: list[Node], central: None
) -> None:
    """Agent down while a resource is created, then restarted: delivered whole, no leftovers."""
    ns = kube_namespace
    a, _ = nodes
    a.agent.kill()
    await api(kube, "POST", wc_path(ns), _resource("restart", a.name))
    a.agent.start()
    obj = await eventually(ready_object(kube, ns, "restart"), within=60)
    bundle = _on_agent(a, ns, "restart")
    assert obj["status"]["digest"] == (bundle / ".digest").read_text().strip()
    assert (bundle / "config.json").is_file()
    assert _leftovers(a.agent.root) == []


async def test_resync_deletes_an_orphan_on_an_agent(
    kube: KubeCluster,
    kube_namespace: str,
    delivery: Delivery,
    nodes: list[Node],
    central: None,
) -> None:
    """A bundle on an agent with no resource behind it is deleted by the resync."""
    ns = kube_namespace
    a, _ = nodes
    client = AgentClient(
        a.agent.url,
        token=lambda: delivery.token,
        ssl_context=delivery.tls.client_context(),
        policy=ClientPolicy(attempts=3, initial=0.05),
    )
    try:
        await client.put(f"{ns}/orphan", {"config.json": b"{}"})
        assert (_on_agent(a, ns, "orphan") / "config.json").is_file()

        await eventually(lambda: not _on_agent(a, ns, "orphan").exists(), within=30)
        assert f"{ns}/orphan" not in await client.list_bundles()
    finally:
        await client.close()


@pytest.mark.parametrize(("server_name", "delivered"), [("localhost", True), ("wrong.test", False)])
async def test_agent_certificates_are_checked_for_the_server_name(
    kube: KubeCluster,
    kube_namespace: str,
    delivery: Delivery,
    nodes: list[Node],
    tmp_path: Path,
    server_name: str,
    delivered: bool,
) -> None:
    """--agent-server-name: the agent's certificate must carry that name, not the IP dialled."""
    ns = kube_namespace
    a, _ = nodes
    async with running(
        kube.admin_kubeconfig,
        tmp_path,
        namespace=[ns],
        delivery="agent",
        agent_namespace=delivery.namespace,
        agent_ca_file=str(delivery.tls.ca),
        agent_token_file=str(delivery.token_file),
        agent_server_name=server_name,
        agent_timeout=3.0,
    ):
        await api(kube, "POST", wc_path(ns), _resource("named", a.name))
        if delivered:
            await eventually(ready_object(kube, ns, "named"), within=30)
            assert (_on_agent(a, ns, "named") / "config.json").is_file()
            return

        # Refused already when asked for its bundle root (before any spec): Ready says so.
        ready = await eventually(_not_ready(kube, ns, "named"), within=30)
        assert ready["reason"] == "TransientError"
        assert a.name in ready["message"]
        assert not _on_agent(a, ns, "named").exists()


async def test_the_longest_namespace_and_name_reach_the_agent(
    kube: KubeCluster, delivery: Delivery, nodes: list[Node], tmp_path: Path
) -> None:
    """A 63-character namespace and a 253-character name: delivered, Ready, then removed."""
    ns = f"n{secrets.token_hex(31)}"[:63]
    name = ".".join(["a" * 63] * 3 + [f"{secrets.token_hex(30)}b"])
    assert (len(ns), len(name)) == (63, 253)
    kube.create_namespace(ns)
    a, _ = nodes
    await api(kube, "POST", wc_path(ns), _resource(name, a.name))
    async with delivery.central(tmp_path, [ns], agent_timeout=5.0):
        obj = await eventually(ready_object(kube, ns, name), within=30)
        bundle = _on_agent(a, ns, name)
        assert obj["status"]["digest"] == (bundle / ".digest").read_text().strip()
        await api(kube, "DELETE", wc_path(ns, name))
        await eventually(lambda: kube.status_of("GET", wc_path(ns, name)) == 404, within=30)
        assert not bundle.exists()
        assert _leftovers(a.agent.root) == []


async def test_no_resync_before_the_first_list(
    kube: KubeCluster,
    kube_namespace: str,
    delivery: Delivery,
    nodes: list[Node],
    kube_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    """A controller whose first list is slow never takes its resources' bundles for orphans."""
    ns = kube_namespace
    a, _ = nodes
    await api(kube, "POST", wc_path(ns), _resource("kept", a.name))
    async with delivery.central(tmp_path, [ns], agent_timeout=5.0):
        await eventually(ready_object(kube, ns, "kept"), within=30)
    kept = _on_agent(a, ns, "kept") / ".digest"
    inode = kept.stat().st_ino

    def lists(method: str, path_qs: str) -> bool:
        collection = path_qs.split("?", 1)[0].endswith("/windowscontainers")
        return method == "GET" and collection and not is_watch(method, path_qs)

    # Every attempt of the first list refused for 3 s: it is in after about 9 s, past the
    # first resync's delay.
    kube_proxy.fail(429, count=3, retry_after=3, when=lists)
    async with delivery.central(
        tmp_path,
        [ns],
        kubeconfig=kube.kubeconfig(kube.admin_token, server=kube_proxy.url),
        agent_timeout=5.0,
        resync_interval=1.0,
    ) as mode:
        async with asyncio.timeout(40):
            while not mode.health.is_ready():
                assert kept.exists()
                await asyncio.sleep(0.05)
        for _ in range(60):  # three resyncs after the list
            assert kept.exists()
            await asyncio.sleep(0.05)
        assert metric(mode, "winspec_api_retries_total", api="list") >= 2
    assert kept.stat().st_ino == inode


async def test_restart_over_delivered_resources_writes_no_status(
    kube: KubeCluster, kube_namespace: str, delivery: Delivery, nodes: list[Node], tmp_path: Path
) -> None:
    """A controller restarted over bundles its agents hold writes no status: same digests."""
    ns = kube_namespace
    names = [f"web-{i}" for i in range(6)]
    for i, name in enumerate(names):
        await api(kube, "POST", wc_path(ns), _resource(name, nodes[i % 2].name))
    async with delivery.central(tmp_path, [ns], agent_timeout=5.0) as first:
        objs = [await eventually(ready_object(kube, ns, n), within=30) for n in names]
        await settled(first)
    digests = {o["metadata"]["name"]: o["status"]["digest"] for o in objs}

    writes = server_requests(kube, verb="PATCH", resource="windowscontainers", subresource="status")
    async with delivery.central(tmp_path, [ns], agent_timeout=5.0) as second:
        await eventually(
            lambda: (
                metric(second, "winspec_bundles_written_total", result="unchanged") >= len(names)
            ),
            within=30,
            what="every bundle found delivered",
        )
        await settled(second)
        after = server_requests(
            kube, verb="PATCH", resource="windowscontainers", subresource="status"
        )
    assert after - writes == 0
    for i, name in enumerate(names):
        obj = await api(kube, "GET", wc_path(ns, name))
        on_agent = (_on_agent(nodes[i % 2], ns, name) / ".digest").read_text().strip()
        assert obj["status"]["digest"] == digests[name] == on_agent


async def test_drift_on_an_agent_is_repaired_by_the_resync_counted_with_an_event(
    kube: KubeCluster, kube_namespace: str, nodes: list[Node], central: ClusterMode
) -> None:
    """A bundle damaged on its node is delivered again by the resync, repaired, counted, told."""
    ns = kube_namespace
    a, _ = nodes
    await api(kube, "POST", wc_path(ns), _resource("drift", a.name))
    await eventually(ready_object(kube, ns, "drift"), within=30)
    bundle = _on_agent(a, ns, "drift")
    intact = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*")}
    (bundle / "links.json").unlink()
    (bundle / "stray.json").write_bytes(b"{}")

    def events() -> list[dict[str, Any]]:
        items = kube.api("GET", f"/api/v1/namespaces/{ns}/events")["items"]
        return [e for e in items if e["reason"] == "BundleDriftRepaired"]

    await eventually(lambda: len(events()) == 1, within=30, what="the repair's Event")
    assert {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*")} == intact
    assert events()[0]["message"] == "bundle rewritten: drift repaired (extra, missing)"
    assert events()[0]["involvedObject"]["name"] == "drift"
    drift = await _scraped(central, "winspec_bundle_drift_total", "kind")
    assert drift == {"modified": 0, "missing": 1, "extra": 1}
