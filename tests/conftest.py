"""Shared pytest fixtures."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import pytest

from tests import ocireference
from tests.clustermode import ensure_node
from tests.dockerd import DockerAPIError, DockerDaemon, DockerdError, dockerd_unavailable_reason
from tests.images import Built, build_controller_image
from tests.kube import KubeAPIError, KubeCluster, KubeError, kube_unavailable_reason
from tests.kubeproxy import FaultProxy
from tests.node import KubeNode, NodeError, host_ip, node_unavailable_reason
from tests.schema import SKIP_REASON, schema_available


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def pytest_sessionstart(session: pytest.Session) -> None:
    """On CI the OCI schema and Go types must be there: their checks skip locally, never on CI."""
    if not _on_ci():
        return
    if not schema_available():
        raise pytest.UsageError(f"CI=true but {SKIP_REASON}")
    reason = ocireference.unavailable_reason()
    if reason is not None:
        raise pytest.UsageError(f"CI=true but the OCI Go check is unavailable: {reason}")


def _dockerd_unavailable(reason: str) -> NoReturn:
    """Skip, or on CI (``CI=true``) fail: CI must really run the dockerd tests."""
    if _on_ci():
        pytest.fail(f"dockerd is required when CI=true but unavailable: {reason}", pytrace=False)
    pytest.skip(f"dockerd unavailable: {reason}")


def _start_dockerd(
    *, storage_drivers: tuple[str, ...] = ("vfs",), swarm: bool = True
) -> DockerDaemon:
    """A started private dockerd, on the first storage driver that works; with ``swarm``, an
    active single-node swarm and the test image."""
    reason = dockerd_unavailable_reason(probe=False)
    if reason is not None:
        _dockerd_unavailable(reason)
    failures = []
    for driver in storage_drivers:
        daemon = DockerDaemon(storage_driver=driver)
        try:
            daemon.start()
            if swarm:
                daemon.init_swarm()
                daemon.import_image()
        except (DockerdError, DockerAPIError, OSError, TimeoutError) as exc:
            daemon.stop()
            failures.append(f"{driver}: {exc}")
        else:
            return daemon
    _dockerd_unavailable("; ".join(failures))


@pytest.fixture(scope="session")
def dockerd() -> Iterator[DockerDaemon]:
    """One private dockerd for the whole session (swarm active, ``winspec-test:latest`` imported).

    Shared: tests must not stop or restart it (use ``fresh_dockerd``) and should give their
    objects unique names.
    """
    daemon = _start_dockerd()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def fresh_dockerd() -> Iterator[DockerDaemon]:
    """A private dockerd for one test (swarm active, test image imported) to restart or stop."""
    daemon = _start_dockerd()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def build_dockerd() -> Iterator[DockerDaemon]:
    """A private dockerd for image builds (no swarm): overlay2 where it works, since vfs copies
    the whole image for every build step and container (minutes instead of seconds)."""
    daemon = _start_dockerd(storage_drivers=("overlay2", "vfs"), swarm=False)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def controller_image(
    build_dockerd: DockerDaemon, tmp_path_factory: pytest.TempPathFactory
) -> Built:
    """The controller image, built once per session by the README's commands (tests/images.py)."""
    return build_controller_image(build_dockerd, tmp_path_factory.mktemp("image"))


# -- cluster mode: a real kube-apiserver -----------------------------------------------------


def _kube_unavailable(reason: str) -> NoReturn:
    """Skip, or on CI (``CI=true``) fail: CI must really run the cluster tests."""
    if _on_ci():
        pytest.fail(
            f"kube-apiserver is required when CI=true but unavailable: {reason}", pytrace=False
        )
    pytest.skip(f"kube-apiserver unavailable: {reason}")


def _start_kube(
    *, with_controller_manager: bool, watch_cache: bool = False, gmsa_crd: bool = True
) -> KubeCluster:
    """A started etcd + kube-apiserver with the project's CRD and (unless ``gmsa_crd`` is
    false) the GMSACredentialSpec CRD."""
    reason = kube_unavailable_reason(controller_manager=with_controller_manager)
    if reason is not None:
        _kube_unavailable(reason)
    cluster = KubeCluster(with_controller_manager=with_controller_manager, watch_cache=watch_cache)
    try:
        cluster.start()
        cluster.apply_crd()
        if gmsa_crd:
            cluster.apply_gmsa_crd()
    except (KubeError, KubeAPIError, OSError, TimeoutError, subprocess.CalledProcessError) as exc:
        cluster.stop()
        _kube_unavailable(str(exc))
    return cluster


@pytest.fixture(scope="session")
def kube() -> Iterator[KubeCluster]:
    """One API server for the whole session, CRDs applied; tests use their own namespaces."""
    cluster = _start_kube(with_controller_manager=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kube_with_controller_manager() -> Iterator[KubeCluster]:
    """An API server with kube-controller-manager (default ServiceAccounts, GC), for the
    few tests that need what the controllers do."""
    cluster = _start_kube(with_controller_manager=True)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def kube_with_watch_cache() -> Iterator[KubeCluster]:
    """A second API server with its watch cache on, for the tests of watch bookmarks (the
    session's server has it off so that 410 Gone can be produced on demand)."""
    cluster = _start_kube(with_controller_manager=False, watch_cache=True)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def kube_without_gmsa_crd() -> Iterator[KubeCluster]:
    """A fresh API server of its own with the project's CRD only, as a cluster without the
    windows-gmsa webhook is: no GMSACredentialSpec CRD until the test applies one."""
    cluster = _start_kube(with_controller_manager=False, gmsa_crd=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def kube_namespace(kube: KubeCluster) -> str:
    """A fresh namespace for one test (left behind: without the controller manager a
    namespace never finishes terminating, and the server goes with the session)."""
    name = f"t-{secrets.token_hex(4)}"
    kube.create_namespace(name)
    return name


@asynccontextmanager
async def proxy_for(cluster: KubeCluster) -> AsyncIterator[FaultProxy]:
    """A started fault-injecting proxy in front of ``cluster``'s API server."""
    proxy = FaultProxy(upstream=cluster.url, ca_file=str(cluster.ca))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@pytest.fixture
async def kube_proxy(kube: KubeCluster) -> AsyncIterator[FaultProxy]:
    """A fault-injecting proxy in front of the session's API server."""
    async with proxy_for(kube) as proxy:
        yield proxy


@pytest.fixture
async def cache_proxy(kube_with_watch_cache: KubeCluster) -> AsyncIterator[FaultProxy]:
    """A proxy in front of the watch-cache API server (to see each watch's query)."""
    async with proxy_for(kube_with_watch_cache) as proxy:
        yield proxy


@pytest.fixture
async def kube_api(kube: KubeCluster) -> AsyncIterator[Any]:
    """A kubernetes-asyncio ApiClient logged in as admin."""
    from kubernetes_asyncio import config

    client = await config.new_client_from_config(
        config_file=str(kube.admin_kubeconfig), persist_config=False
    )
    try:
        yield client
    finally:
        await client.close()
        await asyncio.sleep(0.25)  # TLS connections close in the background


@pytest.fixture
def node(kube: KubeCluster) -> str:
    """The Windows Node object (build 17763, 4 CPUs) test resources are scheduled to."""
    return ensure_node(kube)


# -- a real one-node cluster -----------------------------------------------------------------


def _node_unavailable(reason: str) -> NoReturn:
    """Skip, or on CI (``CI=true``) fail: CI must really run the one-node cluster tests."""
    if _on_ci():
        pytest.fail(
            f"the test node is required when CI=true but unavailable: {reason}", pytrace=False
        )
    pytest.skip(f"the test node is unavailable: {reason}")


@pytest.fixture(scope="module")
def kube_node() -> Iterator[KubeNode]:
    """A one-node cluster for one test module (tests/node.py): API server on the host's
    address with its controller manager, the node Ready, nothing applied; torn down completely."""
    reason = node_unavailable_reason()
    if reason is not None:
        _node_unavailable(reason)
    ip = host_ip()
    assert ip is not None
    cluster = KubeCluster(with_controller_manager=True, node_ip=ip)
    node = KubeNode(cluster)
    try:
        cluster.start()
        node.start()
    except (NodeError, KubeError, KubeAPIError, OSError, TimeoutError) as exc:
        node.stop()
        cluster.stop()
        _node_unavailable(str(exc))
    try:
        yield node
    finally:
        node.stop()
        cluster.stop()
