"""A written bundle's payload mounts point into that bundle, on the "node" that holds it, for
every delivery shape: one instance per node (``--node-name``), one controller writing its own
``--bundle-root``, and central delivery to the node's agent over real HTTPS (tokens checked by
the real kube-apiserver).

The resource is docs/cluster-mode.md's example WindowsContainer as written, but in the test's own
namespace (the session's API server is shared), with the Secret, ConfigMap and
GMSACredentialSpec it names created and its service account allowed to ``use`` the latter.

How a mount source maps to the disk: it is ``<root>\\<namespace>\\<name>\\secrets`` (or
``configs``) joined with the root's own separator, where ``<root>`` is the bundle root as the
node names it: the local ``--bundle-root``, or what the agent reports at ``GET /v1/node``. On
this Linux host the roots are POSIX paths, so the check maps each source back through the
known root (its path below the root, joined onto the directory on disk) and requires the
payload each link names to be a file of the bundle that was written there.
"""

from __future__ import annotations

import json
import re
import secrets
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any

import pytest
import yaml
from aiohttp import web

from adapters.agentapi.client import AgentClient
from controller.cluster import NODE_LABEL
from controller.generate import INTERNAL_CONFIGS_DIR, INTERNAL_SECRETS_DIR
from controller.winpath import looks_windows
from tests.agent import TLSFiles
from tests.clustermode import (
    NODE,
    api,
    eventually,
    ready_object,
    running,
    wc_path,
    windows_container,
)
from tests.integration.test_remote_delivery import (
    Delivery,
    _agent_pod,
    _node,
    _not_ready,
    make_delivery,
)
from tests.kube import KubeAPIError, KubeCluster
from tests.processes import free_port
from tests.readme_commands import CLUSTER_MODE

pytestmark = pytest.mark.kube

SECRET_BYTES = b"s3cr3t-password"
CONFIG_TEXT = '{"Logging": {"LogLevel": "Information"}}'
_YAML_FENCE = re.compile(r"^```yaml\n(.*?)^```", re.DOTALL | re.MULTILINE)
_PAYLOAD_DIRS = {INTERNAL_SECRETS_DIR: "secrets", INTERNAL_CONFIGS_DIR: "configs"}


def readme_example() -> dict[str, Any]:
    """The WindowsContainer of docs/cluster-mode.md's "The resource" section, as written there."""
    for body in _YAML_FENCE.findall(CLUSTER_MODE.read_text(encoding="utf-8")):
        doc = yaml.safe_load(body)
        if isinstance(doc, dict) and doc.get("kind") == "WindowsContainer":
            return doc
    raise AssertionError("docs/cluster-mode.md shows no WindowsContainer")


def _create_dependencies(kube: KubeCluster, ns: str, example: dict[str, Any]) -> None:
    """The Secret, ConfigMap and GMSACredentialSpec the example names, and the grant to use it."""
    spec = example["spec"]
    (secret_ref,) = spec["secrets"]
    (config_ref,) = spec["configs"]
    kube.apply({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": secret_ref["secretName"], "namespace": ns},
        "stringData": {secret_ref["key"]: SECRET_BYTES.decode()},
    })  # fmt: skip
    kube.apply({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": config_ref["configMapName"], "namespace": ns},
        "data": {config_ref["key"]: CONFIG_TEXT},
    })  # fmt: skip
    gmsa = spec["gmsaCredentialSpecName"]
    try:  # cluster-scoped: shared by the tests of the session
        kube.api("POST", "/apis/windows.k8s.io/v1/gmsacredentialspecs", {
            "apiVersion": "windows.k8s.io/v1", "kind": "GMSACredentialSpec",
            "metadata": {"name": gmsa}, "credspec": {"CmsPlugins": ["ActiveDirectory"]},
        })  # fmt: skip
    except KubeAPIError as exc:
        if exc.status != 409:
            raise
    rbac = "rbac.authorization.k8s.io/v1"
    kube.apply({
        "apiVersion": rbac, "kind": "Role", "metadata": {"name": "use-gmsa", "namespace": ns},
        "rules": [{"apiGroups": ["windows.k8s.io"], "resources": ["gmsacredentialspecs"],
                   "resourceNames": [gmsa], "verbs": ["use"]}],
    })  # fmt: skip
    kube.apply({
        "apiVersion": rbac, "kind": "RoleBinding",
        "metadata": {"name": "use-gmsa", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "use-gmsa"},
        "subjects": [{"kind": "ServiceAccount", "name": spec["serviceAccountName"],
                      "namespace": ns}],
    })  # fmt: skip


def _example_in(kube: KubeCluster, ns: str, *, node_label: bool = False) -> dict[str, Any]:
    """The documented example, placed in ``ns`` (labelled for its node when ``node_label``), with
    everything it refers to; it names the test node."""
    example = readme_example()
    assert example["spec"]["nodeName"] == NODE
    example["metadata"]["namespace"] = ns
    if node_label:
        # Node-local: the creator labels the resource with its node (docs/cluster-mode.md).
        example["metadata"]["labels"] = {NODE_LABEL: example["spec"]["nodeName"]}
    _create_dependencies(kube, ns, example)
    return example


def _on_disk(source: str, root: str, disk_root: Path) -> Path:
    """The directory a mount source names, mapped through the node's ``root`` onto
    ``disk_root`` (where that root is on this host); fails when it is not below the root."""
    flavour: type[PurePath] = PureWindowsPath if looks_windows(root) else PurePosixPath
    try:
        below = flavour(source).relative_to(flavour(root))
    except ValueError:
        raise AssertionError(f"mount source {source} is not below the bundle root {root}") from None
    return disk_root.joinpath(*below.parts)


def assert_payload_mounts_point_into(bundle: Path, root: str, disk_root: Path) -> None:
    """Every payload mount of the bundle's config.json names a directory of that bundle
    holding each payload a link points at, read back through ``root``."""
    config = json.loads((bundle / "config.json").read_bytes())
    links = json.loads((bundle / "links.json").read_bytes())["links"]
    sources = {m["destination"]: m["source"] for m in config["mounts"]}
    assert set(_PAYLOAD_DIRS) <= set(sources), config["mounts"]
    assert {link["kind"] for link in links} == {"secret", "config"}
    for link in links:
        directory, _, payload = link["source"].rpartition("\\")
        mounted = _on_disk(sources[directory], root, disk_root)
        assert mounted == bundle / _PAYLOAD_DIRS[directory], sources[directory]
        assert (mounted / payload).is_file(), link
    secret_files = list((bundle / "secrets").iterdir())
    assert [f.read_bytes() for f in secret_files] == [SECRET_BYTES]


async def test_node_local_bundle_mounts_point_into_the_bundle(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """--node-name: the documented example's payload mounts name its bundle under --bundle-root."""
    ns = kube_namespace
    example = await api(kube, "POST", wc_path(ns), _example_in(kube, ns, node_label=True))
    name = example["metadata"]["name"]
    async with running(kube.admin_kubeconfig, tmp_path, namespace=[ns], node_name=node):
        await eventually(ready_object(kube, ns, name), within=60, what="Ready")
    root = tmp_path / "bundles"
    assert_payload_mounts_point_into(root / ns / name, str(root), root)


async def test_local_delivery_bundle_mounts_point_into_the_bundle(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """One controller writing locally: the payload mounts name the bundle under its root."""
    ns = kube_namespace
    example = await api(kube, "POST", wc_path(ns), _example_in(kube, ns))
    name = example["metadata"]["name"]
    async with running(kube.admin_kubeconfig, tmp_path, namespace=[ns]):
        await eventually(ready_object(kube, ns, name), within=60, what="Ready")
    root = tmp_path / "bundles"
    assert_payload_mounts_point_into(root / ns / name, str(root), root)


@pytest.fixture(scope="module")
def delivery(kube: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Delivery:
    """The agents' namespace, accounts, TLS files and the controller's audience-bound token."""
    return make_delivery(kube, f"paths-{secrets.token_hex(4)}", tmp_path_factory.mktemp("paths"))


@pytest.mark.timeout(120)
async def test_agent_delivery_bundle_mounts_point_into_the_agents_bundle(
    kube: KubeCluster, kube_namespace: str, node: str, delivery: Delivery, tmp_path: Path
) -> None:
    """--delivery agent: the payload mounts name the bundle below the root the agent reports."""
    ns = kube_namespace
    agent_root = tmp_path / "node" / "bundles"
    agent_root.parent.mkdir()
    agent = delivery.agent(agent_root)
    agent.start()
    try:
        _agent_pod(delivery, node, agent.port)
        example = await api(kube, "POST", wc_path(ns), _example_in(kube, ns))
        name = example["metadata"]["name"]
        # The shipped defaults find the agent: --agent-selector and the port it declares.
        async with delivery.central(tmp_path, [ns]):
            await eventually(ready_object(kube, ns, name), within=60, what="Ready")
        assert_payload_mounts_point_into(agent_root / ns / name, str(agent_root), agent_root)
        # That root is the one the agent reports: its --bundle-root, absolute.
        client = AgentClient(
            agent.url, token=lambda: delivery.token, ssl_context=delivery.tls.client_context()
        )
        try:
            assert (await client.node_info()).bundle_root == str(agent_root)
        finally:
            await client.close()
        # Nothing was written on the controller's side.
        assert not (tmp_path / "bundles" / ns).exists()
    finally:
        agent.stop()
        await api(kube, "DELETE", f"/api/v1/namespaces/{delivery.namespace}/pods/agent-{node}")


@asynccontextmanager
async def _posing_agent(tls: TLSFiles, answer: bytes) -> AsyncIterator[tuple[int, list[str]]]:
    """An HTTPS server with the agents' certificate answering ``GET /v1/node`` with ``answer``
    (its port, and every request it got as ``METHOD path``)."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        if (request.method, request.path) == ("GET", "/v1/node"):
            return web.Response(body=answer, content_type="application/json")
        return web.Response(status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls.cert), str(tls.key))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        yield port, seen
    finally:
        await runner.cleanup()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "answer",
    [
        b'{"bundleRoot": "bundles"}',
        b'{"bundleRoot": "C:\\\\bundles\\u0007"}',
        b'{"root": "C:\\\\bundles"}',
        b"not json",
    ],
    ids=["relative", "control-character", "no-root", "not-json"],
)
async def test_an_unusable_reported_root_is_a_retried_error_and_sends_nothing(
    kube: KubeCluster,
    kube_namespace: str,
    delivery: Delivery,
    tmp_path: Path,
    answer: bytes,
) -> None:
    """An agent reporting a relative, unprintable or no root: not Ready, naming it; no PUT."""
    ns = kube_namespace
    node = f"win-{secrets.token_hex(3)}"
    _node(kube, node)
    async with _posing_agent(delivery.tls, answer) as (port, seen):
        _agent_pod(delivery, node, port)
        try:
            await api(kube, "POST", wc_path(ns), windows_container("hostile", nodeName=node))
            async with delivery.central(tmp_path, [ns], agent_timeout=3.0) as mode:
                ready = await eventually(_not_ready(kube, ns, "hostile"), within=30)
                assert ready["reason"] == "TransientError"
                assert node in ready["message"]
                assert "bundle root" in ready["message"]
                assert mode.health.is_ready()  # still serving
            assert seen
            assert set(seen) == {"GET /v1/node"}
        finally:
            await api(kube, "DELETE", f"/api/v1/namespaces/{delivery.namespace}/pods/agent-{node}")
