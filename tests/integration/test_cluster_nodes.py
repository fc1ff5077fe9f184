"""Nodes are watched, against the real kube-apiserver: a resource whose Node does not exist
yet becomes Ready as soon as the Node is created, not at its next backoff retry."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.clustermode import (
    api,
    condition,
    eventually,
    ready_object,
    running,
    wc_path,
    windows_container,
)
from tests.integration.test_cluster_rbac import winspec_token  # noqa: F401 - a fixture
from tests.kube import KubeCluster

pytestmark = pytest.mark.kube


async def test_a_node_appearing_requeues_its_resources(
    kube: KubeCluster,
    kube_namespace: str,
    winspec_token: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """A resource waiting for its Node is Ready within seconds of the Node being created."""
    ns = kube_namespace
    late = f"late-{secrets.token_hex(3)}"
    kubeconfig = kube.kubeconfig(winspec_token)  # as the least-privilege account: list/watch
    async with running(kubeconfig, tmp_path, namespace=[ns]):
        await api(kube, "POST", wc_path(ns), windows_container("waits", nodeName=late))

        def missing() -> dict[str, Any] | None:
            cond = condition(kube.api("GET", wc_path(ns, "waits")), "Ready")
            return cond if cond and cond["reason"] == "DependencyMissing" else None

        await eventually(missing, what="the missing node reported")
        # Long enough for the backoff of the retries (5 ms doubling) to exceed 9 s.
        await asyncio.sleep(11.0)
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": late,
                "labels": {"node.kubernetes.io/windows-build": "10.0.17763"},
            },
        }
        await api(kube, "POST", "/api/v1/nodes", node)
        await eventually(
            ready_object(kube, ns, "waits"), within=4.0, what="Ready once the Node exists"
        )
