"""The node-local shape as users deploy it, on a real one-node cluster (tests/node.py): the
controller image imported with ``docker save``, then ``kubectl apply -k`` of
manifests/overlays/test-node-local: the node-local overlay exactly as shipped except for what a
Linux node without a registry needs (its comment says what). The DaemonSet's instance on the
node reconciles the WindowsContainers labelled with its node's name and writes their bundles on
the node's hostPath; a thread reads every bundle there throughout (never one torn).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator

import pytest

from controller.cluster import NODE_LABEL
from tests.bundlewatch import TreeWatch
from tests.clustermode import wc_path
from tests.images import Built
from tests.manifests import MANIFESTS
from tests.node import KubeNode
from tests.nodedeploy import (
    NODE_BUNDLES,
    START_TIMEOUT,
    Deployed,
    command_line,
    create_on_node,
    mounted_payloads,
    new_namespace,
    node_bundle,
    prepare,
    ready_on_node,
    wait_or_fail,
)
from tests.readme_commands import RUN_EXAMPLE

pytestmark = [pytest.mark.node, pytest.mark.kube, pytest.mark.docker, pytest.mark.timeout(600)]

OVERLAY = MANIFESTS / "overlays" / "test-node-local"
INSTANCE = "app.kubernetes.io/name=winspec,app.kubernetes.io/component=node"


@pytest.fixture(scope="module")
def deployed(
    kube_node: KubeNode, controller_image: Built, tmp_path_factory: pytest.TempPathFactory
) -> Deployed:
    """The image imported, the test overlay applied, the node's instance Running and Ready."""
    deployed = prepare(kube_node, controller_image, tmp_path_factory.mktemp("node-local"))
    deployed.kubectl("apply", "-k", str(OVERLAY))
    wait_or_fail(deployed, lambda: len(deployed.ready_pods(INSTANCE)) == 1, START_TIMEOUT,
                 "the node's instance Ready")  # fmt: skip
    return deployed


@pytest.fixture
def node_bundles(deployed: Deployed) -> Iterator[TreeWatch]:
    """A thread reading every bundle on the node's hostPath during the test; none torn."""
    with TreeWatch(NODE_BUNDLES) as watch:
        yield watch
    watch.check()
    assert watch.torn == []


def test_the_instance_writes_only_its_own_nodes_resources(
    deployed: Deployed, node_bundles: TreeWatch
) -> None:
    """The node's instance writes its node's resource and leaves another node's one alone."""
    ns = new_namespace(deployed)
    node = deployed.node.name
    # Created first: by the time the node's own resource is Ready, the instance had its chance.
    create_on_node(
        deployed, ns, "elsewhere", nodeName="win-node-2", labels={NODE_LABEL: "win-node-2"}
    )
    create_on_node(deployed, ns, "mine", labels={NODE_LABEL: node})
    (pod,) = deployed.ready_pods(INSTANCE)
    assert pod["spec"]["nodeName"] == node
    # A local writer's status digest is keyed per process, not the bundle's .digest: the
    # bundle's files are checked against their .digest by the watch instead.
    ready_on_node(deployed, ns, "mine", agent_digest=False)
    assert command_line(ns, "mine").endswith("echo hello")
    node_bundles.check()
    assert node_bundles.whole(node_bundle(ns, "mine")) > 0
    assert not node_bundle(ns, "elsewhere").exists()
    other = deployed.kube.api("GET", wc_path(ns, "elsewhere"))
    assert not other.get("status")
    assert not other["metadata"].get("finalizers")


def test_examples_cluster_node_local_variant_is_ready_on_the_node(
    deployed: Deployed, node_bundles: TreeWatch
) -> None:
    """examples/cluster/node-local applied as its comment says: web Ready, payload on the node."""
    gmsa_crd, wait_established, _, wait_ready = RUN_EXAMPLE
    for command in (gmsa_crd, wait_established, "kubectl apply -k examples/cluster/node-local"):
        deployed.kubectl(*shlex.split(command)[1:])
    deployed.kubectl(*shlex.split(wait_ready)[1:])
    ready_on_node(deployed, "apps", "web", agent_digest=False)
    assert b"change-me" in mounted_payloads("apps", "web")
    node_bundles.check()
    assert node_bundles.whole(node_bundle("apps", "web")) > 0
