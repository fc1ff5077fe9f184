"""What a winspec process imports: only what the command and mode it runs use.

Each process is the real console entry point under ``python -X importtime``, which names every
module the process imported, at start-up and later alike: ``winspec --version`` exits at once;
``winspec run`` (Docker mode against the real dockerd, cluster mode against the real
kube-apiserver) runs until its first bundle is written, then is stopped by SIGTERM. The options
are the shipped defaults but for the paths, the listen address and, in cluster mode, the
namespace (the test's own), as the other process tests use them.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clustermode import wc_path, windows_container
from tests.dockerd import DockerDaemon
from tests.kube import KubeCluster
from tests.processes import REPO, clean_env, free_port
from tests.support.waiting import wait_for

#: winspec's Docker client and everything of Docker mode.
DOCKER = ("adapters.docker",)
#: The Kubernetes client library, winspec's client on it and everything of cluster mode.
KUBERNETES = ("kubernetes_asyncio", "adapters.kubernetes")
#: kubernetes-asyncio's API and model classes, which winspec does not import.
LIBRARY_CLASSES = ("kubernetes_asyncio.client.api", "kubernetes_asyncio.client.models")
#: The node agent's server (the agent command alone uses it).
AGENT = ("adapters.agent.command", "adapters.agent.server", "adapters.agent.auth")

_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|( *)(\S+)$", re.MULTILINE)


def imported(stderr: str) -> set[str]:
    """The modules ``-X importtime`` reported in ``stderr``."""
    return {match.group(2) for match in _IMPORT_LINE.finditer(stderr)}


def among(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    """The ``modules`` that are one of ``prefixes`` or inside one, sorted."""
    return sorted(m for m in modules if any(m == p or m.startswith(f"{p}.") for p in prefixes))


def _winspec(*args: str) -> list[str]:
    return [sys.executable, "-X", "importtime", "-m", "adapters.cli", *args]


def _run_until(command: list[str], done: Path, log: Path) -> set[str]:
    """Run ``command`` until ``done`` exists, SIGTERM it; the modules it imported."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=clean_env(), stderr=out)
    try:

        def written() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            return done.exists()

        wait_for(written, 60, interval=0.05, what=f"{done} to be written")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return imported(log.read_text())


def test_version_imports_no_client_and_no_aiohttp() -> None:
    """`winspec --version` imports neither the Docker nor the Kubernetes client, nor aiohttp."""
    result = subprocess.run(
        _winspec("--version"), cwd=REPO, env=clean_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("winspec "), result.stdout
    modules = imported(result.stderr)
    assert "adapters.version" in modules, result.stderr[-2000:]
    assert among(modules, (*DOCKER, *KUBERNETES, *AGENT, "aiohttp", "prometheus_client")) == []


@pytest.mark.docker
def test_docker_mode_imports_no_kubernetes_client(dockerd: DockerDaemon, tmp_path: Path) -> None:
    """Docker mode, up to its first bundle and its stop, imports nothing of Kubernetes."""
    cid = dockerd.create_container(f"imports-{tmp_path.name[-12:]}")
    root = tmp_path / "bundles"
    (tmp_path / "secrets").mkdir()
    command = _winspec(
        "run",
        *("--docker-host", dockerd.host, "--bundle-root", str(root)),
        *("--secrets-dir", str(tmp_path / "secrets"), "--listen", f"127.0.0.1:{free_port()}"),
    )
    try:
        modules = _run_until(command, root / cid / "config.json", tmp_path / "winspec.log")
    finally:
        dockerd.remove_container(cid)
    assert "adapters.docker.mode" in modules
    assert among(modules, (*KUBERNETES, *AGENT)) == []


@pytest.mark.kube
def test_cluster_mode_imports_no_docker_client(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """Cluster mode, to its first bundle and stop, imports no Docker, no client API or model."""
    ns = kube_namespace
    kube.api("POST", wc_path(ns), windows_container("first"))
    root = tmp_path / "bundles"
    command = _winspec(
        "run",
        *("--source", "kubernetes", "--kubeconfig", str(kube.admin_kubeconfig)),
        *("--namespace", ns, "--leader-election-namespace", ns, "--bundle-root", str(root)),
        *("--listen", f"127.0.0.1:{free_port()}"),
    )
    modules = _run_until(command, root / ns / "first" / "config.json", tmp_path / "winspec.log")
    assert "kubernetes_asyncio.config.kube_config" in modules
    assert among(modules, (*DOCKER, *AGENT)) == []
    # The library's API and model classes are never used (adapters/kubernetes/libimport.py).
    assert among(modules, LIBRARY_CLASSES) == []
