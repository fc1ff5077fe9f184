"""The first list from the API server's watch cache (``resourceVersion=0``, as client-go asks),
against a real kube-apiserver with its default settings: what it asks, that everything is still
reconciled, and that a bundle the list did not show is kept while its resource exists."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from adapters.bundles.namespaced import NamespacedBundleWriter
from adapters.kubernetes.bundles import BundleScope
from adapters.kubernetes.client import KubeClient, load_api_client
from adapters.kubernetes.mode import _clean_local, _exists_in
from adapters.retry import RetryPolicy
from controller.bundle import BundleContent
from tests.clustermode import (
    api,
    ensure_node,
    eventually,
    ready_object,
    running,
    wc_path,
    windows_container,
)
from tests.kube import KubeCluster
from tests.kubeproxy import FaultProxy, is_watch

pytestmark = pytest.mark.kube


@pytest.mark.parametrize("from_cache", [True, False], ids=["default", "no-list-from-cache"])
async def test_the_first_lists_ask_the_watch_cache_unless_told_not_to(
    kube_with_watch_cache: KubeCluster, cache_proxy: FaultProxy, tmp_path: Path, from_cache: bool
) -> None:
    """Every first list asks resourceVersion=0 (none with --no-list-from-cache); all reconciled."""
    kube = kube_with_watch_cache
    ensure_node(kube)
    ns = "first-list-cache" if from_cache else "first-list-etcd"
    kube.create_namespace(ns)
    for name in ("a", "b", "c"):
        await api(kube, "POST", wc_path(ns), windows_container(name))
    kubeconfig = kube.kubeconfig(kube.admin_token, server=cache_proxy.url)
    overrides = {} if from_cache else {"list_from_cache": False}
    async with running(kubeconfig, tmp_path, namespace=[ns], **overrides):
        for name in ("a", "b", "c"):
            await eventually(ready_object(kube, ns, name), what=f"{name} Ready")
    lists = cache_proxy.list_versions()
    mine = f"/apis/winspec.io/v1alpha1/namespaces/{ns}/windowscontainers"
    assert mine in lists, sorted(lists)
    # Every collection's first list (the WindowsContainers, Secrets, Nodes, ...).
    firsts = {path: versions[0] for path, versions in lists.items()}
    expected = "0" if from_cache else None
    assert all(version == expected for version in firsts.values()), firsts


async def _queued_at_start_up(
    client: KubeClient, root: Path, ns: str, names: tuple[str, ...], rounds: int = 1
) -> list[list[str]]:
    """Bundles of ``names`` in ``ns`` under ``root``, judged at start-up as if the first list
    (from a cache that had not caught up) showed none of them, ``rounds`` times: what each
    round queued for removal."""
    bundles = NamespacedBundleWriter(root)
    for name in names:
        await bundles.write(f"{ns}/{name}", BundleContent(files={"config.json": b"{}"}))
    queued: list[list[str]] = []
    try:
        for _ in range(rounds):
            queued.append([])
            scope = BundleScope(frozenset({ns}))
            await _clean_local(bundles, scope, (), queued[-1].append, _exists_in(client))
    finally:
        await client.close()
        bundles.close()
    return queued


async def test_a_bundle_the_first_list_did_not_show_is_kept_while_its_resource_exists(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """Start-up removes a missing resource's bundle only after a consistent GET says 404."""
    ns = kube_namespace
    await api(kube, "POST", wc_path(ns), windows_container("present"))
    client = KubeClient(await load_api_client(str(kube.admin_kubeconfig)), timeout=10.0)
    queued = await _queued_at_start_up(client, tmp_path / "bundles", ns, ("present", "gone"))
    assert queued == [[f"{ns}/gone"]]


async def test_a_bundle_is_kept_when_the_server_cannot_say_whether_its_resource_exists(
    kube: KubeCluster, kube_namespace: str, kube_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A GET that fails (503 through the proxy) keeps the bundle: nothing removed on a guess."""
    ns = kube_namespace
    kube_proxy.fail(503, count=1, when=lambda method, path_qs: path_qs.endswith("/gone"))
    kubeconfig = kube.kubeconfig(kube.admin_token, server=kube_proxy.url)
    api_client = await load_api_client(str(kubeconfig))
    client = KubeClient(api_client, retry=RetryPolicy(attempts=1), timeout=10.0)
    queued = await _queued_at_start_up(client, tmp_path / "bundles", ns, ("gone",), rounds=2)
    # The first answer was 503: kept. The second, 404: queued for removal.
    assert queued == [[], [f"{ns}/gone"]]


async def test_a_first_list_that_fails_is_asked_again_of_etcd(
    kube: KubeCluster, kube_namespace: str, node: str, kube_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A first list refused beyond its retries (3 × 503) is listed again without the cache."""
    ns = kube_namespace
    await api(kube, "POST", wc_path(ns), windows_container("listed"))

    def lists_of_mine(method: str, path_qs: str) -> bool:
        return (
            method == "GET"
            and not is_watch(method, path_qs)
            and (urlsplit(path_qs).path == wc_path(ns))
        )

    kube_proxy.fail(503, count=3, when=lists_of_mine)
    kubeconfig = kube.kubeconfig(kube.admin_token, server=kube_proxy.url)
    async with running(kubeconfig, tmp_path, namespace=[ns]):  # 3 attempts per call
        await eventually(ready_object(kube, ns, "listed"), within=30, what="Ready")
    versions = kube_proxy.list_versions()[wc_path(ns)]
    assert versions[:3] == ["0"] * 3, versions
    assert versions[3:], versions
    assert not any(versions[3:]), versions
