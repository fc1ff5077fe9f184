"""Deploying the shipped overlays on the one-node cluster (tests/node.py), as users do: the
controller image imported, the node labelled as a Windows kubelet labels it, ``kubectl`` as
the cluster's admin; and reading what ends up on the node's hostPath.

The test overlays beside the shipped ones (manifests/overlays/test-*) put the node's bundle
root at :data:`NODE_BUNDLES`.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.bundles.local import DIGEST_FILE
from tests.clustermode import condition, ready_object, wc_path, windows_container
from tests.images import Built
from tests.kube import KubeCluster
from tests.manifests import required_tool
from tests.node import HOST_BUNDLE_PARENT, KubeNode
from tests.readme_commands import ROOT
from tests.support.waiting import wait_for

NAMESPACE = "winspec-system"
#: Where the test overlays' winspec writes bundles on the node (its hostPath).
NODE_BUNDLES = HOST_BUNDLE_PARENT / "bundles"
#: How long pods get to start and become Ready on a loaded 2-core machine.
START_TIMEOUT = 180.0


@dataclass
class Deployed:
    """A one-node cluster with an overlay applied (tests deploy through kubectl as users do)."""

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
            cwd=ROOT,  # the README's relative paths
            env=self.kube.kubectl_env() | {"KUBECONFIG": str(self.kubeconfig)},
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


def wait_or_fail(deployed: Deployed, predicate: Any, timeout: float, message: str) -> Any:
    """``wait_for``, failing the test with what the namespace's pods and events say."""
    try:
        return wait_for(predicate, timeout, interval=0.5, what=message)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{deployed.describe()}")


def prepare(node: KubeNode, image: Built, work: Path) -> Deployed:
    """Import the controller image into the node, label the node with the Windows build a
    Windows kubelet would give it (this Linux node stands in for one), create winspec-system."""
    node.import_image(image.save(work / "controller.tar"))
    node.cluster.api(
        "PATCH",
        f"/api/v1/nodes/{node.name}",
        {"metadata": {"labels": {"node.kubernetes.io/windows-build": "10.0.17763"}}},
        content_type="application/merge-patch+json",
    )
    deployed = Deployed(node, node.cluster.admin_kubeconfig)
    deployed.kubectl("create", "namespace", NAMESPACE)
    return deployed


def new_namespace(deployed: Deployed) -> str:
    """A fresh namespace for a test's WindowsContainers."""
    name = f"apps-{os.urandom(3).hex()}"
    deployed.kube.create_namespace(name)
    return name


def node_bundle(namespace: str, name: str) -> Path:
    """Where the bundle of a resource is on the node."""
    return NODE_BUNDLES / namespace / name


def create_on_node(
    deployed: Deployed,
    namespace: str,
    name: str,
    *,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """Create a WindowsContainer (tests/clustermode.py's shape, ``spec`` over it) on the node
    unless ``spec`` names another."""
    body = windows_container(name, **{"nodeName": deployed.node.name, **spec})
    if labels:
        body["metadata"]["labels"] = labels
    created: dict[str, Any] = deployed.kube.api("POST", wc_path(namespace), body)
    return created


def ready_on_node(
    deployed: Deployed,
    namespace: str,
    name: str,
    generation: int = 1,
    *,
    agent_digest: bool = True,
) -> dict[str, Any]:
    """Wait until the resource is Ready at ``generation``. With ``agent_digest`` (central
    delivery, where the status carries the digest the node's agent answers), the bundle on the
    node is the one the status names, not a stale one."""
    probe = ready_object(deployed.kube, namespace, name, generation=generation)
    found: dict[str, Any] = wait_or_fail(deployed, probe, 90, f"{namespace}/{name} Ready")
    if agent_digest:
        on_node = (node_bundle(namespace, name) / DIGEST_FILE).read_text().strip()
        assert found["status"]["digest"] == on_node
    return found


def command_line(namespace: str, name: str) -> str:
    """The process of the bundle on the node, as one string (Windows specs may carry
    ``commandLine`` instead of ``args``)."""
    process = json.loads((node_bundle(namespace, name) / "config.json").read_bytes())["process"]
    return process.get("commandLine") or " ".join(process.get("args") or [])


def mounted_payloads(namespace: str, name: str) -> set[bytes]:
    """The contents of the files in the bundle's directories its spec's mounts name, read on
    the node (Windows mounts directories: the bundle's payload directories, by their path on
    the node). Fails when no mount points into the bundle."""
    bundle = node_bundle(namespace, name)
    config = json.loads((bundle / "config.json").read_bytes())
    sources = [Path(m["source"].replace("\\", "/")) for m in config["mounts"]]
    into_bundle = [path for path in sources if path.is_relative_to(bundle)]
    assert into_bundle, config["mounts"]
    assert all(path.is_dir() for path in into_bundle), into_bundle
    return {f.read_bytes() for d in into_bundle for f in d.iterdir()}
