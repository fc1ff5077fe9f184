"""The README's cluster-mode commands, run as written against the fixtures' real kube-apiserver.

Only what is the reader's own is replaced by the test's: the kubeconfig (``~/.kube/config`` →
the test cluster's admin kubeconfig, also as ``KUBECONFIG`` for kubectl), the bundle root
(``/var/lib/winspec/bundles`` → ``tmp_path``), and a free ``--listen`` port is added.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.kube import KubeCluster
from tests.processes import clean_env, free_port, http_status, winspec_run_command
from tests.readme_commands import BENCH_KUBE, ROOT, RUN_WITH_KUBE, argv

pytestmark = pytest.mark.kube

KUBECTL_APPLY, CLUSTER_RUN = RUN_WITH_KUBE


def _kubectl() -> str:
    """kubectl's path; skipped without it, a failure with CI=true."""
    found = shutil.which("kubectl")
    if found is None:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail("kubectl is required when CI=true but is not on PATH")
        pytest.skip("kubectl is not on PATH")
    return found


def _apply(kube: KubeCluster) -> subprocess.CompletedProcess[str]:
    """Run the README's kubectl apply against the test cluster."""
    words = shlex.split(KUBECTL_APPLY)
    return subprocess.run(
        [_kubectl(), *words[1:]],
        cwd=ROOT,
        env=kube.kubectl_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_kubectl_apply_of_the_base_manifests(kube: KubeCluster) -> None:
    """The README's kubectl apply of the CRD, namespace and RBAC succeeds on a real server."""
    proc = _apply(kube)
    assert proc.returncode == 0, proc.stderr
    assert "customresourcedefinition.apiextensions.k8s.io/windowscontainers.winspec.io" in (
        proc.stdout
    )
    assert "clusterrole.rbac.authorization.k8s.io/" in proc.stdout


@pytest.mark.timeout(120)
def test_cluster_run_command_becomes_ready_and_stops(kube: KubeCluster, tmp_path: Path) -> None:
    """The README's `winspec run --source kubernetes` gets ready on a real server, exits 0."""
    applied = _apply(kube)
    assert applied.returncode == 0, applied.stderr
    port = free_port()
    command = CLUSTER_RUN.replace("~/.kube/config", str(kube.admin_kubeconfig)).replace(
        "/var/lib/winspec/bundles", str(tmp_path / "bundles")
    )
    words = shlex.split(command)
    assert words[:2] == [".venv/bin/winspec", "run"]
    proc = subprocess.Popen(
        [*winspec_run_command(*words[2:]), "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while http_status(f"http://127.0.0.1:{port}/readyz") != 200:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "winspec run did not get ready within 60 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=40)
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


#: What each cluster benchmark's table must name: its phases.
_PHASES = {
    ".venv/bin/python -m tests.benchmarks.bench_kubernetes": (
        "floor",
        "floor+w",
        "winspec",
        "restart",
        "list",
        "list proc",
    ),
    ".venv/bin/python -m tests.benchmarks.bench_delivery": ("central", "node-local"),
    ".venv/bin/python -m tests.benchmarks.bench_memory": ("central", "node-local"),
    ".venv/bin/python -m tests.benchmarks.bench_memory "
    "--sizes 1000 2000 4000 8000 --node-share 1": (
        "central",
        "node-local",
    ),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", sorted(BENCH_KUBE))
def test_the_cluster_benchmark_runs(kube: KubeCluster, command: str) -> None:
    """Each README cluster benchmark runs at its small size and prints a row for every phase."""
    proc = subprocess.run(
        argv(command, BENCH_KUBE[command]),
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # A row is its phase's name (which may hold a space: "list proc"), then a count.
    for phase in _PHASES[command]:
        row = re.compile(rf"{re.escape(phase)} +\d")
        assert any(row.match(line) for line in proc.stdout.splitlines()), proc.stdout
