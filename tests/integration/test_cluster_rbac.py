"""Cluster mode as its own least-privilege ServiceAccount (manifests/base/rbac.yaml), against
the real kube-apiserver: everything winspec does works with exactly these rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.clustermode import (
    api,
    bundle,
    condition,
    eventually,
    ready_object,
    running,
    secret,
    wc_path,
    windows_container,
)
from tests.crd import MANIFESTS
from tests.kube import KubeCluster

pytestmark = pytest.mark.kube

RBAC = MANIFESTS / "base" / "rbac.yaml"
NAMESPACE = MANIFESTS / "base" / "namespace.yaml"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def winspec_token(kube: KubeCluster) -> str:
    """A token of the winspec ServiceAccount, with the manifests' namespace and RBAC applied."""
    for doc in _documents(NAMESPACE) + _documents(RBAC):
        kube.apply(doc)
    return kube.service_account_token("winspec-system", "winspec")


def test_every_rule_says_why() -> None:
    """Each rule of the ClusterRole is preceded by a comment justifying it."""
    lines = RBAC.read_text().splitlines()
    rules = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(rules) >= 5
    for i in rules:
        assert lines[i - 1].strip().startswith("#"), lines[i]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/apis/winspec.io/v1alpha1/namespaces/default/windowscontainers/x"),
        ("POST", "/api/v1/namespaces/default/secrets"),
        ("GET", "/api/v1/namespaces/default/pods"),
        ("POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases"),
        ("DELETE", "/apis/coordination.k8s.io/v1/namespaces/winspec-system/leases/winspec"),
        ("DELETE", "/api/v1/namespaces/winspec-system/pods/x"),
        ("GET", "/api/v1/namespaces/winspec-system/pods/x"),
    ],
)
def test_the_service_account_may_do_nothing_else(
    kube: KubeCluster, winspec_token: str, method: str, path: str
) -> None:
    """What winspec does not need is refused to its ServiceAccount (403)."""
    body = {"metadata": {"name": "x"}} if method == "POST" else None
    assert kube.status_of(method, path, body, token=winspec_token) == 403


def test_the_service_account_may_list_agent_pods(kube: KubeCluster, winspec_token: str) -> None:
    """Listing pods in the agents' namespace (finding the node agents) is granted."""
    path = (
        "/api/v1/namespaces/winspec-system/pods?labelSelector=app.kubernetes.io/name=winspec-agent"
    )
    assert kube.status_of("GET", path, None, token=winspec_token) == 200


async def test_everything_works_as_the_service_account(
    kube: KubeCluster, kube_namespace: str, node: str, winspec_token: str, tmp_path: Path
) -> None:
    """As its ServiceAccount: Lease, Secret, ConfigMap, gMSA, Event, finalizer all work."""
    ns = kube_namespace
    gmsa = f"rbac-{ns}"
    await api(kube, "POST", "/apis/windows.k8s.io/v1/gmsacredentialspecs", {
        "apiVersion": "windows.k8s.io/v1", "kind": "GMSACredentialSpec",
        "metadata": {"name": gmsa}, "credspec": {"CmsPlugins": ["ActiveDirectory"]},
    })  # fmt: skip
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
    await api(kube, "POST", f"{rbac}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "gmsa"},
        "rules": [{"apiGroups": ["windows.k8s.io"], "resources": ["gmsacredentialspecs"],
                   "resourceNames": [gmsa], "verbs": ["use"]}],
    })  # fmt: skip
    await api(kube, "POST", f"{rbac}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "gmsa"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gmsa"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}],
    })  # fmt: skip
    await api(kube, "POST", f"/api/v1/namespaces/{ns}/secrets", secret("db", {"pw": b"x"}))
    await api(kube, "POST", f"/api/v1/namespaces/{ns}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
        "data": {"settings.json": "{}"},
    })  # fmt: skip
    kubeconfig = kube.kubeconfig(winspec_token)
    async with running(kubeconfig, tmp_path, leader_elect=True, lease_duration=3.0):
        await api(kube, "POST", wc_path(ns), windows_container(
            "full",
            secrets=[{"secretName": "db", "key": "pw", "target": "pw"}],
            configs=[{"configMapName": "cfg", "key": "settings.json", "target": "C:\\app\\s.json"}],
            gmsaCredentialSpecName=gmsa,
        ))  # fmt: skip
        await eventually(ready_object(kube, ns, "full"), what="Ready as the service account")
        assert (bundle(tmp_path, ns, "full") / "config.json").exists()

        await api(kube, "POST", wc_path(ns), windows_container("nodeless", nodeName="gone-node"))
        unresolvable = ["credentialspec=file://elsewhere.json"]
        await api(kube, "POST", wc_path(ns),
                  windows_container("refused", securityOptions=unresolvable))  # fmt: skip
        await api(kube, "DELETE", wc_path(ns, "full"))
        await eventually(
            lambda: kube.status_of("GET", wc_path(ns, "full")) == 404, what="the deletion"
        )
        assert not bundle(tmp_path, ns, "full").exists()

        def failed(name: str) -> dict[str, Any] | None:
            cond = condition(kube.api("GET", wc_path(ns, name)), "SpecGenerated")
            return cond if cond and cond["status"] == "False" else None

        cond = await eventually(lambda: failed("nodeless"), what="the missing node reported")
        assert cond["reason"] == "DependencyMissing"
        assert "gone-node" in cond["message"]
        cond = await eventually(lambda: failed("refused"), what="the refusal reported")
        assert cond["reason"] == "SpecRefused"

        def event() -> list[Any]:
            items = kube.api("GET", f"/api/v1/namespaces/{ns}/events")["items"]
            return [e for e in items if e["involvedObject"]["name"] == "refused"]

        assert len(await eventually(event, what="the Event")) == 1
