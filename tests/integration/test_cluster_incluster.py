"""Cluster mode's in-cluster configuration against the real kube-apiserver: only the pod's
environment is faked (KUBERNETES_SERVICE_HOST/PORT and a service account directory holding
the winspec ServiceAccount's token and the cluster's CA)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.clustermode import api, eventually, ready_object, running, wc_path, windows_container
from tests.integration.test_cluster_rbac import winspec_token  # noqa: F401 - a fixture
from tests.kube import KubeCluster

pytestmark = pytest.mark.kube


async def test_in_cluster_configuration_reaches_the_server(
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
    winspec_token: str,  # noqa: F811 - the fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No kubeconfig anywhere: the pod's env and service_account_dir reach the server."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(winspec_token)
    shutil.copy(kube.ca, account / "ca.crt")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kube/config either
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(kube.port))
    ns = kube_namespace
    async with running(None, tmp_path, service_account_dir=str(account), namespace=[ns]):
        await api(kube, "POST", wc_path(ns), windows_container("pod"))
        await eventually(ready_object(kube, ns, "pod"), what="Ready, configured in-cluster")
    assert (tmp_path / "bundles" / ns / "pod" / "config.json").is_file()


async def test_in_cluster_without_a_token_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An in-cluster start without a token names the service account directory it read."""
    from adapters.kubernetes.client import load_api_client
    from controller.errors import PermanentError

    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    with pytest.raises(PermanentError, match=str(tmp_path / "empty")):
        await load_api_client(service_account_dir=str(tmp_path / "empty"))
