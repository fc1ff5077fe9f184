"""examples/cluster applied as the README says, against a fresh real kube-apiserver that has no
GMSACredentialSpec CRD (as a cluster without the windows-gmsa webhook), with the README's
`winspec run --source kubernetes` reconciling it (for the variants, with the flags of their
deployment shape: node-local's --node-name, central's --delivery agent to a real agent).

What differs from what a user runs, and why: the kubeconfig is the test cluster's, for the
manifests' own ServiceAccount ``winspec-system/winspec`` (a user's ``~/.kube/config`` is theirs);
the bundle root is ``tmp_path`` (``/var/lib/winspec/bundles`` needs root and is shared); a free
``--listen`` port is added (8080 may be taken); and a Node object ``win-node-1`` stands in for the
Windows node (the fixture's cluster has no kubelet), with the labels and status a Windows kubelet
reports.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.agent import AgentProcess
from tests.clustermode import condition, ensure_node, wc_path
from tests.integration.test_remote_delivery import AUDIENCE, _agent_pod, make_delivery
from tests.kube import KubeCluster
from tests.processes import clean_env, free_port, http_status
from tests.readme_commands import ROOT, RUN_EXAMPLE, RUN_WITH_KUBE, argv
from tests.support.waiting import wait_for

pytestmark = pytest.mark.kube

KUBECTL_APPLY, CLUSTER_RUN = RUN_WITH_KUBE


def _kubectl(kube: KubeCluster, command: str) -> subprocess.CompletedProcess[str]:
    """One README kubectl command, run as written against ``kube`` (its admin kubeconfig)."""
    found = shutil.which("kubectl")
    if found is None:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail("kubectl is required when CI=true but is not on PATH")
        pytest.skip("kubectl is not on PATH")
    words = shlex.split(command)
    assert words[0] == "kubectl"
    return subprocess.run(
        [found, *words[1:]],
        cwd=ROOT,
        env=kube.kubectl_env(),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _base_manifests(kube: KubeCluster) -> None:
    """The README's first cluster-mode command (the CRD, namespace and RBAC), and the Node."""
    applied = _kubectl(kube, KUBECTL_APPLY)
    assert applied.returncode == 0, applied.stderr
    ensure_node(kube)


@contextmanager
def _cluster_mode(kube: KubeCluster, tmp_path: Path, *extra: str) -> Iterator[Path]:
    """The README's base manifests applied, the stand-in Node created, and the README's
    `winspec run --source kubernetes` (plus ``extra``) running as the manifests' ServiceAccount
    until it is ready; yields the bundle root. Stopped with SIGTERM afterwards: exit 0."""
    _base_manifests(kube)
    token = kube.service_account_token("winspec-system", "winspec")
    kubeconfig = kube.kubeconfig(token)
    bundles = tmp_path / "bundles"
    port = free_port()
    command = CLUSTER_RUN.replace("~/.kube/config", str(kubeconfig)).replace(
        "/var/lib/winspec/bundles", str(bundles)
    )
    log = tmp_path / "winspec.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            argv(command, ("--listen", f"127.0.0.1:{port}", *extra)),
            cwd=ROOT,
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        deadline = time.monotonic() + 60
        while http_status(f"http://127.0.0.1:{port}/readyz") != 200:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "winspec run did not get ready within 60 s"
            time.sleep(0.2)
        yield bundles
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(240)
def test_the_cluster_example_applies_as_it_is_and_becomes_ready(
    kube_without_gmsa_crd: KubeCluster, tmp_path: Path
) -> None:
    """The README's example commands apply examples/cluster on a fresh server; web gets Ready."""
    kube = kube_without_gmsa_crd
    with _cluster_mode(kube, tmp_path) as bundles:
        for command in RUN_EXAMPLE:
            done = _kubectl(kube, command)
            assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        web: dict[str, Any] = kube.api("GET", wc_path("apps", "web"))
        assert web["status"]["digest"]
        spec = json.loads((bundles / "apps" / "web" / "config.json").read_text())
        credential_spec = json.loads(spec["windows"]["credentialSpec"])
        assert credential_spec["DomainJoinConfig"]["MachineAccountName"] == "WebApp01"
        payloads = [p.name for p in (bundles / "apps" / "web" / "secrets").iterdir()]
        assert len(payloads) == 1
        assert (bundles / "apps" / "web" / "secrets" / payloads[0]).read_bytes() == b"change-me"


@pytest.mark.timeout(240)
def test_a_credential_spec_whose_crd_is_not_served_says_so_in_the_condition(
    kube_without_gmsa_crd: KubeCluster, tmp_path: Path
) -> None:
    """Without the GMSACredentialSpec CRD, the resource's Ready condition says it is not served."""
    kube = kube_without_gmsa_crd
    with _cluster_mode(kube, tmp_path):
        # The README's order skipped: examples/cluster without the CRD. kubectl creates the
        # rest and refuses the credential spec (its kind is unknown).
        partial = _kubectl(kube, "kubectl apply -k examples/cluster")
        assert partial.returncode != 0
        assert "GMSACredentialSpec" in partial.stderr

        def not_served() -> dict[str, Any] | None:
            cond = condition(kube.api("GET", wc_path("apps", "web")), "Ready")
            if cond and "does not serve windows.k8s.io/v1 gmsacredentialspecs" in cond["message"]:
                return cond
            return None

        cond = wait_for(not_served, 30, what="the condition naming the missing CRD")
        assert cond["status"] == "False"
        assert cond["reason"] == "DependencyMissing"
        assert cond["message"].startswith("GMSACredentialSpec web-gmsa: the API server")
        assert "examples/cluster/gmsa-crd.yaml" in cond["message"]


def _apply_example(kube: KubeCluster, example: str) -> None:
    """The README's example commands, with ``example`` for the folder ``kubectl apply -k``
    applies; each must succeed (the last waits for Ready)."""
    for command in RUN_EXAMPLE:
        done = _kubectl(kube, command.replace("-k examples/cluster", f"-k {example}"))
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"


@pytest.mark.timeout(240)
def test_the_node_local_variant_is_ready_under_the_node_local_instance(
    kube_without_gmsa_crd: KubeCluster, tmp_path: Path
) -> None:
    """examples/cluster/node-local gets Ready under `--node-name win-node-1 --no-leader-elect`."""
    # The flags the node-local overlay runs winspec with; its instance sees only labelled ones.
    kube = kube_without_gmsa_crd
    with _cluster_mode(kube, tmp_path, "--node-name", "win-node-1", "--no-leader-elect") as root:
        _apply_example(kube, "examples/cluster/node-local")
        assert (root / "apps" / "web" / "config.json").is_file()
        web = kube.api("GET", wc_path("apps", "web"))
        assert web["metadata"]["labels"] == {"winspec.io/node-name": "win-node-1"}


@pytest.mark.timeout(240)
def test_examples_cluster_is_ready_with_central_delivery(
    kube_without_gmsa_crd: KubeCluster, tmp_path: Path
) -> None:
    """examples/cluster as it is gets Ready under `--delivery agent`: the bundle is on the agent."""
    # As the central overlay deploys it: the controller as winspec-system/winspec, its agent pod
    # found in winspec-system by the default selector, the agent accepting only that account's
    # tokens of audience winspec-agent. The agent is a real `winspec agent` on loopback whose
    # Pod object (no kubelet) says it runs at 127.0.0.1; its certificate is for that address,
    # so no --agent-server-name.
    kube = kube_without_gmsa_crd
    _base_manifests(kube)
    (tmp_path / "delivery").mkdir()
    delivery = make_delivery(kube, "winspec-system", tmp_path / "delivery")
    controller = "system:serviceaccount:winspec-system:winspec"
    token_file = tmp_path / "controller-token"
    token_file.write_text(
        kube.service_account_token("winspec-system", "winspec", audiences=[AUDIENCE])
    )
    (tmp_path / "node").mkdir()
    agent = AgentProcess(
        root=tmp_path / "node" / "bundles",
        tls=delivery.tls,
        kubeconfig=delivery.agent_kubeconfig,
        allowed=[controller],
        audience=AUDIENCE,
    )
    agent.start()
    try:
        _agent_pod(delivery, "win-node-1", agent.port)
        central = ("--delivery", "agent", "--agent-ca-file", str(delivery.tls.ca),
                   "--agent-token-file", str(token_file))  # fmt: skip
        with _cluster_mode(kube, tmp_path, *central) as local_root:
            _apply_example(kube, "examples/cluster")
            assert (agent.root / "apps" / "web" / "config.json").is_file()
            assert not (local_root / "apps").exists()
    finally:
        agent.stop()
