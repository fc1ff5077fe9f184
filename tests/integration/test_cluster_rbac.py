"""Cluster mode as its own least-privilege ServiceAccount (manifests/base/rbac.yaml), against
the real kube-apiserver: everything winspec does works with exactly these rules, and the API
server's SubjectAccessReviews allow exactly the listed requests and refuse the rest."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.clustermode import (
    api,
    bundle,
    condition,
    eventually,
    gmsa_credential_spec,
    grant_gmsa_use,
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


ACCOUNT_NS = "winspec-system"
LEASE = "winspec"
USER = f"system:serviceaccount:{ACCOUNT_NS}:winspec"
GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{ACCOUNT_NS}", "system:authenticated"]

#: (verb, group, resource, namespace or "", name or "") the ServiceAccount must be allowed.
ALLOWED = [
    *[(v, "winspec.io", "windowscontainers", "apps", "") for v in ("get", "list", "watch")],
    ("patch", "winspec.io", "windowscontainers", "apps", "web"),
    ("patch", "winspec.io", "windowscontainers/status", "apps", "web"),
    *[(v, "", r, "apps", "") for r in ("secrets", "configmaps") for v in ("get", "list", "watch")],
    *[(v, "", r, "", "") for r in ("secrets", "configmaps") for v in ("list", "watch")],
    *[(v, "windows.k8s.io", "gmsacredentialspecs", "", "") for v in ("get", "list", "watch")],
    *[(v, "", "nodes", "", n) for v, n in (("get", "win-1"), ("list", ""), ("watch", ""))],
    *[(v, "", "namespaces", "", "") for v in ("list", "watch")],
    ("create", "authorization.k8s.io", "subjectaccessreviews", "", ""),
    ("create", "", "events", "apps", ""),
    *[(v, "rbac.authorization.k8s.io", r, "", "") for v in ("list", "watch")
      for r in ("roles", "rolebindings", "clusterroles", "clusterrolebindings")],
    ("create", "coordination.k8s.io", "leases", ACCOUNT_NS, ""),
    *[(v, "coordination.k8s.io", "leases", ACCOUNT_NS, LEASE) for v in ("get", "update")],
    # --delivery agent: find the node agents' pods, and follow them.
    *[(v, "", "pods", ACCOUNT_NS, "") for v in ("list", "watch")],
]  # fmt: skip

#: What it must be refused: writes to what it only reads, other kinds, other Leases, escalation.
REFUSED = [
    ("delete", "", "secrets", "apps", "db"),
    ("create", "", "secrets", "apps", ""),
    ("update", "", "secrets", "apps", "db"),
    ("patch", "", "configmaps", "apps", "cfg"),
    ("list", "", "pods", "apps", ""),
    ("watch", "", "pods", "apps", ""),
    ("get", "", "pods", "apps", "p"),
    ("delete", "", "pods", ACCOUNT_NS, "p"),
    ("create", "", "pods/exec", "apps", "p"),
    ("list", "", "serviceaccounts", "apps", ""),
    ("create", "", "serviceaccounts/token", "apps", "default"),
    ("create", "winspec.io", "windowscontainers", "apps", ""),
    ("update", "winspec.io", "windowscontainers", "apps", "web"),
    ("delete", "winspec.io", "windowscontainers", "apps", "web"),
    ("deletecollection", "winspec.io", "windowscontainers", "apps", ""),
    ("update", "winspec.io", "windowscontainers/status", "apps", "web"),
    ("use", "windows.k8s.io", "gmsacredentialspecs", "", "webapp"),
    ("update", "windows.k8s.io", "gmsacredentialspecs", "", "webapp"),
    ("update", "", "nodes", "", "win-1"),
    ("patch", "", "nodes/status", "", "win-1"),
    ("patch", "", "namespaces", "", "apps"),
    ("update", "", "namespaces", "", "apps"),
    ("delete", "", "namespaces", "", "apps"),
    ("patch", "", "events", "apps", "e"),
    ("delete", "", "events", "apps", "e"),
    ("list", "", "events", "apps", ""),
    ("get", "rbac.authorization.k8s.io", "clusterroles", "", "cluster-admin"),
    ("create", "rbac.authorization.k8s.io", "rolebindings", "apps", ""),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", "", ""),
    ("escalate", "rbac.authorization.k8s.io", "clusterroles", "", "winspec"),
    ("bind", "rbac.authorization.k8s.io", "clusterroles", "", "cluster-admin"),
    ("get", "coordination.k8s.io", "leases", ACCOUNT_NS, "kube-scheduler"),
    ("update", "coordination.k8s.io", "leases", ACCOUNT_NS, "other"),
    ("delete", "coordination.k8s.io", "leases", ACCOUNT_NS, LEASE),
    ("list", "coordination.k8s.io", "leases", ACCOUNT_NS, ""),
    ("get", "coordination.k8s.io", "leases", "kube-system", LEASE),
    ("create", "coordination.k8s.io", "leases", "apps", ""),
    ("impersonate", "", "serviceaccounts", "apps", "default"),
    ("create", "authentication.k8s.io", "tokenreviews", "", ""),
]


def _allowed(kube: KubeCluster, verb: str, group: str, resource: str, ns: str, name: str) -> bool:
    """The API server's own answer (a SubjectAccessReview) for the winspec ServiceAccount."""
    resource, _, subresource = resource.partition("/")
    attributes = {"verb": verb, "group": group, "resource": resource}
    attributes |= {k: v for k, v in (("subresource", subresource), ("namespace", ns),
                                     ("name", name)) if v}  # fmt: skip
    review = kube.api(
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": USER, "groups": GROUPS, "resourceAttributes": attributes},
        },
    )
    return bool(review["status"].get("allowed"))


def test_the_roles_grant_exactly_the_listed_rights() -> None:
    """The ClusterRole and Role rules, expanded, are exactly ALLOWED's (verb, group, resource)."""
    granted = set()
    for doc in _documents(RBAC):
        if doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        granted |= {(verb, group, resource) for verb in rule["verbs"]}
    assert granted == {(verb, group, resource) for verb, group, resource, _, _ in ALLOWED}


@pytest.mark.parametrize(("verb", "group", "resource", "ns", "name"), ALLOWED)
def test_the_service_account_may(
    kube: KubeCluster, winspec_token: str, verb: str, group: str, resource: str, ns: str, name: str
) -> None:
    """The API server allows the ServiceAccount each request cluster mode makes."""
    assert _allowed(kube, verb, group, resource, ns, name)


@pytest.mark.parametrize(("verb", "group", "resource", "ns", "name"), REFUSED)
def test_the_service_account_may_not(
    kube: KubeCluster, winspec_token: str, verb: str, group: str, resource: str, ns: str, name: str
) -> None:
    """The API server refuses the ServiceAccount everything beyond that (other Leases too)."""
    assert not _allowed(kube, verb, group, resource, ns, name)


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


@pytest.mark.parametrize("query", ["", "&watch=true&timeoutSeconds=1"])
def test_the_service_account_may_list_agent_pods(
    kube: KubeCluster, winspec_token: str, query: str
) -> None:
    """Listing and watching pods in the agents' namespace (following the node agents) is granted."""
    path = (
        "/api/v1/namespaces/winspec-system/pods?labelSelector=app.kubernetes.io/name=winspec-agent"
    )
    assert kube.status_of("GET", path + query, None, token=winspec_token) == 200


async def test_everything_works_as_the_service_account(
    kube: KubeCluster, kube_namespace: str, node: str, winspec_token: str, tmp_path: Path
) -> None:
    """As its ServiceAccount: Lease, Secret, ConfigMap, gMSA, Event, finalizer all work."""
    ns = kube_namespace
    gmsa = f"rbac-{ns}"
    await api(
        kube, "POST", "/apis/windows.k8s.io/v1/gmsacredentialspecs", gmsa_credential_spec(gmsa)
    )
    await asyncio.to_thread(grant_gmsa_use, kube, ns, gmsa, name="gmsa")
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
