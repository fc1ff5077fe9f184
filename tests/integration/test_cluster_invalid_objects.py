"""Cluster mode and WindowsContainers the server holds but winspec's models refuse, against the
real kube-apiserver: the CRD was changed under stored objects. Such a resource gets an
``InvalidSpec`` condition naming the field (never its value) where the server lets status be
written, exactly one Warning Event, no retries, and reconciles normally once it is fixed."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.kubernetes.mode import ClusterMode
from controller.cluster import FINALIZER
from tests.clustermode import (
    api,
    bundle,
    condition,
    eventually,
    metric,
    ready_object,
    running,
    wc_path,
    windows_container,
)
from tests.crd import load_crd, version_schema
from tests.kube import KubeAPIError, KubeCluster
from tests.kubeproxy import FaultProxy

pytestmark = pytest.mark.kube

MERGE = "application/merge-patch+json"
#: What the stored object's spec.command holds instead of a list: must never be echoed.
SECRET_COMMAND = "C:\\tools\\login.exe --password=hunter2-s3cret"
CONTROLLER = "windowscontainer-bundles"


def _loose_crd() -> dict[str, Any]:
    """The project's CRD, but spec.command takes any JSON value (a CRD of another version)."""
    crd = copy.deepcopy(load_crd())
    spec = version_schema(crd)["properties"]["spec"]
    spec["properties"]["command"] = {"x-kubernetes-preserve-unknown-fields": True}
    return crd


@contextlib.asynccontextmanager
async def _loose_crd_applied(kube: KubeCluster, ns: str) -> AsyncIterator[None]:
    """The loose CRD on the server for the block; the project's CRD again afterwards (the
    server is the session's: no other test may see the loose one)."""
    try:
        await asyncio.to_thread(kube.apply, _loose_crd())
        probe = windows_container("probe", command="not a list")

        def accepted() -> bool:
            # The server takes a moment to serve a changed CRD's schema.
            try:
                kube.api("POST", wc_path(ns) + "?dryRun=All", probe)
            except KubeAPIError as exc:
                if exc.status != 422:
                    raise
                return False
            return True

        await eventually(accepted, within=30, what="the loose CRD served")
        yield
    finally:
        await asyncio.to_thread(kube.apply_crd)

        def strict() -> bool:
            probe = windows_container("probe", command="not a list")
            return kube.status_of("POST", wc_path(ns) + "?dryRun=All", probe) == 422

        await eventually(strict, within=30, what="the project's CRD served again")


def _terminal(mode: ClusterMode) -> float:
    """How many reconciles failed permanently so far."""
    return metric(mode, "controller_runtime_terminal_reconcile_errors_total", controller=CONTROLLER)


def _events(kube: KubeCluster, ns: str, name: str) -> list[dict[str, Any]]:
    events = kube.api("GET", f"/api/v1/namespaces/{ns}/events")["items"]
    return [e for e in events if e["involvedObject"]["name"] == name]


def _invalid_spec(kube: KubeCluster, ns: str, name: str) -> dict[str, Any] | None:
    """A probe: the object once its Ready condition says InvalidSpec."""
    obj: dict[str, Any] = kube.api("GET", wc_path(ns, name))
    ready = condition(obj, "Ready")
    return obj if ready and ready["reason"] == "InvalidSpec" else None


async def test_an_object_that_does_not_decode_gets_a_condition_and_one_event(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """A stored object of the wrong shape: InvalidSpec naming the field, one Event, then Ready."""
    ns = kube_namespace
    async with _loose_crd_applied(kube, ns):
        await api(kube, "POST", wc_path(ns), windows_container("odd", command=SECRET_COMMAND))
        async with running(kube.admin_kubeconfig, tmp_path, namespace=[ns]) as mode:
            obj = await eventually(lambda: _invalid_spec(kube, ns, "odd"), what="InvalidSpec")
            await eventually(lambda: _events(kube, ns, "odd"), what="the Event")
            # The loop counts the failure once the reconcile (and its Event) is over.
            await eventually(lambda: _terminal(mode), what="the failure counted")
            await asyncio.sleep(1.0)  # time for retries, if there were any
            assert _terminal(mode) == 1
            assert metric(mode, "workqueue_retries_total", name=CONTROLLER) == 0
        for kind in ("SpecGenerated", "Ready"):
            cond = condition(obj, kind)
            assert cond is not None
            assert cond["status"] == "False"
            assert cond["reason"] == "InvalidSpec"
            assert "$.spec.command" in cond["message"]
        assert condition(obj, "BundleWritten")["status"] == "False"  # type: ignore[index]
        assert "hunter2" not in json.dumps(obj["status"])
        assert not bundle(tmp_path, ns, "odd").exists()

        # A restart lists it again and reconciles it again: the status already says it, so
        # no second Event.
        async with running(kube.admin_kubeconfig, tmp_path, namespace=[ns]) as mode:
            await eventually(lambda: _terminal(mode), what="the object reconciled again")
            await asyncio.sleep(0.5)
            events = await asyncio.to_thread(_events, kube, ns, "odd")
            assert len(events) == 1
            event = events[0]
            assert event["type"] == "Warning"
            assert event["reason"] == "InvalidSpec"
            assert "$.spec.command" in event["message"]
            assert "hunter2" not in event["message"]

            # Fixed by its owner: reconciled like any other.
            fix = {"spec": {"command": ["cmd.exe", "/S", "/C"]}}
            await api(kube, "PATCH", wc_path(ns, "odd"), fix, content_type=MERGE)
            await eventually(ready_object(kube, ns, "odd"), what="Ready after the fix")
            assert (bundle(tmp_path, ns, "odd") / "config.json").is_file()


async def test_deleting_an_object_that_does_not_decode_is_not_blocked(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """A stored object of the wrong shape carrying winspec's finalizer: deleting it ends."""
    ns = kube_namespace
    async with _loose_crd_applied(kube, ns):
        body = windows_container("doomed", command=SECRET_COMMAND)
        # As if winspec had written its bundle under the CRD the object was valid for.
        body["metadata"]["finalizers"] = [FINALIZER]
        await api(kube, "POST", wc_path(ns), body)
        async with running(kube.admin_kubeconfig, tmp_path, namespace=[ns]):
            await eventually(lambda: _invalid_spec(kube, ns, "doomed"), what="InvalidSpec")
            await api(kube, "DELETE", wc_path(ns, "doomed"))
            await eventually(
                lambda: kube.status_of("GET", wc_path(ns, "doomed")) == 404,
                what="the finalizer removed and the object gone",
            )


async def test_an_object_the_server_no_longer_accepts_gets_one_event_and_is_not_retried(
    kube: KubeCluster, kube_namespace: str, node: str, kube_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Stored under an old CRD and refused by the current one: one Event across a relist."""
    ns = kube_namespace
    async with _loose_crd_applied(kube, ns):
        await api(kube, "POST", wc_path(ns), windows_container("stale", command=SECRET_COMMAND))
    # The project's CRD is back: the server serves the object as stored, but refuses any write
    # to it (status included) until its spec is valid again.
    stored = await api(kube, "GET", wc_path(ns, "stale"))
    assert stored["spec"]["command"] == SECRET_COMMAND
    kubeconfig = kube.kubeconfig(kube.admin_token, server=kube_proxy.url)
    async with running(kubeconfig, tmp_path, namespace=[ns], idle_timeout=2.0) as mode:
        events = await eventually(lambda: _events(kube, ns, "stale"), what="the Event")
        assert "$.spec.command" in events[0]["message"]
        assert "hunter2" not in events[0]["message"]
        assert events[0]["reason"] == "InvalidSpec"
        await eventually(lambda: _terminal(mode), what="the failure counted")

        # A relist (410 Gone from the real server) reconciles it again: still one Event.
        kube_proxy.silence_watches()
        # One write after the last one winspec saw: compacting at revision R keeps R.
        later = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "later"}}
        await api(kube, "POST", f"/api/v1/namespaces/{ns}/configmaps", later)
        await asyncio.to_thread(kube.compact_etcd)
        await asyncio.sleep(2.5)  # the inactivity watchdog gives up on the silent watch
        kube_proxy.resume_watches()
        await eventually(
            lambda: _terminal(mode) >= 2,
            within=30,
            what="reconciled again after the relist",
        )
        expired = metric(
            mode, "winspec_watch_restarts_total", source="kubernetes", reason="expired"
        )
        assert expired >= 1
        await asyncio.sleep(0.5)
        assert len(await asyncio.to_thread(_events, kube, ns, "stale")) == 1
        assert metric(mode, "workqueue_retries_total", name=CONTROLLER) == 0
        assert "status" not in await api(kube, "GET", wc_path(ns, "stale"))

        fix = {"spec": {"command": ["cmd.exe", "/S", "/C"]}}
        await api(kube, "PATCH", wc_path(ns, "stale"), fix, content_type=MERGE)
        await eventually(ready_object(kube, ns, "stale"), what="Ready after the fix")
