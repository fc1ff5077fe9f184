"""The shutdown bound of cluster mode, on a real process: SIGTERM while a reconcile is in flight
and the API server has stopped answering ends `winspec run --source kubernetes` within
--shutdown-timeout plus SHUTDOWN_MARGIN_SECONDS, as it does Docker mode's (against the real
dockerd: test_stuck_reads_docker.py) and the agent's (real HTTPS: test_agent.py).

The process talks to the real kube-apiserver through tests/kubeproxy.py, which holds the calls
a real server will not leave unanswered on demand."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.runtime import SHUTDOWN_MARGIN_SECONDS
from tests.clustermode import wc_path, windows_container
from tests.kube import KubeCluster
from tests.kubeproxy import FaultProxy
from tests.processes import REPO, clean_env, free_port, http_status, winspec_run_command

pytestmark = pytest.mark.kube

SHUTDOWN_TIMEOUT = 1.0


async def _until(check: Callable[[], bool], what: str, log: Path, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() >= deadline:
            output = await asyncio.to_thread(log.read_text)
            raise AssertionError(f"{what}:\n{output[-3000:]}")
        await asyncio.sleep(0.1)


@pytest.mark.timeout(150)
async def test_sigterm_with_a_reconcile_and_the_lease_stuck_exits_in_time(
    kube: KubeCluster, kube_namespace: str, node: str, kube_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Cluster mode: SIGTERM with a Secret read and the Lease stuck exits 0 in time + margin."""
    # The shipped defaults but for the namespace of the Lease (the test's own), a short
    # --shutdown-timeout and an --api-timeout long enough that nothing held times out first.
    ns = kube_namespace
    ref = {"secretName": "db", "key": "password", "target": "db-password"}
    kube.api("POST", wc_path(ns), windows_container("held", secrets=[ref]))
    secret_get = f"/api/v1/namespaces/{ns}/secrets/db"
    kube_proxy.hold(lambda method, path: method == "GET" and path.startswith(secret_get))
    kubeconfig = kube.kubeconfig(kube.admin_token, server=kube_proxy.url)
    port = free_port()
    log = tmp_path / "winspec.log"
    command = winspec_run_command(
        *("--source", "kubernetes", "--kubeconfig", str(kubeconfig), "--namespace", ns),
        *("--leader-election-namespace", ns, "--bundle-root", str(tmp_path / "bundles")),
        *("--listen", f"127.0.0.1:{port}", "--log-format", "console", "--api-timeout", "60"),
        *("--shutdown-timeout", str(SHUTDOWN_TIMEOUT)),
    )
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *command, cwd=REPO, env=clean_env(), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        await _until(
            lambda: kube_proxy.count(lambda e: e.path_qs.startswith(secret_get)) >= 1,
            "the reconcile never read the Secret",
            log,
        )
        assert await asyncio.to_thread(http_status, f"http://127.0.0.1:{port}/healthz") == 200
        # From now on the Lease cannot be renewed or released either.
        kube_proxy.hold(lambda method, path: "/leases" in path)
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(proc.wait(), timeout=60)
        took = time.monotonic() - stopping
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = await asyncio.to_thread(log.read_text)
    assert returncode == 0, output
    assert took <= SHUTDOWN_TIMEOUT + SHUTDOWN_MARGIN_SECONDS, (took, output)
    assert "shutting down" in output
    assert "Traceback" not in output
    assert not (tmp_path / "bundles" / ns / "held").exists()
