"""The kube-apiserver fixture itself: a real v1.20.2 server, its users, the project's CRD."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kube import KUBE_VERSION, KubeAPIError, KubeCluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.kube

WC_PATH = "/apis/winspec.io/v1alpha1/namespaces/{ns}/windowscontainers"


def _wc(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "nodeName": "win-1",
        "command": ["cmd.exe"],
        "layerFolders": ["C:\\layers\\base", "C:\\layers\\rw"],
    }
    body.update(spec)
    return {
        "apiVersion": "winspec.io/v1alpha1",
        "kind": "WindowsContainer",
        "metadata": {"name": name},
        "spec": body,
    }


def test_the_server_is_the_version_built(kube: KubeCluster) -> None:
    """/version reports the kube-apiserver version the install script builds."""
    assert kube.api("GET", "/version")["gitVersion"] == KUBE_VERSION


def test_the_nobody_user_is_authenticated_but_has_no_rights(kube: KubeCluster) -> None:
    """The no-rights token is known (not 401) and refused everything (403)."""
    assert kube.status_of("GET", "/api/v1/namespaces", token="not-a-token") == 401
    assert kube.status_of("GET", "/api/v1/namespaces", token=kube.nobody_token) == 403


def test_a_valid_object_is_accepted_with_the_crd_defaults(
    kube: KubeCluster, kube_namespace: str
) -> None:
    """The CRD defaults what the spec leaves out (isolation, image OS, service account, …)."""
    created = kube.api("POST", WC_PATH.format(ns=kube_namespace), _wc("web", env=[{"name": "A"}]))
    spec = created["spec"]
    assert spec["isolation"] == "default"
    assert spec["image"] == {"os": "windows", "argsEscaped": False}
    assert spec["serviceAccountName"] == "default"
    assert spec["tty"] is False
    assert spec["env"] == [{"name": "A"}]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"layerFolders": []}, "spec.layerFolders"),
        ({"isolation": "sandbox"}, "spec.isolation"),
        ({"nodeName": "Not_A_Node"}, "spec.nodeName"),
        ({"resources": {"cpuPercent": 101}}, "spec.resources.cpuPercent"),
        ({"secrets": [{"secretName": "db", "key": "k"}]}, "spec.secrets.target"),
    ],
)
def test_an_invalid_object_is_refused_with_422(
    kube: KubeCluster, kube_namespace: str, change: dict[str, Any], field: str
) -> None:
    """The CRD's schema refuses bad specs before winspec ever sees them (422 naming the field)."""
    with pytest.raises(KubeAPIError) as info:
        kube.api("POST", WC_PATH.format(ns=kube_namespace), _wc("bad", **change))
    assert info.value.status == 422
    assert field in str(info.value.body)


def test_unknown_fields_are_pruned(kube: KubeCluster, kube_namespace: str) -> None:
    """A field the schema does not know is dropped by the server (structural schema)."""
    created = kube.api("POST", WC_PATH.format(ns=kube_namespace), _wc("pruned", bogus=1))
    assert "bogus" not in created["spec"]


def test_status_is_a_subresource(kube: KubeCluster, kube_namespace: str) -> None:
    """Status written with the object is ignored; through /status it is kept."""
    path = WC_PATH.format(ns=kube_namespace)
    body = _wc("st") | {"status": {"digest": "x"}}
    created = kube.api("POST", path, body)
    assert "digest" not in created.get("status", {})
    patched = kube.api(
        "PATCH",
        f"{path}/st/status",
        {"status": {"digest": "abc", "observedGeneration": 1}},
        content_type="application/merge-patch+json",
    )
    assert patched["status"]["digest"] == "abc"


def test_a_service_account_token_authenticates(kube: KubeCluster, kube_namespace: str) -> None:
    """A TokenRequest token is accepted as that service account (403, not 401, without RBAC)."""
    token = kube.service_account_token(kube_namespace, "probe")
    review = kube.api(
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
    )
    assert review["status"]["user"]["username"] == f"system:serviceaccount:{kube_namespace}:probe"
    assert kube.status_of("GET", "/api/v1/namespaces", token=token) == 403


def test_the_controller_manager_creates_default_service_accounts(
    kube_with_controller_manager: KubeCluster,
) -> None:
    """With kube-controller-manager, a new namespace gets its "default" ServiceAccount."""
    kube = kube_with_controller_manager
    kube.create_namespace("with-kcm")
    wait_for(
        lambda: kube.status_of("GET", "/api/v1/namespaces/with-kcm/serviceaccounts/default") == 200,
        60,
        what="the default ServiceAccount",
    )


async def test_the_api_client_fixture_talks_to_the_server(
    kube_api: Any, kube_namespace: str
) -> None:
    """The kubernetes-asyncio ApiClient fixture is logged in as admin on the session's server."""
    from kubernetes_asyncio import client

    namespaces = await client.CoreV1Api(kube_api).list_namespace()
    assert kube_namespace in {ns.metadata.name for ns in namespaces.items}
