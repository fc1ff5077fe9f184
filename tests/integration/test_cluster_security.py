"""Cluster mode against the real kube-apiserver: a namespace's Pod Security label applies to
WindowsContainers as it does to Windows Pods, and a payload the cluster revoked (its Secret,
ConfigMap, key or GMSACredentialSpec deleted) leaves the bundle after the grace period.

The server (v1.20.2) has no Pod Security admission of its own: the labels are plain labels
here, and winspec alone enforces them on WindowsContainers.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.clustermode import (
    NODE,
    api,
    bundle,
    condition,
    eventually,
    gmsa_credential_spec,
    grant_gmsa_use,
    ready_object,
    running,
    secret,
    wc_path,
    windows_container,
)
from tests.integration.test_remote_delivery import Delivery, Node, delivery, nodes  # noqa: F401
from tests.kube import KubeCluster

pytestmark = pytest.mark.kube

ENFORCE = "pod-security.kubernetes.io/enforce"
GRACE = 2.0

#: Host access a WindowsContainer could ask for, each refused from baseline on, and the
#: control the refusal names.
HOST_ACCESS: dict[str, tuple[dict[str, Any], str]] = {
    "privileged": ({"privileged": True}, "privileged (spec.privileged=true)"),
    "root-rw": (
        {"mounts": [{"source": "C:\\", "destination": "C:\\host"}]},
        "hostPath volumes (spec.mounts[0])",
    ),
    "engine-pipe": (
        {"mounts": [{"source": "\\\\.\\pipe\\docker_engine",
                     "destination": "\\\\.\\pipe\\docker_engine"}]},
        "hostPath volumes (spec.mounts[0])",
    ),
    "device": (
        {"devices": [{"pathOnHost": "class/5B45201D-F2F2-4F3B-85BB-30FF1F953599"}]},
        "host devices (spec.devices[0])",
    ),
}  # fmt: skip


async def label(kube: KubeCluster, ns: str, level: str | None) -> None:
    """Set (or, with None, remove) the namespace's Pod Security enforce label."""
    await api(
        kube,
        "PATCH",
        f"/api/v1/namespaces/{ns}",
        {"metadata": {"labels": {ENFORCE: level}}},
        content_type="application/merge-patch+json",
    )


def refused(kube: KubeCluster, ns: str, name: str, reason: str) -> Any:
    """A probe: the object's SpecGenerated condition once it is False for ``reason``."""

    def probe() -> dict[str, Any] | None:
        cond = condition(kube.api("GET", wc_path(ns, name)), "SpecGenerated")
        return cond if cond and cond["status"] == "False" and cond["reason"] == reason else None

    return probe


def events_of(kube: KubeCluster, ns: str, name: str) -> list[dict[str, Any]]:
    """The Events recorded about one resource."""
    items = kube.api("GET", f"/api/v1/namespaces/{ns}/events")["items"]
    return [e for e in items if e["involvedObject"]["name"] == name]


async def test_a_baseline_namespace_refuses_host_access(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """Baseline refuses privileged, a bind of C:\\, the engine pipe, a device; plain is Ready."""
    ns = kube_namespace
    await label(kube, ns, "baseline")
    async with running(kube.admin_kubeconfig, tmp_path):
        for name, (fields, _) in HOST_ACCESS.items():
            await api(kube, "POST", wc_path(ns), windows_container(name, **fields))
        await api(kube, "POST", wc_path(ns), windows_container("plain"))
        await eventually(ready_object(kube, ns, "plain"), what="the plain one Ready")
        for name, (_, rule) in HOST_ACCESS.items():
            cond = await eventually(
                refused(kube, ns, name, "PodSecurityViolation"), what=f"{name} refused"
            )
            assert cond["message"].startswith(
                f'violates PodSecurity "baseline:latest" (namespace {ns}'
            )
            assert rule in cond["message"]
            assert not bundle(tmp_path, ns, name).exists()
            warnings = await eventually(lambda n=name: events_of(kube, ns, n), what="an Event")
            assert [e["reason"] for e in warnings] == ["PodSecurityViolation"]
        assert (bundle(tmp_path, ns, "plain") / "config.json").is_file()


async def test_the_namespace_label_applies_as_it_changes(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """Unlabelled: privileged allowed; labelled restricted: bundle withdrawn; label gone: back."""
    ns = kube_namespace
    async with running(kube.admin_kubeconfig, tmp_path):
        await api(kube, "POST", wc_path(ns), windows_container("admin", privileged=True))
        await eventually(ready_object(kube, ns, "admin"), what="Ready without a label")
        assert (bundle(tmp_path, ns, "admin") / "config.json").is_file()

        await label(kube, ns, "restricted")
        cond = await eventually(refused(kube, ns, "admin", "PodSecurityViolation"))
        assert 'violates PodSecurity "restricted:latest"' in cond["message"]
        assert "privileged (spec.privileged=true)" in cond["message"]
        assert "runAsNonRoot != true" in cond["message"]
        assert not bundle(tmp_path, ns, "admin").exists()

        await label(kube, ns, None)
        await eventually(ready_object(kube, ns, "admin"), what="Ready once the label is gone")
        assert (bundle(tmp_path, ns, "admin") / "config.json").is_file()


async def test_the_default_level_applies_to_unlabelled_namespaces(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """pod_security_default applies to an unlabelled namespace; a namespace's own label wins."""
    ns = kube_namespace
    async with running(kube.admin_kubeconfig, tmp_path, pod_security_default="baseline"):
        await api(kube, "POST", wc_path(ns), windows_container("admin", privileged=True))
        cond = await eventually(refused(kube, ns, "admin", "PodSecurityViolation"))
        assert 'violates PodSecurity "baseline:latest"' in cond["message"]
        await label(kube, ns, "privileged")
        await eventually(ready_object(kube, ns, "admin"), what="Ready once labelled privileged")


# -- deleted dependencies ---------------------------------------------------------------------


class BundleSamples:
    """Samples a bundle directory from a thread, as fast as it can, until stopped: each sample
    is ``absent``, ``whole`` (config.json and links.json parse, and every payload the links
    point at is there, with the bytes seen) or ``torn``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples: list[tuple[float, str, frozenset[bytes]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[str, frozenset[bytes]]:
        try:
            names = set(os.listdir(self.path))
            json.loads((self.path / "config.json").read_bytes())
            links = json.loads((self.path / "links.json").read_bytes())["links"]
            payloads: set[bytes] = set()
            for link in links:
                kind = "secrets" if link["kind"] == "secret" else "configs"
                payload = self.path / kind / link["source"].rpartition("\\")[2]
                payloads.add(payload.read_bytes())
        except FileNotFoundError:
            return ("absent" if not self.path.exists() else "torn"), frozenset()
        except (ValueError, KeyError, OSError):
            return "torn", frozenset()
        return ("whole" if {"config.json", "links.json"} <= names else "torn"), frozenset(payloads)

    def _run(self) -> None:
        while not self._stop.is_set():
            state, payloads = self._sample()
            self.samples.append((time.monotonic(), state, payloads))
            time.sleep(0.002)

    @contextmanager
    def running(self) -> Iterator[BundleSamples]:
        """Sample while the block runs."""
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()

    def first(self, state: str) -> float | None:
        """When ``state`` was first seen."""
        return next((t for t, s, _ in self.samples if s == state), None)


#: How a dependency is revoked, per kind: the resource's spec, what it needs, how to revoke it.
REVOKE: dict[str, dict[str, Any]] = {
    "secret-deleted": {
        "spec": {"secrets": [{"secretName": "db", "key": "pw", "target": "pw"}]},
        "create": ("secrets", secret("db", {"pw": b"s3cret"})),
        "revoke": ("DELETE", "secrets/db", None),
        "message": "Secret {ns}/db not found",
    },
    "secret-key-removed": {
        "spec": {"secrets": [{"secretName": "db", "key": "pw", "target": "pw"}]},
        "create": ("secrets", secret("db", {"pw": b"s3cret"})),
        "revoke": ("PUT", "secrets/db", secret("db", {"other": b"x"})),
        "message": "Secret {ns}/db has no key pw",
    },
    "configmap-deleted": {
        "spec": {"configs": [{"configMapName": "cfg", "key": "k", "target": "C:\\k"}]},
        "create": ("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": {"name": "cfg"}, "data": {"k": "s3cret"}}),
        "revoke": ("DELETE", "configmaps/cfg", None),
        "message": "ConfigMap {ns}/cfg not found",
    },
}  # fmt: skip


async def _revoked_withdrawn(
    kube: KubeCluster, ns: str, case: dict[str, Any], where: Path, *, node: str = NODE
) -> None:
    """Create the dependency and the resource (on ``node``), wait for its bundle at ``where``;
    revoke the dependency and check that the bundle stays whole for the grace period, then
    goes, never torn."""
    plural, body = case["create"]
    await api(kube, "POST", f"/api/v1/namespaces/{ns}/{plural}", body)
    await api(kube, "POST", wc_path(ns), windows_container("app", nodeName=node, **case["spec"]))
    await eventually(ready_object(kube, ns, "app"), within=30, what="Ready")
    assert (where / "config.json").is_file()
    with BundleSamples(where).running() as samples:
        method, path, replacement = case["revoke"]
        revoked = time.monotonic()
        await api(kube, method, f"/api/v1/namespaces/{ns}/{path}", replacement)
        cond = await eventually(
            refused(kube, ns, "app", "DependencyMissing"), within=GRACE + 15, what="the miss"
        )
        assert case["message"].format(ns=ns) in cond["message"]
        await eventually(lambda: not where.exists(), within=GRACE + 15, what="the withdrawal")
        await eventually(
            lambda: (
                "withdrawn until it is back"
                in (condition(kube.api("GET", wc_path(ns, "app")), "Ready") or {}).get(
                    "message", ""
                )
            ),
            what="the withdrawal reported",
        )
    states = [s for _, s, _ in samples.samples]
    assert "torn" not in states
    gone = samples.first("absent")
    assert gone is not None
    assert gone - revoked >= GRACE  # kept whole for the grace period
    assert "whole" not in states[states.index("absent") :]  # and gone for good
    cond = condition(kube.api("GET", wc_path(ns, "app")), "Ready")
    assert cond is not None
    assert "s3cret" not in json.dumps(cond)


@pytest.mark.parametrize("kind", sorted(REVOKE))
async def test_a_revoked_payload_is_withdrawn_after_the_grace_period(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path, kind: str
) -> None:
    """Secret/ConfigMap or key revoked: bundle whole for the grace period, then gone, never torn."""
    async with running(kube.admin_kubeconfig, tmp_path, dependency_grace_period=GRACE):
        await _revoked_withdrawn(
            kube, kube_namespace, REVOKE[kind], bundle(tmp_path, kube_namespace, "app")
        )


async def test_a_revoked_payload_leaves_the_node_agent_too(
    kube: KubeCluster, kube_namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """--delivery agent: a deleted Secret's bundle leaves the agent after the grace, never torn."""
    d: Delivery = request.getfixturevalue("delivery")
    agents: list[Node] = request.getfixturevalue("nodes")
    ns = kube_namespace
    where = agents[0].agent.root / ns / "app"
    async with d.central(tmp_path, [ns], agent_timeout=5.0, dependency_grace_period=GRACE):
        await _revoked_withdrawn(kube, ns, REVOKE["secret-deleted"], where, node=agents[0].name)
    assert not (tmp_path / "bundles" / ns).exists()  # nothing written locally


async def test_a_deleted_credential_spec_is_withdrawn(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """A GMSACredentialSpec deleted: the bundle carrying it goes after the grace period."""
    ns = kube_namespace
    gmsa = f"gone-{ns}"
    await api(
        kube, "POST", "/apis/windows.k8s.io/v1/gmsacredentialspecs", gmsa_credential_spec(gmsa)
    )
    await asyncio.to_thread(grant_gmsa_use, kube, ns, gmsa)
    where = bundle(tmp_path, ns, "gmsa")
    async with running(kube.admin_kubeconfig, tmp_path, dependency_grace_period=GRACE):
        await api(kube, "POST", wc_path(ns), windows_container("gmsa", gmsaCredentialSpecName=gmsa))
        await eventually(ready_object(kube, ns, "gmsa"), within=30, what="Ready")
        assert "ActiveDirectory" in (where / "config.json").read_text()
        revoked = time.monotonic()
        await api(kube, "DELETE", f"/apis/windows.k8s.io/v1/gmsacredentialspecs/{gmsa}")
        await eventually(lambda: not where.exists(), within=GRACE + 15, what="the withdrawal")
        assert time.monotonic() - revoked >= GRACE
        cond = await eventually(refused(kube, ns, "gmsa", "DependencyMissing"))
        assert f"GMSACredentialSpec {gmsa} not found" in cond["message"]


async def test_a_rotation_within_the_grace_period_does_not_flap(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """A Secret deleted and recreated within the grace period: bundle never absent, new value."""
    ns = kube_namespace
    where = bundle(tmp_path, ns, "app")
    async with running(kube.admin_kubeconfig, tmp_path, dependency_grace_period=10.0):
        await api(kube, "POST", f"/api/v1/namespaces/{ns}/secrets", secret("db", {"pw": b"one"}))
        ref = {"secretName": "db", "key": "pw", "target": "pw"}
        await api(kube, "POST", wc_path(ns), windows_container("app", secrets=[ref]))
        await eventually(ready_object(kube, ns, "app"), within=30, what="Ready")
        with BundleSamples(where).running() as samples:
            await api(kube, "DELETE", f"/api/v1/namespaces/{ns}/secrets/db")
            await eventually(refused(kube, ns, "app", "DependencyMissing"), what="the miss")
            await api(
                kube, "POST", f"/api/v1/namespaces/{ns}/secrets", secret("db", {"pw": b"two"})
            )
            await eventually(
                lambda: any(b"two" in p for _, _, p in samples.samples[-3:]), what="the new value"
            )
        await eventually(ready_object(kube, ns, "app"), what="Ready again")
    assert {s for _, s, _ in samples.samples} == {"whole"}
