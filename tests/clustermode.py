"""Helpers for cluster-mode integration tests: objects, waiting, and winspec running
in-process (ClusterMode) against the real kube-apiserver of tests/kube.py."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from adapters.kubernetes.mode import ClusterMode
from controller.settings import load_settings
from tests.kube import KubeAPIError, KubeCluster
from tests.support import waiting

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


def gmsa_credential_spec(name: str) -> dict[str, Any]:
    """A GMSACredentialSpec whose credspec is ``{"CmsPlugins": ["ActiveDirectory"]}``."""
    return {
        "apiVersion": "windows.k8s.io/v1",
        "kind": "GMSACredentialSpec",
        "metadata": {"name": name},
        "credspec": {"CmsPlugins": ["ActiveDirectory"]},
    }


def grant_gmsa_use(kube: KubeCluster, ns: str, gmsa: str, *, name: str = "use-gmsa") -> None:
    """Let ``ns``'s default ServiceAccount ``use`` GMSACredentialSpec ``gmsa`` (a Role and a
    RoleBinding called ``name``)."""
    group = "rbac.authorization.k8s.io"
    rbac = f"/apis/{group}/v1/namespaces/{ns}"
    kube.api("POST", f"{rbac}/roles", {
        "apiVersion": f"{group}/v1", "kind": "Role", "metadata": {"name": name},
        "rules": [{"apiGroups": ["windows.k8s.io"], "resources": ["gmsacredentialspecs"],
                   "resourceNames": [gmsa], "verbs": ["use"]}],
    })  # fmt: skip
    kube.api("POST", f"{rbac}/rolebindings", {
        "apiVersion": f"{group}/v1", "kind": "RoleBinding", "metadata": {"name": name},
        "roleRef": {"apiGroup": group, "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}],
    })  # fmt: skip


def ensure_node(kube: KubeCluster) -> str:
    """Create (once) the Windows Node object (build 17763, 4 CPUs) resources are scheduled to."""
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
    """:func:`tests.support.waiting.eventually` for probes of the API server: the blocking
    ``probe`` runs in a thread, every 0.1 s at most."""
    return await waiting.eventually(probe, within=within, interval=0.1, what=what, in_thread=True)


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
async def running(
    kubeconfig: Path | None, tmp_path: Path, **overrides: Any
) -> AsyncIterator[ClusterMode]:
    """Run cluster mode until the block ends (``kubeconfig`` None: in-cluster)."""
    settings = {
        "source": "kubernetes",
        "kubeconfig": None if kubeconfig is None else str(kubeconfig),
        "bundle_root": str(tmp_path / "bundles"),
        "listen": "127.0.0.1:0",
        "retry_attempts": 3,
        "shutdown_timeout": 2.0,
        "idle_timeout": 30.0,
        "leader_elect": False,
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


def server_requests(kube: KubeCluster, *, verb: str, resource: str, subresource: str = "") -> int:
    """How many requests the API server itself counted (``apiserver_request_total``) of one
    verb on one resource (and subresource), whatever their answer."""
    text = kube.api("GET", "/metrics")
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "apiserver_request"
            for sample in family.samples
            if sample.name == "apiserver_request_total"
            and sample.labels.get("verb") == verb
            and sample.labels.get("resource") == resource
            and sample.labels.get("subresource", "") == subresource
        )
    )


async def settled(mode: ClusterMode, *, within: float = 30.0) -> None:
    """Wait until the mode's queue is empty and no worker is busy (seen three times running)."""
    name = "windowscontainer-bundles"
    quiet = 0
    async with asyncio.timeout(within):
        while quiet < 3:
            idle = (
                metric(mode, "workqueue_depth", name=name) == 0
                and metric(mode, "controller_runtime_active_workers", controller=name) == 0
            )
            quiet = quiet + 1 if idle else 0
            await asyncio.sleep(0.1)
