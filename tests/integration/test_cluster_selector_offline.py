"""Cluster mode with --selector, against the real kube-apiserver through the fault proxy: a
resource relabelled out of the selector while winspec's watch is down still has its bundle
removed and winspec's finalizer taken off, whether the watch resumes from its resourceVersion
(the server then says DELETED) or the version is gone (410) and winspec lists again (the
resource is then simply absent from the list)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controller.cluster import FINALIZER
from tests.clustermode import api, bundle, eventually, metric, ready_object, running, wc_path
from tests.clustermode import windows_container as wc
from tests.kube import KubeCluster
from tests.kubeproxy import FaultProxy, Logged, is_watch

pytestmark = pytest.mark.kube

MERGE = "application/merge-patch+json"


def _labelled(name: str, team: str) -> dict[str, object]:
    body = wc(name)
    body["metadata"] = {"name": name, "labels": {"team": team}}
    return body


def _lists_of_containers(entry: Logged) -> bool:
    return (
        entry.method == "GET"
        and "/windowscontainers?" in entry.path_qs
        and not is_watch(entry.method, entry.path_qs)
    )


async def _relabel_out_and_wait_for_release(
    kube: KubeCluster, ns: str, tmp_path: Path, name: str
) -> None:
    """Relabel ``name`` out of the selector (the watch is down by now), then expect its bundle
    and winspec's finalizer gone once the watch is back (called with the watch restored)."""

    def released() -> bool:
        obj = kube.api("GET", wc_path(ns, name))
        return FINALIZER not in obj["metadata"].get("finalizers", [])

    await eventually(lambda: not bundle(tmp_path, ns, name).exists(), within=30, what="removed")
    await eventually(released, within=30, what="finalizer removed")
    # Nothing blocks its deletion now.
    await api(kube, "DELETE", wc_path(ns, name))
    await eventually(lambda: kube.status_of("GET", wc_path(ns, name)) == 404, what="deleted")


@pytest.mark.parametrize("gone", [False, True], ids=["rewatch", "relist"])
async def test_leaving_the_selector_while_the_watch_is_down_releases_the_resource(
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
    kube_proxy: FaultProxy,
    tmp_path: Path,
    gone: bool,
) -> None:
    """Relabelled out of --selector while disconnected: bundle and finalizer gone on reconnect."""
    ns = kube_namespace
    await api(kube, "POST", wc_path(ns), _labelled("web", "web"))
    await api(kube, "POST", wc_path(ns), _labelled("stays", "web"))
    kubeconfig = kube.kubeconfig(kube.admin_token, server=kube_proxy.url)
    down = [False]
    # While down, every watch (re)connection is refused: winspec keeps its resourceVersion
    # and backs off, as it would if the API server were unreachable.
    kube_proxy.fail(
        503, count=10**9, when=lambda method, path_qs: down[0] and is_watch(method, path_qs)
    )
    async with running(
        kubeconfig, tmp_path, namespace=[ns], selector="team=web", idle_timeout=2.0
    ) as mode:
        await eventually(ready_object(kube, ns, "web"), what="web Ready")
        await eventually(ready_object(kube, ns, "stays"), what="stays Ready")
        obj = await api(kube, "GET", wc_path(ns, "web"))
        assert FINALIZER in obj["metadata"]["finalizers"]
        lists_before = kube_proxy.count(_lists_of_containers)

        if gone:
            # The watch hears nothing; meanwhile etcd forgets the version winspec holds.
            kube_proxy.silence_watches()
        else:
            down[0] = True
            assert kube_proxy.drop_watches() >= 1
        patch = {"metadata": {"labels": {"team": "elsewhere"}}}
        await api(kube, "PATCH", wc_path(ns, "web"), patch, content_type=MERGE)
        if gone:
            # One more write: compacting at revision R keeps R, so a watch from R-1 would live.
            later = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "later"}}
            await api(kube, "POST", f"/api/v1/namespaces/{ns}/configmaps", later)
            await asyncio.to_thread(kube.compact_etcd)
        await asyncio.sleep(2.5)  # the watch stays down past the inactivity watchdog
        assert bundle(tmp_path, ns, "web").exists()  # winspec has not heard of it yet
        down[0] = False
        kube_proxy.resume_watches()

        await _relabel_out_and_wait_for_release(kube, ns, tmp_path, "web")
        expired = metric(
            mode, "winspec_watch_restarts_total", source="kubernetes", reason="expired"
        )
        relisted = kube_proxy.count(_lists_of_containers) > lists_before
        # Each path was the one taken.
        assert (expired >= 1) is gone
        assert relisted is gone
        assert (bundle(tmp_path, ns, "stays") / "config.json").is_file()
