"""Central delivery when a node's agent goes away: deleting a resource never wedges, and the
controller follows the agent pods instead of calling one that is gone.

As in test_remote_delivery.py: the real kube-apiserver, real ``winspec agent`` processes over
HTTPS on loopback, and for each "node" a Node object plus a Pod object whose status says it runs
at 127.0.0.1 with its agent's port (no kubelet runs, so pods are deleted with
``gracePeriodSeconds: 0``, as a kubelet would confirm).
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent import AgentProcess
from tests.clustermode import (
    api,
    condition,
    eventually,
    metric,
    ready_object,
    running,
    wc_path,
)
from tests.clustermode import windows_container as _wc
from tests.integration.test_readme_cluster import _kubectl
from tests.integration.test_remote_delivery import Delivery, _agent_pod, _node, make_delivery
from tests.kube import KubeCluster
from tests.kubeproxy import FaultProxy, is_watch
from tests.readme_commands import ROOT, RUN_STUCK_DELETE

pytestmark = pytest.mark.kube

CONTROLLER = "windowscontainer-bundles"


@pytest.fixture(scope="module")
def delivery(kube: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Delivery:
    """The agents' namespace, accounts, TLS files and the controller's token."""
    return make_delivery(kube, f"gone-{secrets.token_hex(4)}", tmp_path_factory.mktemp("deletion"))


@dataclass
class Node:
    """One test node: its name, and the agents started for it (the last one is its agent)."""

    name: str
    delivery: Delivery
    started: list[AgentProcess] = field(default_factory=list)

    @property
    def agent(self) -> AgentProcess:
        return self.started[-1]

    @property
    def pod(self) -> str:
        return f"/api/v1/namespaces/{self.delivery.namespace}/pods/agent-{self.name}"

    def delete_pod(self) -> None:
        """Delete the agent's Pod object at once (what the kubelet confirms for a pod gone)."""
        self.delivery.kube.api("DELETE", self.pod, {"gracePeriodSeconds": 0}, expect=(200, 404))

    def new_agent(self, root: Path) -> AgentProcess:
        """Start another agent (new port) below ``root`` and make it the node's agent pod."""
        root.parent.mkdir(parents=True, exist_ok=True)
        self.started.append(self.delivery.agent(root))
        self.agent.start()
        _agent_pod(self.delivery, self.name, self.agent.port)
        return self.agent

    def bundle(self, ns: str, name: str, agent: AgentProcess | None = None) -> Path:
        return (agent or self.agent).root / ns / name


@pytest.fixture
def win(delivery: Delivery, tmp_path: Path) -> Iterator[Node]:
    """A Node object with a started agent and its Pod object."""
    name = f"win-{secrets.token_hex(3)}"
    _node(delivery.kube, name)
    node = Node(name, delivery)
    try:
        node.new_agent(tmp_path / "agent1" / "bundles")
        yield node
    finally:
        for started in node.started:
            if started.proc is not None and started.proc.poll() is None:
                os.kill(started.proc.pid, signal.SIGCONT)  # a test may have stopped it
            started.stop()
        node.delete_pod()
        delivery.kube.api("DELETE", f"/api/v1/nodes/{name}", expect=(200, 404))


def _waiting_for_agent(kube: KubeCluster, ns: str, name: str) -> Any:
    """A probe: the Ready condition of a resource being deleted, once it says it waits."""

    def probe() -> dict[str, Any] | None:
        obj: dict[str, Any] = kube.api("GET", wc_path(ns, name))
        ready = condition(obj, "Ready")
        deleting = obj["metadata"].get("deletionTimestamp")
        if deleting and ready and ready["reason"] == "AgentUnreachable":
            return ready
        return None

    return probe


def _gone(kube: KubeCluster, ns: str, name: str) -> Any:
    return lambda: kube.status_of("GET", wc_path(ns, name)) == 404


def _warnings(kube: KubeCluster, ns: str, name: str) -> list[dict[str, Any]]:
    items = kube.api("GET", f"/api/v1/namespaces/{ns}/events")["items"]
    return [e for e in items if e["involvedObject"]["name"] == name and e["type"] == "Warning"]


def _lists_served(agent: AgentProcess) -> float:
    """How many bundle lists (the controller's resyncs) the agent answered, from its /metrics."""
    context = agent.tls.client_context()
    with urllib.request.urlopen(agent.url + "/metrics", context=context, timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "winspec_agent_requests_total"
        and sample.labels == {"operation": "list", "result": "ok"}
    )


def _abandoned(mode: Any, reason: str) -> float:
    return metric(mode, "winspec_bundle_removals_abandoned_total", reason=reason)


async def _ready_on(kube: KubeCluster, ns: str, name: str, node: Node) -> Path:
    """Create the resource on ``node``; its bundle on the node's agent once it is Ready."""
    await api(kube, "POST", wc_path(ns), _wc(name, nodeName=node.name))
    obj = await eventually(ready_object(kube, ns, name), within=30)
    bundle = node.bundle(ns, name)
    assert obj["status"]["digest"] == (bundle / ".digest").read_text().strip()
    return bundle


async def test_delete_with_the_agent_pod_gone_is_released_after_the_grace_period(
    kube: KubeCluster, kube_namespace: str, delivery: Delivery, win: Node, tmp_path: Path
) -> None:
    """Agent pod gone: finalizer released after --agent-removal-grace (2 s), Event and metric."""
    ns = kube_namespace
    async with delivery.central(tmp_path, [ns], agent_timeout=5.0, agent_removal_grace=2.0) as mode:
        bundle = await _ready_on(kube, ns, "web", win)
        win.agent.kill()
        win.delete_pod()
        await api(kube, "DELETE", wc_path(ns, "web"))

        await eventually(_gone(kube, ns, "web"), within=30, what="the finalizer released")
        events = await eventually(lambda: _warnings(kube, ns, "web"), within=10)
        assert [e["reason"] for e in events] == ["BundleNotRemoved"]
        assert win.name in events[0]["message"]
        assert "2s" in events[0]["message"]
        assert _abandoned(mode, "agent_unreachable") == 1
        assert _abandoned(mode, "node_deleted") == 0
        assert (bundle / "config.json").is_file()  # left on the node, as the Event says


async def test_delete_is_released_once_the_node_is_deleted(
    kube: KubeCluster, kube_namespace: str, delivery: Delivery, win: Node, tmp_path: Path
) -> None:
    """A deletion waiting for a dead agent ends once its Node is deleted, with Event and metric."""
    ns = kube_namespace
    async with delivery.central(tmp_path, [ns], agent_timeout=5.0) as mode:
        await _ready_on(kube, ns, "web", win)
        win.agent.kill()
        win.delete_pod()
        await api(kube, "DELETE", wc_path(ns, "web"))
        ready = await eventually(_waiting_for_agent(kube, ns, "web"), within=30)
        assert win.name in ready["message"]
        assert "--agent-removal-grace 600s" in ready["message"]

        await api(kube, "DELETE", f"/api/v1/nodes/{win.name}")
        await eventually(_gone(kube, ns, "web"), within=30, what="the finalizer released")
        events = await eventually(lambda: _warnings(kube, ns, "web"), within=10)
        assert [e["reason"] for e in events] == ["BundleNotRemoved"]
        assert f"{win.name}: the Node no longer exists" in events[0]["message"]
        assert _abandoned(mode, "node_deleted") == 1
        assert _abandoned(mode, "agent_unreachable") == 0


async def test_agent_back_within_the_grace_period_removes_the_bundle(
    kube: KubeCluster, kube_namespace: str, delivery: Delivery, win: Node, tmp_path: Path
) -> None:
    """Status says what a deletion waits for; an agent back within the grace removes the bundle."""
    ns = kube_namespace
    async with delivery.central(tmp_path, [ns], agent_timeout=5.0) as mode:
        bundle = await _ready_on(kube, ns, "web", win)
        win.agent.kill()
        win.delete_pod()
        await api(kube, "DELETE", wc_path(ns, "web"))
        ready = await eventually(_waiting_for_agent(kube, ns, "web"), within=30)
        assert f"waiting for the agent on node {win.name} to remove the bundle" in ready["message"]
        assert "no running agent pod" in ready["message"]
        written = condition(kube.api("GET", wc_path(ns, "web")), "BundleWritten")
        assert written is not None
        assert written["reason"] == "AgentUnreachable"

        win.agent.start()  # the same root, a new pod
        _agent_pod(delivery, win.name, win.agent.port)
        await eventually(_gone(kube, ns, "web"), within=30, what="the deletion")
        assert not bundle.exists()
        assert _warnings(kube, ns, "web") == []
        assert _abandoned(mode, "agent_unreachable") == 0


async def test_a_recreated_agent_pod_is_followed_without_a_failed_call(
    kube: KubeCluster, kube_namespace: str, delivery: Delivery, win: Node, tmp_path: Path
) -> None:
    """A recreated agent pod is followed at once: no call to the old, hanging address fails."""
    ns = kube_namespace
    # A long resync: past the first one (shortly after start), only following the pods can
    # bring the new agent its bundles here.
    async with delivery.central(tmp_path, [ns], agent_timeout=5.0, resync_interval=300.0) as mode:
        await _ready_on(kube, ns, "web", win)
        await eventually(lambda: _lists_served(win.agent) >= 1, within=30, what="first resync")
        old = win.agent
        assert old.proc is not None
        os.kill(old.proc.pid, signal.SIGSTOP)  # its IP gone: connections hang, no answer
        errors = metric(mode, "controller_runtime_reconcile_errors_total", controller=CONTROLLER)

        win.delete_pod()
        new = win.new_agent(tmp_path / "agent2" / "bundles")
        await eventually(lambda: (win.bundle(ns, "web", new) / "config.json").is_file(), within=20)

        # A merge patch, not GET + PUT: the controller's own status writes may land in between.
        await api(
            kube,
            "PATCH",
            wc_path(ns, "web"),
            {"spec": {"args": ["echo changed"]}},
            content_type="application/merge-patch+json",
        )
        obj = await eventually(ready_object(kube, ns, "web", generation=2), within=20)
        digest = (win.bundle(ns, "web", new) / ".digest").read_text().strip()
        assert obj["status"]["digest"] == digest
        assert metric(mode, "controller_runtime_reconcile_errors_total", controller=CONTROLLER) == (
            errors
        )
        assert metric(mode, "winspec_api_retries_total", api="agent_put") == 0


async def test_agent_pods_are_still_found_while_their_watch_is_refused(
    kube: KubeCluster,
    kube_namespace: str,
    delivery: Delivery,
    win: Node,
    kube_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    """Pods watch refused (403, as under an RBAC without it): a recreated agent is still found."""
    ns = kube_namespace
    pods = f"/api/v1/namespaces/{delivery.namespace}/pods"
    kube_proxy.fail(
        403, count=10_000, when=lambda method, path: is_watch(method, path) and pods in path
    )
    kubeconfig = kube.kubeconfig(kube.admin_token, server=kube_proxy.url)
    async with delivery.central(
        tmp_path, [ns], kubeconfig=kubeconfig, agent_timeout=5.0, resync_interval=300.0
    ):
        await _ready_on(kube, ns, "web", win)
        await eventually(
            lambda: kube_proxy.count(lambda e: e.injected) >= 2, within=30, what="refused watches"
        )
        win.agent.kill()
        win.delete_pod()
        new = win.new_agent(tmp_path / "agent2" / "bundles")

        # A merge patch, not GET + PUT: the controller's own status writes may land in between.
        await api(
            kube,
            "PATCH",
            wc_path(ns, "web"),
            {"spec": {"args": ["echo changed"]}},
            content_type="application/merge-patch+json",
        )
        await eventually(ready_object(kube, ns, "web", generation=2), within=30)
        assert (win.bundle(ns, "web", new) / "config.json").is_file()


def _readme_patch(kube: KubeCluster, ns: str, name: str) -> subprocess.CompletedProcess[str]:
    """The README's kubectl patch, for ``name`` in ``ns`` rather than ``web`` in ``apps``."""
    words = shlex.split(RUN_STUCK_DELETE[0])
    assert words[:5] == ["kubectl", "patch", "windowscontainer", "web", "-n"]
    words[3], words[5] = name, ns
    return subprocess.run(
        [_kubectl(), *words[1:]],
        cwd=ROOT,
        env=kube.kubectl_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_readme_patch_ends_a_deletion_no_winspec_finishes(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """With winspec gone, the README's kubectl patch takes its finalizer off, and only its."""
    ns = kube_namespace
    async with running(kube.admin_kubeconfig, tmp_path, namespace=[ns]):
        await api(kube, "POST", wc_path(ns), _wc("web"))
        await eventually(ready_object(kube, ns, "web"), within=30)
    # winspec is stopped: the deletion waits for a finalizer nobody takes off.
    obj = kube.api("DELETE", wc_path(ns, "web"))
    assert obj["metadata"]["finalizers"] == ["winspec.io/bundle"]

    proc = _readme_patch(kube, ns, "web")
    assert proc.returncode == 0, proc.stderr
    assert kube.status_of("GET", wc_path(ns, "web")) == 404

    # Another controller's finalizer: the patch's test operation refuses to touch it.
    other = "example.com/keep"
    body = _wc("other")
    body["metadata"]["finalizers"] = [other]
    kube.api("POST", wc_path(ns), body)
    kube.api("DELETE", wc_path(ns, "other"))
    refused = _readme_patch(kube, ns, "other")
    assert refused.returncode != 0
    assert kube.api("GET", wc_path(ns, "other"))["metadata"]["finalizers"] == [other]
    kube.api(
        "PATCH",
        wc_path(ns, "other"),
        {"metadata": {"finalizers": None}},
        content_type="application/merge-patch+json",
    )
