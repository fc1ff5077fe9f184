"""The shipped workloads started with the environment Kubernetes gives their pods.

The shipped overlays are rendered with ``kubectl kustomize``, their Services applied to the real
API server (which allocates the cluster IPs), and each pod's environment built from them the way
the kubelet builds it (tests/servicelinks.py): Docker-link variables for every Service of the
namespace unless the pod template turns them off, and ``default/kubernetes``'s. winspec then runs
as a real process with the container's shipped arguments. What differs from a pod, and why: the
paths of mounted volumes point into a temporary directory (there is no container file system),
``--listen`` is a free loopback port, and the in-cluster address of the API server is the test
server's loopback address (its cluster IP leads nowhere here).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clustermode import ensure_node
from tests.integration.test_cluster_rbac import winspec_token  # noqa: F401 - a fixture
from tests.kube import KubeCluster
from tests.manifests import render
from tests.processes import REPO, free_port, http_status
from tests.servicelinks import expand, pod_environment, service_link_variables
from tests.support.waiting import wait_for

NAMESPACE = "winspec-system"


def _pod_templates(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", ["overlays/central", "overlays/node-local"])
def test_every_shipped_pod_template_turns_service_links_off(overlay: str) -> None:
    """Every pod template the overlays ship sets enableServiceLinks: false."""
    templates = dict(_pod_templates(render(overlay)))
    assert templates
    for where, spec in templates.items():
        assert spec.get("enableServiceLinks") is False, where


def _services(kube: KubeCluster, overlay: str) -> list[dict[str, Any]]:
    """The overlay's Services as the API server holds them (cluster IPs allocated)."""
    kube.create_namespace(NAMESPACE)
    return [kube.apply(o) for o in render(overlay) if o["kind"] == "Service"]


def _container(overlay: str, workload: str) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = dict(_pod_templates(render(overlay)))[workload]
    return spec, spec["containers"][0]


def _mounted_paths(spec: dict[str, Any], container: dict[str, Any], tmp: Path) -> dict[str, str]:
    """Each volume mount's path in the container -> a directory of the test (created)."""
    mapping = {}
    for index, mount in enumerate(container.get("volumeMounts") or []):
        local = tmp / f"volume-{index}-{mount['name']}"
        local.mkdir()
        mapping[mount["mountPath"]] = str(local)
    return mapping


def _local_args(args: list[str], env: dict[str, str], mounts: dict[str, str]) -> list[str]:
    out = []
    for raw in args:
        arg = expand(raw, env)
        if arg.startswith("--listen="):
            arg = f"--listen=127.0.0.1:{free_port()}"
        for mount_path, local in mounts.items():
            name, sep, value = arg.partition("=")
            if sep and value.startswith(mount_path):
                rest = value[len(mount_path) :].replace("\\", "/")
                arg = f"{name}={local}{rest}"
        out.append(arg)
    return out


def _in_cluster_files(kube: KubeCluster, mounts: dict[str, str], token: str) -> None:
    """What the kubelet would mount: the agents' CA and an agent-audience token."""
    for mount_path, local in mounts.items():
        if mount_path.endswith("agent-ca"):
            shutil.copy(kube.ca, Path(local) / "ca.crt")
        if mount_path.endswith("winspec-agent"):
            agent_token = kube.service_account_token(
                NAMESPACE, "winspec", audiences=["winspec-agent"]
            )
            (Path(local) / "token").write_text(agent_token)


def _start(
    kube: KubeCluster, args: list[str], env: dict[str, str], account: Path
) -> subprocess.Popen[str]:
    pod_env = env | {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(kube.port),
        # The service account directory the kubelet mounts, here a directory of the test.
        "WINSPEC_SERVICE_ACCOUNT_DIR": str(account),
        "PATH": "/usr/bin:/bin",
        "HOME": str(account),
        "PYTHONPATH": str(REPO),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "adapters.cli", *args],
        cwd=REPO,
        env=pod_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _account(kube: KubeCluster, tmp: Path, token: str) -> Path:
    account = tmp / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(token)
    shutil.copy(kube.ca, account / "ca.crt")
    return account


def _wait_healthy(proc: subprocess.Popen[str], port: str, within: float = 60.0) -> None:
    def healthy() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"winspec exited with {proc.returncode}:\n{_stop(proc)[-3000:]}")
        return http_status(f"http://127.0.0.1:{port}/healthz") == 200

    wait_for(healthy, within, what="/healthz to answer 200")


def _stop(proc: subprocess.Popen[str]) -> str:
    """Stop the process; its output."""
    if proc.poll() is None:
        proc.terminate()
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    return output


WORKLOADS = [
    ("overlays/central", "Deployment/winspec-controller"),
    ("overlays/node-local", "DaemonSet/winspec-node"),
]


@pytest.mark.kube
@pytest.mark.parametrize(("overlay", "workload"), WORKLOADS)
def test_shipped_workload_starts_with_its_pods_environment(
    kube: KubeCluster,
    winspec_token: str,  # noqa: F811 - the fixture
    tmp_path: Path,
    overlay: str,
    workload: str,
) -> None:
    """The shipped controller and node-local instance turn healthy in their pods' environment."""
    kube.apply_crd()
    node = ensure_node(kube)
    services = _services(kube, overlay)
    api_service = kube.api("GET", "/api/v1/namespaces/default/services/kubernetes")
    spec, container = _container(overlay, workload)
    env = pod_environment(spec, container, services, api_service, {"spec.nodeName": node})
    mounts = _mounted_paths(spec, container, tmp_path)
    _in_cluster_files(kube, mounts, winspec_token)
    args = _local_args(container["args"], env, mounts)
    port = next(a for a in args if a.startswith("--listen=")).rpartition(":")[2]
    proc = _start(kube, args, env, _account(kube, tmp_path, winspec_token))
    try:
        _wait_healthy(proc, port)
    finally:
        _stop(proc)


@pytest.mark.kube
def test_service_links_in_the_environment_are_refused_naming_the_fix(
    kube: KubeCluster,
    winspec_token: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """The controller in a pod with service links exits 2 naming the link and the fix."""
    services = _services(kube, "overlays/central")
    api_service = kube.api("GET", "/api/v1/namespaces/default/services/kubernetes")
    spec, container = _container("overlays/central", "Deployment/winspec-controller")
    spec = spec | {"enableServiceLinks": True}
    env = pod_environment(spec, container, services, api_service)
    assert env["WINSPEC_AGENT_PORT"].startswith("tcp://")  # what crash-looped the controller
    mounts = _mounted_paths(spec, container, tmp_path)
    _in_cluster_files(kube, mounts, winspec_token)
    args = _local_args(container["args"], env, mounts)
    proc = _start(kube, args, env, _account(kube, tmp_path, winspec_token))
    try:
        proc.wait(timeout=60)
    finally:
        output = _stop(proc)
    assert proc.returncode == 2, output
    assert f"WINSPEC_AGENT_PORT={env['WINSPEC_AGENT_PORT']!r}" in output
    assert "Kubernetes service link" in output
    assert "'winspec-agent'" in output
    assert "enableServiceLinks: false" in output
    assert "--agent-port" in output


def test_service_link_variables_follow_the_kubelet() -> None:
    """A Service's link variables are named and valued as the kubelet makes them."""
    service = {
        "metadata": {"name": "winspec-agent"},
        "spec": {
            "clusterIP": "10.0.0.61",
            "ports": [
                {"name": "https", "port": 8443, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ],
        },
    }
    assert service_link_variables(service) == {
        "WINSPEC_AGENT_SERVICE_HOST": "10.0.0.61",
        "WINSPEC_AGENT_SERVICE_PORT": "8443",
        "WINSPEC_AGENT_SERVICE_PORT_HTTPS": "8443",
        "WINSPEC_AGENT_SERVICE_PORT_DNS": "53",
        "WINSPEC_AGENT_PORT": "tcp://10.0.0.61:8443",
        "WINSPEC_AGENT_PORT_8443_TCP": "tcp://10.0.0.61:8443",
        "WINSPEC_AGENT_PORT_8443_TCP_PROTO": "tcp",
        "WINSPEC_AGENT_PORT_8443_TCP_PORT": "8443",
        "WINSPEC_AGENT_PORT_8443_TCP_ADDR": "10.0.0.61",
        "WINSPEC_AGENT_PORT_53_UDP": "udp://10.0.0.61:53",
        "WINSPEC_AGENT_PORT_53_UDP_PROTO": "udp",
        "WINSPEC_AGENT_PORT_53_UDP_PORT": "53",
        "WINSPEC_AGENT_PORT_53_UDP_ADDR": "10.0.0.61",
    }
    headless = {"metadata": {"name": "x"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}
    assert service_link_variables(headless) == {}
