"""Cluster mode's list and watch calls under 5xx and 429 (with Retry-After) from the fault
proxy in front of the real kube-apiserver: retried, counted, nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clustermode import api, eventually, metric, ready_object, running, wc_path
from tests.clustermode import windows_container as wc
from tests.kube import KubeCluster
from tests.kubeproxy import FaultProxy, is_watch

pytestmark = pytest.mark.kube


def _containers(watch: bool):  # type: ignore[no-untyped-def]
    """A proxy rule matcher: GETs of the WindowsContainer collection, watches or lists."""

    def when(method: str, path_qs: str) -> bool:
        collection = path_qs.split("?", 1)[0].endswith("/windowscontainers")
        return method == "GET" and collection and is_watch(method, path_qs) == watch

    return when


async def test_5xx_and_429_on_list_and_watch_are_retried_and_counted(
    kube: KubeCluster, kube_namespace: str, node: str, kube_proxy: FaultProxy, tmp_path: Path
) -> None:
    """503 and 429 (Retry-After) on the list and the watch are retried, counted, nothing lost."""
    ns = kube_namespace
    await api(kube, "POST", wc_path(ns), wc("listed"))
    kube_proxy.fail(503, count=1, retry_after=1, when=_containers(watch=False))
    kube_proxy.fail(429, count=1, retry_after=1, when=_containers(watch=False))
    kubeconfig = kube.kubeconfig(kube.admin_token, server=kube_proxy.url)
    async with running(kubeconfig, tmp_path, namespace=[ns], idle_timeout=5.0) as mode:
        await eventually(ready_object(kube, ns, "listed"), what="Ready after a failed list")
        assert metric(mode, "winspec_api_retries_total", api="list") >= 2
        injected_lists = kube_proxy.count(
            lambda e: e.injected and _containers(watch=False)(e.method, e.path_qs)
        )
        assert injected_lists == 2

        before = metric(mode, "winspec_watch_restarts_total", source="kubernetes", reason="error")
        kube_proxy.fail(503, count=1, retry_after=1, when=_containers(watch=True))
        kube_proxy.fail(429, count=1, retry_after=1, when=_containers(watch=True))
        assert kube_proxy.drop_watches() >= 1
        # Created while the watch is refused: the re-opened watch (from the last
        # resourceVersion) must still deliver it.
        await api(kube, "POST", wc_path(ns), wc("watched"))
        await eventually(ready_object(kube, ns, "watched"), what="Ready after a refused watch")
        injected_watches = kube_proxy.count(
            lambda e: e.injected and _containers(watch=True)(e.method, e.path_qs)
        )
        assert injected_watches == 2
        # Each refused watch waited for its Retry-After (1 s), not the 0.2 s backoff.
        watches = [e for e in kube_proxy.log if _containers(watch=True)(e.method, e.path_qs)]
        first = next(i for i, e in enumerate(watches) if e.injected)
        gaps = [watches[i + 1].at - watches[i].at for i in (first, first + 1)]
        assert min(gaps) >= 0.9, gaps
        after = metric(mode, "winspec_watch_restarts_total", source="kubernetes", reason="error")
        assert after - before >= 2
