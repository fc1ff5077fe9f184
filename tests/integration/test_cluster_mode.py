"""Cluster mode end to end, against the real kube-apiserver: WindowsContainers in, bundles,
status, finalizers and events out. winspec runs in-process (ClusterMode) with a kubeconfig."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from controller.cluster import FINALIZER, SecretKeyRef, secret_payload_id
from tests.clustermode import (
    NODE,
    api,
    bundle,
    condition,
    eventually,
    metric,
    ready_object,
    running,
    secret,
    successes,
    wc_path,
    windows_container,
)
from tests.kube import KubeCluster
from tests.kubeproxy import FaultProxy, is_watch

pytestmark = pytest.mark.kube


async def test_create_update_and_delete(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """Create → bundle, Ready, finalizer; update → new bundle, generation; delete → all gone."""
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
    """Own writes cause no reconcile; a label change reconciles but rewrites nothing."""
    ns = kube_namespace
    async with running(kube.admin_kubeconfig, tmp_path, namespace=[ns]) as mode:
        await api(kube, "POST", wc_path(ns), windows_container("quiet"))
        obj = await eventually(ready_object(kube, ns, "quiet"))
        await asyncio.sleep(1.0)
        # winspec's own finalizer and status writes come back as watch events: not reconciled.
        assert successes(mode) == 1
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
    """Missing Secret → condition; created → Ready (no polling); changed → payload updated."""
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
    """A cgroup rule S31 rejects: the rule's message in a condition, one Event, no retries."""
    ns = kube_namespace
    await api(
        kube,
        "PATCH",
        f"/api/v1/nodes/{NODE}",
        {"metadata": {"annotations": {"winspec.io/lcow": "true"}}},
        content_type="application/merge-patch+json",
    )
    spec = {"image": {"os": "linux"}, "command": ["/bin/sh"], "deviceCgroupRules": ["c *:*  rwm"]}
    async with running(kube.admin_kubeconfig, tmp_path, namespace=[ns]) as mode:
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
    """gMSA `use` denied → condition, no bundle; granted (Role + RoleBinding) → Ready."""
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

        rbac_group = "rbac.authorization.k8s.io"
        rbac = f"/apis/{rbac_group}/v1/namespaces/{ns}"
        rule = {
            "apiGroups": ["windows.k8s.io"],
            "resources": ["gmsacredentialspecs"],
            "resourceNames": [gmsa_name],
            "verbs": ["use"],
        }
        await api(kube, "POST", f"{rbac}/roles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "use-gmsa"}, "rules": [rule],
        })  # fmt: skip
        await api(kube, "POST", f"{rbac}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "use-gmsa"},
            "roleRef": {"apiGroup": rbac_group, "kind": "Role", "name": "use-gmsa"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}],
        })  # fmt: skip
        await eventually(ready_object(kube, ns, "iis"), within=15, what="Ready after the grant")
        config = json.loads((bundle(tmp_path, ns, "iis") / "config.json").read_bytes())
        assert json.loads(config["windows"]["credentialSpec"]) == {
            "CmsPlugins": ["ActiveDirectory"]
        }


async def test_watch_faults_through_the_proxy(
    kube: KubeCluster, kube_namespace: str, node: str, kube_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Dropped and silent watches re-open, 5xx and 429 are retried and counted, nothing lost."""
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
    """410 Gone (compacted resourceVersion) → a consistent relist (no version), nothing missed."""
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
    # The first list may come from the watch cache; the relist must not go back in time.
    lists = kube_proxy.list_versions()[wc_path(ns)]
    assert len(lists) >= 2, lists
    assert lists[0] == "0", lists
    assert not any(lists[1:]), lists


async def test_a_deletion_waits_while_the_bundle_cannot_be_removed(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """The finalizer stays while the bundle cannot be removed; once it can, both go."""
    ns = kube_namespace
    async with running(kube.admin_kubeconfig, tmp_path, namespace=[ns]):
        await api(kube, "POST", wc_path(ns), windows_container("stuck"))
        await eventually(ready_object(kube, ns, "stuck"))
        namespace_dir = tmp_path / "bundles" / ns
        aside = tmp_path / "aside"
        namespace_dir.rename(aside)
        namespace_dir.write_text("not a directory: the bundle root is unusable")
        await api(kube, "DELETE", wc_path(ns, "stuck"))
        await asyncio.sleep(2.0)
        obj = await api(kube, "GET", wc_path(ns, "stuck"))
        assert obj["metadata"]["deletionTimestamp"]
        assert FINALIZER in obj["metadata"]["finalizers"]

        namespace_dir.unlink()
        aside.rename(namespace_dir)
        await eventually(
            lambda: kube.status_of("GET", wc_path(ns, "stuck")) == 404, within=30, what="gone"
        )
        assert not bundle(tmp_path, ns, "stuck").exists()


async def test_resources_created_while_down_are_all_reconciled_at_start(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """300 resources created while winspec was down are all Ready after it starts; ready."""
    ns = kube_namespace

    def create_all() -> None:
        for i in range(300):
            kube.api("POST", wc_path(ns), windows_container(f"r{i:03d}"))

    await asyncio.to_thread(create_all)
    async with running(kube.admin_kubeconfig, tmp_path, namespace=[ns], workers=8) as mode:

        def all_ready() -> bool:
            items = kube.api("GET", wc_path(ns))["items"]
            ready = [o for o in items if (condition(o, "Ready") or {}).get("status") == "True"]
            return len(ready) == 300

        await eventually(all_ready, within=90, what="300 resources Ready")
        assert mode.health.is_ready()
        # Every bundle, and nothing but the root's own .digest-key beside them.
        entries = {p.name for p in (tmp_path / "bundles" / ns).iterdir()}
        assert entries - {".digest-key"} == {f"r{i:03d}" for i in range(300)}


async def test_node_name_reconciles_only_the_resources_labelled_for_its_node(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """--node-name reconciles only its labelled resources; a contradicting label is refused."""
    ns = kube_namespace

    def labelled(name: str, label: str, **spec: Any) -> dict[str, Any]:
        obj = windows_container(name, **spec)
        obj["metadata"]["labels"] = {"winspec.io/node-name": label}
        return obj

    async with running(
        kube.admin_kubeconfig, tmp_path, namespace=[ns], node_name=NODE, leader_elect=True
    ) as mode:
        await api(kube, "POST", wc_path(ns), labelled("mine", NODE))
        await api(
            kube, "POST", wc_path(ns), labelled("theirs", "other-node", nodeName="other-node")
        )
        await api(kube, "POST", wc_path(ns), windows_container("unlabelled"))
        await api(kube, "POST", wc_path(ns), labelled("mislabelled", NODE, nodeName="other-node"))
        await eventually(ready_object(kube, ns, "mine"), what="this node's resource Ready")

        def refused() -> dict[str, Any] | None:
            cond = condition(kube.api("GET", wc_path(ns, "mislabelled")), "Ready")
            return cond if cond and cond["status"] == "False" else None

        cond = await eventually(refused, what="the mislabelled resource refused")
        assert "spec.nodeName is other-node" in cond["message"]
        for name in ("theirs", "unlabelled"):
            assert "status" not in await api(kube, "GET", wc_path(ns, name))
            assert not bundle(tmp_path, ns, name).exists()
        assert mode.health.is_ready()  # no leader condition with --node-name


async def test_a_status_conflict_is_re_read_and_retried(
    kube: KubeCluster, kube_namespace: str, node: str, kube_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A 409 on the status patch makes winspec re-read the object and write the status again."""
    ns = kube_namespace
    kubeconfig = kube.kubeconfig(kube.admin_token, server=kube_proxy.url)

    def status_patch(method: str, path_qs: str) -> bool:
        return method == "PATCH" and path_qs.split("?")[0].endswith("/conflicted/status")

    kube_proxy.fail(409, count=1, when=status_patch)
    async with running(kubeconfig, tmp_path, namespace=[ns]) as mode:
        await api(kube, "POST", wc_path(ns), windows_container("conflicted"))
        await eventually(ready_object(kube, ns, "conflicted"), what="Ready after a 409")
        reread = kube_proxy.count(
            lambda e: e.method == "GET" and e.path_qs.split("?")[0] == wc_path(ns, "conflicted")
        )
        assert reread >= 1
        assert kube_proxy.count(lambda e: e.injected) == 1
        assert metric(mode, "controller_runtime_reconcile_errors_total",
                      controller="windowscontainer-bundles") == 0  # fmt: skip


def _damage(directory: Path) -> None:
    """Drift of every kind under an intact .digest: config.json edited, links.json deleted, a
    stray file added."""
    edited = (directory / "config.json").read_bytes().replace(b"{", b'{"edited": 1, ', 1)
    (directory / "edit.tmp").write_bytes(edited)
    (directory / "edit.tmp").rename(directory / "config.json")
    (directory / "links.json").unlink()
    (directory / "stray.json").write_bytes(b"{}")


async def test_drift_of_a_local_bundle_is_repaired_with_a_warning_event(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """A local bundle damaged while winspec was down is repaired at start-up, with an Event."""
    ns = kube_namespace
    async with running(kube.admin_kubeconfig, tmp_path, namespace=[ns]):
        await api(kube, "POST", wc_path(ns), windows_container("drift"))
        await eventually(ready_object(kube, ns, "drift"), what="Ready")
    directory = bundle(tmp_path, ns, "drift")
    intact = {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*")}
    _damage(directory)

    def drift_events() -> list[dict[str, Any]]:
        events = kube.api("GET", f"/api/v1/namespaces/{ns}/events")["items"]
        return [e for e in events if e["reason"] == "BundleDriftRepaired"]

    async with running(kube.admin_kubeconfig, tmp_path, namespace=[ns]) as m:
        kinds = ("modified", "missing", "extra")

        def counted(times: int) -> bool:
            return all(metric(m, "winspec_bundle_drift_total", kind=k) == times for k in kinds)

        await eventually(lambda: counted(1), what="the drift at start-up to be counted")
        current = {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*")}
        assert current == intact
        await eventually(lambda: len(drift_events()) == 1, what="an Event")
        (event,) = drift_events()
        assert event["type"] == "Warning"
        assert event["involvedObject"]["name"] == "drift"
        assert event["message"] == "bundle rewritten: drift repaired (extra, missing, modified)"


async def test_drift_of_a_local_bundle_is_repaired_by_a_relist(
    kube: KubeCluster, kube_namespace: str, node: str, kube_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A local bundle damaged while winspec runs is repaired by the next relist (after 410)."""
    ns = kube_namespace
    kubeconfig = kube.kubeconfig(kube.admin_token, server=kube_proxy.url)
    async with running(kubeconfig, tmp_path, namespace=[ns]) as mode:
        await api(kube, "POST", wc_path(ns), windows_container("relisted"))
        await eventually(ready_object(kube, ns, "relisted"), what="Ready")
        directory = bundle(tmp_path, ns, "relisted")
        intact = {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*")}
        _damage(directory)
        kube_proxy.fail(410, count=1, when=lambda m, p: is_watch(m, p) and "windowscontainers" in p)
        assert kube_proxy.drop_watches() >= 1

        def counted() -> bool:
            kinds = ("modified", "missing", "extra")
            return all(metric(mode, "winspec_bundle_drift_total", kind=k) == 1 for k in kinds)

        await eventually(counted, within=30, what="the drift to be repaired by the relist")
        current = {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*")}
        assert current == intact
        assert (
            metric(mode, "winspec_watch_restarts_total", source="kubernetes", reason="expired") >= 1
        )
