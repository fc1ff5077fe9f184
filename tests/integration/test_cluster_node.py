"""The central shape as users deploy it, on a real one-node cluster (tests/node.py): the
controller image (built by the README's commands) imported with ``docker save``, the Secret
winspec-agent-tls created with kubectl as the agent's manifest asks, then ``kubectl apply -k``
of manifests/overlays/test-central: the central overlay exactly as shipped except for what a
Linux node without a registry needs (its comment says what). The agent DaemonSet runs
``winspec agent`` from the same Linux image, standing in for the Windows one, with its bundle
root a hostPath on the node.

The WindowsContainers are made here in the README's shape; the node is labelled with the
Windows build a Windows kubelet would label it with. Throughout the module a thread reads every
bundle on the node's hostPath (tests/bundlewatch.py): no read may ever find one torn, and each
Ready resource's status digest is the one its bundle on the node has.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.bundles.local import DIGEST_FILE
from tests.agent import make_tls
from tests.bundlewatch import TreeWatch
from tests.clustermode import condition, ready_object, secret, wc_path, windows_container
from tests.images import IMAGE, Built
from tests.kube import KubeAPIError, KubeCluster, wait_for
from tests.manifests import MANIFESTS, required_tool
from tests.node import HOST_BUNDLE_PARENT, KubeNode

pytestmark = [pytest.mark.node, pytest.mark.kube, pytest.mark.docker, pytest.mark.timeout(600)]

NAMESPACE = "winspec-system"
OVERLAY = MANIFESTS / "overlays" / "test-central"
CONTROLLER = "app.kubernetes.io/name=winspec,app.kubernetes.io/component=controller"
AGENT = "app.kubernetes.io/name=winspec,app.kubernetes.io/component=agent"
#: Where the test overlay's agent writes bundles on the node (its hostPath).
NODE_BUNDLES = HOST_BUNDLE_PARENT / "bundles"
#: How long pods get to start and become Ready on a loaded 2-core machine.
START_TIMEOUT = 180.0
#: The tag a rolling update moves the controller to.
NEW_IMAGE = "winspec-controller:0.1.1"
#: The controller's --lease-duration (the shipped Deployment keeps the default).
LEASE_DURATION = 15.0


@dataclass
class Deployed:
    """The node with the central overlay applied and running."""

    node: KubeNode
    kubeconfig: Path

    @property
    def kube(self) -> KubeCluster:
        """The cluster's API server."""
        return self.node.cluster

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``kubectl <args>`` as the cluster's admin."""
        proc = subprocess.run(
            [required_tool("kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check:
            assert proc.returncode == 0, f"kubectl {' '.join(args)}:\n{proc.stderr}"
        return proc

    def pods(self, selector: str) -> list[dict[str, Any]]:
        """The pods of ``selector`` in winspec-system, not being deleted."""
        found = self.kube.api(
            "GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={selector}"
        )["items"]
        return [p for p in found if not p["metadata"].get("deletionTimestamp")]

    def ready_pods(self, selector: str) -> list[dict[str, Any]]:
        """The pods of ``selector`` that are Running and Ready."""
        return [
            p
            for p in self.pods(selector)
            if p["status"].get("phase") == "Running"
            and (condition(p, "Ready") or {}).get("status") == "True"
        ]

    def leader(self) -> str:
        """The holder of the controller's Lease (``<pod name>_<random>``), "" if none."""
        lease = self.kube.api(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/winspec"
        )
        holder: str = lease["spec"].get("holderIdentity") or ""
        return holder

    def describe(self) -> str:
        """What the namespace's pods and events say, for a failure message."""
        pods = self.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout
        events = self.kubectl("get", "events", "-n", NAMESPACE, check=False).stdout
        return f"{pods}\n{events[-3000:]}\nkubelet:\n{self.node.log_tail('kubelet', 15)}"


def _wait(deployed: Deployed, predicate: Any, timeout: float, message: str) -> Any:
    try:
        return wait_for(predicate, timeout, interval=0.5, message=message)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{deployed.describe()}")


@pytest.fixture(scope="module")
def deployed(
    kube_node: KubeNode, controller_image: Built, tmp_path_factory: pytest.TempPathFactory
) -> Deployed:
    """The image imported, the agents' TLS Secret created, the test overlay applied, and
    both controller replicas and the agent Running and Ready."""
    work = tmp_path_factory.mktemp("central")
    kube_node.import_image(controller_image.save(work / "controller.tar"))
    # A Windows kubelet labels its Node with its build; this Linux node stands in for one.
    kube_node.cluster.api(
        "PATCH",
        f"/api/v1/nodes/{kube_node.name}",
        {"metadata": {"labels": {"node.kubernetes.io/windows-build": "10.0.17763"}}},
        content_type="application/merge-patch+json",
    )
    deployed = Deployed(kube_node, kube_node.cluster.admin_kubeconfig)
    tls = make_tls(work / "tls", f"DNS:winspec-agent.{NAMESPACE}.svc,DNS:{kube_node.name}")
    deployed.kubectl("create", "namespace", NAMESPACE)
    deployed.kubectl(
        "create", "secret", "generic", "winspec-agent-tls", "-n", NAMESPACE,
        f"--from-file=tls.crt={tls.cert}", f"--from-file=tls.key={tls.key}",
        f"--from-file=ca.crt={tls.ca}",
    )  # fmt: skip
    deployed.kubectl("apply", "-k", str(OVERLAY))
    _wait(deployed, lambda: len(deployed.ready_pods(CONTROLLER)) == 2, START_TIMEOUT,
          "both controller replicas Ready")  # fmt: skip
    _wait(deployed, lambda: len(deployed.ready_pods(AGENT)) == 1, START_TIMEOUT,
          "the agent Ready")  # fmt: skip
    return deployed


@pytest.fixture(scope="module")
def node_bundles(deployed: Deployed) -> Iterator[TreeWatch]:
    """A thread reading every bundle on the node's hostPath for the whole module."""
    with TreeWatch(NODE_BUNDLES) as watch:
        yield watch


@pytest.fixture(autouse=True)
def never_torn(node_bundles: TreeWatch) -> Iterator[None]:
    """After each test: no bundle on the node was ever seen torn."""
    yield
    node_bundles.check()
    assert node_bundles.torn == []


@pytest.fixture
def app_namespace(deployed: Deployed) -> str:
    """A fresh namespace for one test's WindowsContainers."""
    name = f"apps-{os.urandom(3).hex()}"
    deployed.kube.create_namespace(name)
    return name


def _node_bundle(namespace: str, name: str) -> Path:
    return NODE_BUNDLES / namespace / name


def _create(deployed: Deployed, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    body = windows_container(name, nodeName=deployed.node.name, **spec)
    created: dict[str, Any] = deployed.kube.api("POST", wc_path(namespace), body)
    return created


def _ready(deployed: Deployed, namespace: str, name: str, generation: int = 1) -> dict[str, Any]:
    """Wait until the resource is Ready at ``generation``; its bundle on the node is the one
    the status names (not a stale one)."""
    probe = ready_object(deployed.kube, namespace, name, generation=generation)
    found: dict[str, Any] = _wait(deployed, probe, 90, f"{namespace}/{name} Ready")
    on_node = (_node_bundle(namespace, name) / DIGEST_FILE).read_text().strip()
    assert found["status"]["digest"] == on_node
    return found


def _command_line(namespace: str, name: str) -> str:
    """The process of the bundle on the node, as one string (Windows specs may carry
    ``commandLine`` instead of ``args``)."""
    process = json.loads((_node_bundle(namespace, name) / "config.json").read_bytes())["process"]
    return process.get("commandLine") or " ".join(process.get("args") or [])


def test_two_controller_replicas_run_one_leads_and_the_agent_is_ready(deployed: Deployed) -> None:
    """Both controller replicas run Ready, exactly one holds the Lease, the agent is Ready."""
    controllers = {p["metadata"]["name"] for p in deployed.ready_pods(CONTROLLER)}
    assert len(controllers) == 2
    holder = _wait(deployed, deployed.leader, 60, "a leader")
    assert holder.rsplit("_", 1)[0] in controllers
    (agent,) = deployed.ready_pods(AGENT)
    assert agent["spec"]["nodeName"] == deployed.node.name
    # What runs is the shipped container, not a test's: the shipped arguments and user.
    (controller_pod, _) = deployed.pods(CONTROLLER)
    container = controller_pod["spec"]["containers"][0]
    assert "--delivery=agent" in container["args"]
    assert controller_pod["spec"]["securityContext"]["runAsUser"] == 10001


def test_windowscontainer_becomes_ready_with_its_bundle_on_the_node(
    deployed: Deployed, node_bundles: TreeWatch, app_namespace: str
) -> None:
    """The README's WindowsContainer becomes Ready; its bundle is on the node's hostPath with
    the Secret's and ConfigMap's payload, and the spec's mounts point into it."""
    ns = app_namespace
    password = os.urandom(24)
    deployed.kube.api("POST", f"/api/v1/namespaces/{ns}/secrets",
                      secret("db", {"password": password}))  # fmt: skip
    settings = b'{"Logging": {}}'
    deployed.kube.api(
        "POST",
        f"/api/v1/namespaces/{ns}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"},
         "data": {"appsettings.json": settings.decode()}},
    )  # fmt: skip
    _create(
        deployed, ns, "web",
        image={"os": "windows", "argsEscaped": False},
        layerFolders=["C:\\ProgramData\\docker\\windowsfilter\\base",
                      "C:\\ProgramData\\docker\\windowsfilter\\web"],
        command=["C:\\ServiceMonitor.exe"], args=["w3svc"],
        env=[{"name": "ASPNETCORE_URLS", "value": "http://+:80"}],
        resources={"cpuCount": 2, "memory": 1073741824},
        secrets=[{"secretName": "db", "key": "password", "target": "db-password"}],
        configs=[{"configMapName": "web", "key": "appsettings.json",
                  "target": "C:\\app\\appsettings.json"}],
    )  # fmt: skip
    _ready(deployed, ns, "web")
    bundle = _node_bundle(ns, "web")
    config = json.loads((bundle / "config.json").read_bytes())
    assert config["ociVersion"] == "1.0.2"
    assert "w3svc" in _command_line(ns, "web")
    # The payload directories are mounted from the bundle where it is on the node (Windows
    # mounts directories): the agent's bundle root, as it reports it, and <namespace>\<name>.
    sources = [Path(m["source"].replace("\\", "/")) for m in config["mounts"]]
    into_bundle = [path for path in sources if path.is_relative_to(bundle)]
    assert into_bundle, config["mounts"]
    assert all(path.is_dir() for path in into_bundle), into_bundle
    payloads = {f.read_bytes() for d in into_bundle for f in d.iterdir()}
    assert payloads == {password, settings}
    node_bundles.check()
    assert node_bundles.whole(bundle) > 0


def test_leader_pod_deleted_the_other_replica_leads_within_the_lease(
    deployed: Deployed, app_namespace: str
) -> None:
    """The leader's pod deleted: the standby leads within the lease duration and reconciles."""
    _create(deployed, app_namespace, "before")
    _ready(deployed, app_namespace, "before")
    holder = _wait(deployed, deployed.leader, 60, "a leader")
    leader_pod = holder.rsplit("_", 1)[0]
    deleted_at = time.monotonic()
    deployed.kube.api("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{leader_pod}", expect=(200,))
    new_holder = _wait(
        deployed,
        lambda: (h := deployed.leader()) and h != holder and h,
        LEASE_DURATION + 30,
        "a new leader",
    )
    # A graceful stop hands the Lease over at once; at worst it expires.
    assert time.monotonic() - deleted_at <= LEASE_DURATION + 10
    assert new_holder.rsplit("_", 1)[0] != leader_pod
    _create(deployed, app_namespace, "after")
    _ready(deployed, app_namespace, "after")
    assert _command_line(app_namespace, "after").endswith("echo hello")
    # The Deployment replaces the deleted replica.
    _wait(deployed, lambda: len(deployed.ready_pods(CONTROLLER)) == 2, START_TIMEOUT,
          "two controller replicas again")  # fmt: skip


def test_agent_pod_deleted_the_daemonset_brings_it_back_and_deliveries_resume(
    deployed: Deployed, app_namespace: str
) -> None:
    """The agent's pod deleted: a new one comes, and a changed resource reaches the node."""
    _create(deployed, app_namespace, "web")
    _ready(deployed, app_namespace, "web")
    (agent,) = deployed.ready_pods(AGENT)
    deployed.kube.api("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{agent['metadata']['name']}")
    new_agent = _wait(
        deployed,
        lambda: [
            p
            for p in deployed.ready_pods(AGENT)
            if p["metadata"]["uid"] != agent["metadata"]["uid"]
        ],
        START_TIMEOUT,
        "a new agent pod Ready",
    )
    assert new_agent[0]["spec"]["nodeName"] == deployed.node.name
    try:
        deployed.kube.api(
            "PATCH",
            wc_path(app_namespace, "web"),
            {"spec": {"args": ["echo changed"]}},
            content_type="application/merge-patch+json",
        )
    except KubeAPIError as exc:
        pytest.fail(str(exc))
    _ready(deployed, app_namespace, "web", generation=2)
    assert _command_line(app_namespace, "web").endswith("echo changed")


def test_leader_container_killed_through_the_runtime_the_other_replica_leads(
    deployed: Deployed, app_namespace: str
) -> None:
    """The leader's container killed through the CRI (no hand-over): the standby leads once
    the Lease expires, resources reconcile, and the kubelet restarts the killed container."""
    _create(deployed, app_namespace, "before")
    _ready(deployed, app_namespace, "before")
    holder = _wait(deployed, deployed.leader, 60, "a leader")
    leader_pod = holder.rsplit("_", 1)[0]
    restarts = _restarts(deployed, leader_pod)
    (container,) = [
        line.split()[0]
        for line in deployed.node.cri("containers").splitlines()
        if line.split()[1:4] == ["CONTAINER_RUNNING", f"{NAMESPACE}/{leader_pod}", "winspec"]
    ]
    killed_at = time.monotonic()
    deployed.node.cri("stop-container", container)
    _wait(
        deployed,
        lambda: (h := deployed.leader()) and h != holder,
        LEASE_DURATION + 30,
        "a new leader",
    )
    # The Lease expires at most LEASE_DURATION after the last renewal; the standby tries
    # every retry period (2 s) after that.
    assert time.monotonic() - killed_at <= LEASE_DURATION + 10
    _create(deployed, app_namespace, "after")
    _ready(deployed, app_namespace, "after")
    _wait(deployed, lambda: _restarts(deployed, leader_pod) > restarts, START_TIMEOUT,
          "the killed container restarted")  # fmt: skip
    _wait(deployed, lambda: len(deployed.ready_pods(CONTROLLER)) == 2, START_TIMEOUT,
          "both replicas Ready again")  # fmt: skip


def _restarts(deployed: Deployed, pod: str) -> int:
    """How often the kubelet restarted the winspec container of ``pod``."""
    status = deployed.kube.api("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}")["status"]
    return sum(c["restartCount"] for c in status.get("containerStatuses") or [])


def test_rolling_update_to_a_new_image_tag_under_a_stream_of_changes(
    deployed: Deployed, app_namespace: str
) -> None:
    """The controller Deployment rolled to a new image tag while resources keep changing:
    the new pods take over and every resource's last change reaches the node."""
    ns = app_namespace
    names = [f"r{i}" for i in range(4)]
    for name in names:
        _create(deployed, ns, name)
    for name in names:
        _ready(deployed, ns, name)
    before = {p["metadata"]["name"] for p in deployed.pods(CONTROLLER)}
    # The new tag is the same image under another name: imported, never pulled.
    deployed.node.tag_image(f"docker.io/library/{IMAGE}", f"docker.io/library/{NEW_IMAGE}")
    last: dict[str, tuple[int, str]] = {}
    stop = threading.Event()
    errors: list[str] = []

    def stream() -> None:
        count = 0
        while not stop.is_set():
            name = names[count % len(names)]
            line = f"echo change {count}"
            try:
                obj = deployed.kube.api(
                    "PATCH",
                    wc_path(ns, name),
                    {"spec": {"args": [line]}},
                    content_type="application/merge-patch+json",
                )
            except (KubeAPIError, OSError) as exc:
                errors.append(str(exc))
            else:
                last[name] = (obj["metadata"]["generation"], line)
            count += 1
            stop.wait(0.25)

    changes = threading.Thread(target=stream, daemon=True)
    changes.start()
    try:
        deployed.kubectl(
            "-n", NAMESPACE, "set", "image", "deployment/winspec-controller",
            f"winspec={NEW_IMAGE}",
        )  # fmt: skip
        rollout = deployed.kubectl(
            "-n", NAMESPACE, "rollout", "status", "deployment/winspec-controller",
            f"--timeout={int(START_TIMEOUT)}s", check=False,
        )  # fmt: skip
        assert rollout.returncode == 0, f"{rollout.stdout}{rollout.stderr}\n{deployed.describe()}"
        stop.wait(3)  # changes go on under the new replicas
    finally:
        stop.set()
        changes.join(timeout=10)
    assert errors == []
    after = deployed.ready_pods(CONTROLLER)
    assert len(after) == 2
    assert not before & {p["metadata"]["name"] for p in after}
    assert {p["spec"]["containers"][0]["image"] for p in after} == {NEW_IMAGE}
    holder = _wait(deployed, deployed.leader, 60, "a leader")
    assert holder.rsplit("_", 1)[0] in {p["metadata"]["name"] for p in after}
    assert len(last) == len(names)
    for name, (generation, line) in last.items():
        _ready(deployed, ns, name, generation=generation)
        assert _command_line(ns, name).endswith(line)
