"""Cluster mode end to end, against the real kube-apiserver: WindowsContainers in, bundles,
status, finalizers and events out. winspec runs in-process (ClusterMode) with a kubeconfig."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from adapters.kubernetes.mode import ClusterMode
from controller.cluster import FINALIZER, SecretKeyRef, secret_payload_id
from controller.settings import load_settings
from tests.kube import KubeAPIError, KubeCluster
from tests.kubeproxy import FaultProxy

pytestmark = pytest.mark.kube

T = TypeVar("T")
NODE = "win-node-1"


def wc_path(ns: str, name: str = "") -> str:
    """The path of a WindowsContainer (or the collection, without ``name``)."""
    base = f"/apis/winspec.io/v1alpha1/namespaces/{ns}/windowscontainers"
    return f"{base}/{name}" if name else base


def windows_container(name: str, **spec: Any) -> dict[str, Any]:
    """A minimal valid WindowsContainer for the test node."""
    body: dict[str, Any] = {
        "nodeName": NODE,
        "command": ["cmd.exe", "/S", "/C"],
        "args": ["echo hello"],
        "layerFolders": ["C:\\layers\\base", "C:\\layers\\rw"],
        "isolation": "process",
    }
    body.update(spec)
    return {
        "apiVersion": "winspec.io/v1alpha1",
        "kind": "WindowsContainer",
        "metadata": {"name": name},
        "spec": body,
    }


def secret(name: str, data: dict[str, bytes]) -> dict[str, Any]:
    """A Secret with ``data`` base64-encoded."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


@pytest.fixture
def node(kube: KubeCluster) -> str:
    """A Windows Node object (build 17763, 4 CPUs) the resources are scheduled to."""
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE, "labels": {"node.kubernetes.io/windows-build": "10.0.17763"}},
    }
    try:
        kube.api("POST", "/api/v1/nodes", body)
    except KubeAPIError as exc:
        if exc.status != 409:
            raise
    kube.api(
        "PATCH",
        f"/api/v1/nodes/{NODE}/status",
        {"status": {"capacity": {"cpu": "4"}, "nodeInfo": {"kernelVersion": "10.0.17763.1"}}},
        content_type="application/merge-patch+json",
    )
    return NODE


async def api(kube: KubeCluster, *args: Any, **kwargs: Any) -> Any:
    """``kube.api`` in a thread, so the controller in this event loop keeps running."""
    return await asyncio.to_thread(kube.api, *args, **kwargs)


async def eventually(
    probe: Callable[[], T | None], *, within: float = 20.0, what: str = "condition"
) -> T:
    """Run the blocking ``probe`` in a thread until it returns something truthy."""
    async with asyncio.timeout(within):
        while True:
            result = await asyncio.to_thread(probe)
            if result:
                return result
            await asyncio.sleep(0.1)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """One status condition of an object, or None."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            found: dict[str, Any] = cond
            return found
    return None


def ready_object(
    kube: KubeCluster, ns: str, name: str, *, generation: int | None = None
) -> Callable[[], dict[str, Any] | None]:
    """A probe: the object once Ready is True (at ``generation`` if given)."""

    def probe() -> dict[str, Any] | None:
        obj: dict[str, Any] = kube.api("GET", wc_path(ns, name))
        ready = condition(obj, "Ready")
        if ready is None or ready["status"] != "True":
            return None
        if generation is not None and obj["status"].get("observedGeneration") != generation:
            return None
        return obj

    return probe


@asynccontextmanager
async def running(kubeconfig: Path, tmp_path: Path, **overrides: Any) -> AsyncIterator[ClusterMode]:
    """Run cluster mode until the block ends."""
    settings = {
        "source": "kubernetes",
        "kubeconfig": str(kubeconfig),
        "bundle_root": str(tmp_path / "bundles"),
        "listen": "127.0.0.1:0",
        "retry_attempts": 3,
        "shutdown_timeout": 2.0,
        "idle_timeout": 30.0,
        **overrides,
    }
    mode = ClusterMode(load_settings(settings))
    task = asyncio.create_task(mode.run())
    try:
        async with asyncio.timeout(20):
            while not (mode.started.is_set() or task.done()):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        if task.done():
            task.result()
        yield mode
    finally:
        mode.request_stop()
        await asyncio.wait({task}, timeout=30)
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def metric(mode: ClusterMode, sample: str, **labels: str) -> float:
    """One sample of the mode's registry (0 when absent)."""
    return mode.registry.get_sample_value(sample, labels) or 0.0


def successes(mode: ClusterMode) -> float:
    """How many reconciles succeeded so far."""
    return metric(
        mode,
        "controller_runtime_reconcile_total",
        controller="windowscontainer-bundles",
        result="success",
    )


def bundle(tmp_path: Path, ns: str, name: str) -> Path:
    """Where the bundle of a resource is written."""
    return tmp_path / "bundles" / ns / name


async def test_create_update_and_delete(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """Create → bundle + Ready + finalizer; spec update → new bundle and observedGeneration;
    delete → bundle removed, finalizer gone, object gone."""
    ns = kube_namespace
    async with running(kube.admin_kubeconfig, tmp_path):
        await api(kube, "POST", wc_path(ns), windows_container("web"))
        obj = await eventually(ready_object(kube, ns, "web"), what="Ready")
        config = json.loads((bundle(tmp_path, ns, "web") / "config.json").read_bytes())
        assert config["process"]["args"] == ["cmd.exe", "/S", "/C", "echo hello"]
        assert FINALIZER in obj["metadata"]["finalizers"]
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 1
        digest = obj["status"]["digest"]
        assert len(digest) == 64
        for kind in ("SpecGenerated", "BundleWritten", "Ready"):
            assert condition(obj, kind)["status"] == "True"  # type: ignore[index]

        await api(
            kube,
            "PATCH",
            wc_path(ns, "web"),
            {"spec": {"args": ["echo changed"]}},
            content_type="application/merge-patch+json",
        )
        obj = await eventually(ready_object(kube, ns, "web", generation=2), what="generation 2")
        assert obj["status"]["digest"] != digest
        config = json.loads((bundle(tmp_path, ns, "web") / "config.json").read_bytes())
        assert config["process"]["args"][-1] == "echo changed"

        await api(kube, "DELETE", wc_path(ns, "web"))

        def gone() -> bool:
            return kube.status_of("GET", wc_path(ns, "web")) == 404

        await eventually(gone, what="the object to be deleted")
        assert not bundle(tmp_path, ns, "web").exists()


async def test_a_no_op_update_rewrites_nothing(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """A label change (same generation) neither rewrites the bundle nor the status."""
    ns = kube_namespace
    async with running(kube.admin_kubeconfig, tmp_path) as mode:
        await api(kube, "POST", wc_path(ns), windows_container("quiet"))
        obj = await eventually(ready_object(kube, ns, "quiet"))
        written = metric(mode, "winspec_bundles_written_total", result="written")
        reconciled = successes(mode)
        await api(
            kube,
            "PATCH",
            wc_path(ns, "quiet"),
            {"metadata": {"labels": {"touched": "yes"}}},
            content_type="application/merge-patch+json",
        )

        def reconciled_again() -> bool:
            return successes(mode) > reconciled

        await eventually(reconciled_again, what="a reconcile of the label change")
        after = await api(kube, "GET", wc_path(ns, "quiet"))
        assert metric(mode, "winspec_bundles_written_total", result="written") == written
        assert after["status"] == obj["status"]


async def test_a_missing_secret_then_its_creation_and_change(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """A missing Secret is a condition; creating it makes the resource Ready (no polling);
    changing its data updates the bundle's payload."""
    ns = kube_namespace
    ref = {"secretName": "db", "key": "password", "target": "db-password"}
    payload = (
        bundle(tmp_path, ns, "app")
        / "secrets"
        / secret_payload_id(SecretKeyRef(secret_name="db", key="password", target="db-password"))
    )
    async with running(kube.admin_kubeconfig, tmp_path):
        await api(kube, "POST", wc_path(ns), windows_container("app", secrets=[ref]))

        def waiting_for_secret() -> dict[str, Any] | None:
            obj = kube.api("GET", wc_path(ns, "app"))
            cond = condition(obj, "SpecGenerated")
            return cond if cond and cond["status"] == "False" else None

        cond = await eventually(waiting_for_secret, what="a SpecGenerated=False condition")
        assert cond["reason"] == "DependencyMissing"
        assert "Secret" in cond["message"]
        assert "db" in cond["message"]
        assert not payload.exists()

        await api(
            kube, "POST", f"/api/v1/namespaces/{ns}/secrets", secret("db", {"password": b"one"})
        )
        await eventually(ready_object(kube, ns, "app"), within=10, what="Ready after the Secret")
        assert payload.read_bytes() == b"one"

        await api(
            kube,
            "PUT",
            f"/api/v1/namespaces/{ns}/secrets/db",
            secret("db", {"password": b"two"}),
        )
        await eventually(lambda: payload.exists() and payload.read_bytes() == b"two", within=10)
        status = (await api(kube, "GET", wc_path(ns, "app")))["status"]
        assert "two" not in json.dumps(status)
        assert "one" not in json.dumps(status)


async def test_refused_input_is_a_condition_and_one_event(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """A cgroup rule S31 rejects: SpecGenerated=False with the rule's message, one Event, and
    no retries."""
    ns = kube_namespace
    await api(
        kube,
        "PATCH",
        f"/api/v1/nodes/{NODE}",
        {"metadata": {"annotations": {"winspec.io/lcow": "true"}}},
        content_type="application/merge-patch+json",
    )
    spec = {"image": {"os": "linux"}, "command": ["/bin/sh"], "deviceCgroupRules": ["c *:*  rwm"]}
    async with running(kube.admin_kubeconfig, tmp_path) as mode:
        await api(kube, "POST", wc_path(ns), windows_container("bad", **spec, isolation="hyperv"))

        def refused() -> dict[str, Any] | None:
            cond = condition(kube.api("GET", wc_path(ns, "bad")), "SpecGenerated")
            return cond if cond and cond["status"] == "False" else None

        cond = await eventually(refused, what="the refusal")
        assert cond["reason"] == "SpecRefused"
        assert cond["message"] == (
            "linux runtime spec devices: invalid device cgroup rule format: 'c *:*  rwm'"
        )
        await asyncio.sleep(1.0)  # time for retries, if there were any
        events = (await api(kube, "GET", f"/api/v1/namespaces/{ns}/events"))["items"]
        mine = [e for e in events if e["involvedObject"]["name"] == "bad"]
        assert len(mine) == 1
        assert mine[0]["type"] == "Warning"
        assert mine[0]["reason"] == "SpecRefused"
        assert metric(mode, "workqueue_retries_total", name="windowscontainer-bundles") == 0
        assert not bundle(tmp_path, ns, "bad").exists()


async def test_the_service_account_must_be_allowed_to_use_the_gmsa(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """A GMSACredentialSpec the service account may not use: a condition, nothing written."""
    ns = kube_namespace
    gmsa_name = f"gmsa-{ns}"
    await api(
        kube,
        "POST",
        "/apis/windows.k8s.io/v1/gmsacredentialspecs",
        {
            "apiVersion": "windows.k8s.io/v1",
            "kind": "GMSACredentialSpec",
            "metadata": {"name": gmsa_name},
            "credspec": {"CmsPlugins": ["ActiveDirectory"]},
        },
    )
    async with running(kube.admin_kubeconfig, tmp_path):
        await api(
            kube, "POST", wc_path(ns), windows_container("iis", gmsaCredentialSpecName=gmsa_name)
        )

        def denied() -> dict[str, Any] | None:
            cond = condition(kube.api("GET", wc_path(ns, "iis")), "Ready")
            return cond if cond and cond["status"] == "False" else None

        cond = await eventually(denied, what="the denial")
        assert cond["reason"] == "CredentialSpecUseDenied"
        assert f"{ns}/default" in cond["message"]
        assert "ActiveDirectory" not in cond["message"]
        assert not bundle(tmp_path, ns, "iis").exists()


async def test_watch_faults_through_the_proxy(
    kube: KubeCluster, kube_namespace: str, node: str, kube_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Dropped and silent watches are re-opened (silence by the inactivity watchdog); 5xx and
    429 answers are retried and counted; nothing created meanwhile is lost."""
    ns = kube_namespace
    kubeconfig = kube.kubeconfig(kube.admin_token, server=kube_proxy.url)
    async with running(kubeconfig, tmp_path, namespace=[ns], idle_timeout=2.0) as mode:
        await api(kube, "POST", wc_path(ns), windows_container("one"))
        await eventually(ready_object(kube, ns, "one"))

        assert kube_proxy.drop_watches() >= 1
        await api(kube, "POST", wc_path(ns), windows_container("two"))
        await eventually(ready_object(kube, ns, "two"), what="Ready after a dropped watch")

        kube_proxy.silence_watches()
        await asyncio.sleep(3.0)  # longer than the inactivity watchdog's 2 s
        kube_proxy.resume_watches()
        await api(kube, "POST", wc_path(ns), windows_container("three"))
        await eventually(ready_object(kube, ns, "three"), what="Ready after a silent watch")
        idle = metric(mode, "winspec_watch_restarts_total", source="kubernetes", reason="idle")
        assert idle >= 1

        kube_proxy.fail(503, count=1, when=lambda m, p: m == "PATCH" and p.endswith("/status"))
        kube_proxy.fail(429, count=1, retry_after=1, when=lambda m, p: m == "PATCH")
        await api(kube, "POST", wc_path(ns), windows_container("four"))
        await eventually(ready_object(kube, ns, "four"), what="Ready after 5xx and 429")
        retried = sum(
            metric(mode, "winspec_api_retries_total", api=a)
            for a in ("status_patch", "finalizer_patch")
        )
        assert retried >= 2


async def test_410_gone_relists_and_loses_nothing(
    kube: KubeCluster, kube_namespace: str, node: str, kube_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A watch re-opened from a compacted resourceVersion gets 410 Gone from the real server;
    winspec lists again and reconciles what it missed."""
    ns = kube_namespace
    kubeconfig = kube.kubeconfig(kube.admin_token, server=kube_proxy.url)
    async with running(kubeconfig, tmp_path, namespace=[ns], idle_timeout=2.0) as mode:
        await api(kube, "POST", wc_path(ns), windows_container("before"))
        await eventually(ready_object(kube, ns, "before"))
        # While the watches hear nothing, a resource is created and etcd compacted: the
        # resourceVersion winspec holds is gone, and re-opening the watch from it gets 410.
        kube_proxy.silence_watches()
        await api(kube, "POST", wc_path(ns), windows_container("missed"))
        # One more write: compacting at revision R keeps R, so a watch from R-1 would live.
        later = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "later"}}
        await api(kube, "POST", f"/api/v1/namespaces/{ns}/configmaps", later)
        await asyncio.to_thread(kube.compact_etcd)
        await asyncio.sleep(2.5)  # the inactivity watchdog gives up on the silent watch
        kube_proxy.resume_watches()
        await eventually(ready_object(kube, ns, "missed"), within=30, what="Ready after 410")
        assert (
            metric(mode, "winspec_watch_restarts_total", source="kubernetes", reason="expired") >= 1
        )
