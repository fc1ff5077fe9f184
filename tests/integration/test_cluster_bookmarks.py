"""Watch bookmarks from a real kube-apiserver (a second server with its watch cache on, which
sends a bookmark about 2 s before each watch's timeoutSeconds): the reflector's
resourceVersion advances, and no reconcile is queued for them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.clustermode import (
    api,
    ensure_node,
    eventually,
    metric,
    ready_object,
    running,
    wc_path,
    windows_container,
)
from tests.kube import KubeCluster
from tests.kubeproxy import FaultProxy, is_watch

pytestmark = pytest.mark.kube


def _watch_versions(proxy: FaultProxy, ns: str) -> list[int]:
    """The resourceVersion each watch of the namespace's WindowsContainers started from."""
    path = f"/namespaces/{ns}/windowscontainers"
    return [
        int(parse_qs(urlsplit(e.path_qs).query)["resourceVersion"][0])
        for e in proxy.log
        if is_watch(e.method, e.path_qs) and urlsplit(e.path_qs).path.endswith(path)
    ]


async def test_bookmarks_advance_the_resource_version_without_reconciles(
    kube_with_watch_cache: KubeCluster, cache_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Real bookmarks move the watch's resourceVersion forward and queue no reconcile."""
    kube = kube_with_watch_cache
    ensure_node(kube)
    ns, elsewhere = "bookmarks", "elsewhere"
    kube.create_namespace(ns)
    kube.create_namespace(elsewhere)
    kubeconfig = kube.kubeconfig(kube.admin_token, server=cache_proxy.url)
    async with running(kubeconfig, tmp_path, namespace=[ns], watch_timeout=4) as mode:
        await api(kube, "POST", wc_path(ns), windows_container("one"))
        await eventually(ready_object(kube, ns, "one"), what="Ready")
        await asyncio.sleep(1.0)  # winspec's own status and finalizer writes come back
        adds = metric(mode, "workqueue_adds_total", name="windowscontainer-bundles")
        # A write the watched namespace does not see: only a bookmark can carry its version.
        other = await api(kube, "POST", wc_path(elsewhere), windows_container("other"))
        newer = int(other["metadata"]["resourceVersion"])

        def advanced() -> bool:
            return any(v >= newer for v in _watch_versions(cache_proxy, ns))

        await eventually(advanced, within=15, what="a watch re-opened from the bookmark's version")
        assert metric(mode, "winspec_events_received_total", source="kubernetes", type="BOOKMARK")
        # The version came from a bookmark, not from a relist: no list of the namespace between
        # the watch before and the first watch that started from it (a relist for another
        # reason, e.g. a watch the loaded server ended early, may come before and is not this).
        path = f"/namespaces/{ns}/windowscontainers"
        calls = [
            (is_watch(e.method, e.path_qs), e.path_qs)
            for e in cache_proxy.log
            if urlsplit(e.path_qs).path.endswith(path)
        ]
        first = next(
            i
            for i, (watch, path_qs) in enumerate(calls)
            if watch and int(parse_qs(urlsplit(path_qs).query)["resourceVersion"][0]) >= newer
        )
        previous = max(i for i, (watch, _) in enumerate(calls[:first]) if watch)
        assert not any(not watch for watch, _ in calls[previous:first]), calls
        assert metric(mode, "workqueue_adds_total", name="windowscontainer-bundles") == adds
