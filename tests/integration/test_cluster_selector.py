"""Cluster mode with --selector alone, against the real kube-apiserver: only matching
WindowsContainers get bundles; a label change moves a resource into or out of the set."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cluster import FINALIZER
from tests.clustermode import api, bundle, eventually, ready_object, running, wc_path
from tests.clustermode import windows_container as wc
from tests.kube import KubeCluster

pytestmark = pytest.mark.kube

MERGE = "application/merge-patch+json"


def _labelled(name: str, team: str) -> dict[str, object]:
    body = wc(name)
    body["metadata"] = {"name": name, "labels": {"team": team}}
    return body


async def test_selector_scopes_bundles_and_label_changes_move_them(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """Only selected resources get bundles; leaving the selector removes bundle and finalizer."""
    ns = kube_namespace
    await api(kube, "POST", wc_path(ns), _labelled("web", "web"))
    await api(kube, "POST", wc_path(ns), _labelled("db", "db"))
    async with running(kube.admin_kubeconfig, tmp_path, selector="team=web"):
        await eventually(ready_object(kube, ns, "web"), what="the selected one Ready")
        assert not bundle(tmp_path, ns, "db").exists()
        db = await api(kube, "GET", wc_path(ns, "db"))
        assert "status" not in db
        assert FINALIZER not in db["metadata"].get("finalizers", [])

        # Into the selector: reconciled like a new resource.
        await api(kube, "PATCH", wc_path(ns, "db"), {"metadata": {"labels": {"team": "web"}}},
                  content_type=MERGE)  # fmt: skip
        await eventually(ready_object(kube, ns, "db"), what="Ready after joining the selector")
        assert (bundle(tmp_path, ns, "db") / "config.json").is_file()

        # Out of the selector: handled as a deletion (bundle removed), and the finalizer
        # taken off so that deleting the object later is not blocked by an unwatched one.
        await api(kube, "PATCH", wc_path(ns, "web"), {"metadata": {"labels": {"team": "x"}}},
                  content_type=MERGE)  # fmt: skip

        def released() -> bool:
            obj = kube.api("GET", wc_path(ns, "web"))
            return FINALIZER not in obj["metadata"].get("finalizers", [])

        await eventually(lambda: not bundle(tmp_path, ns, "web").exists(), what="bundle removed")
        await eventually(released, what="finalizer removed")
        await api(kube, "DELETE", wc_path(ns, "web"))
        await eventually(lambda: kube.status_of("GET", wc_path(ns, "web")) == 404, what="deleted")
        assert (bundle(tmp_path, ns, "db") / "config.json").is_file()
