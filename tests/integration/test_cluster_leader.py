"""Leader election on a real Lease: one leader among replicas, failover within the lease
duration when the leader is killed, and a leader that loses the Lease stops at once."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from adapters.kubernetes.mode import ClusterMode, LeaseLostError
from controller.settings import load_settings
from tests.clustermode import (
    api,
    eventually,
    metric,
    ready_object,
    running,
    wc_path,
    windows_container,
)
from tests.kube import KubeCluster
from tests.kubeproxy import FaultProxy
from tests.processes import clean_env, free_port, winspec_run_command

pytestmark = pytest.mark.kube

LEASE = 3.0  # seconds: renew deadline 2 s, retry period 0.4 s


def _leads(mode: ClusterMode) -> bool:
    return metric(mode, "leader_election_master_status", name="winspec") == 1


def _readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            status: int = answer.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


async def test_one_leader_and_failover_when_it_is_killed(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """One leader, a standby that neither reconciles nor is ready; SIGKILL → failover in time."""
    ns = kube_namespace
    port = free_port()
    leader = await asyncio.create_subprocess_exec(
        *winspec_run_command(
            "--source", "kubernetes", "--kubeconfig", str(kube.admin_kubeconfig),
            "--bundle-root", str(tmp_path / "first"), "--listen", f"127.0.0.1:{port}",
            "--namespace", ns, "--leader-election-namespace", ns,
            "--lease-duration", str(LEASE), "--log-level", "warning",
        ),
        env=clean_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await eventually(lambda: _readyz(port) == 200, within=30, what="the first replica leads")
        async with running(
            kube.admin_kubeconfig, tmp_path, namespace=[ns], leader_elect=True,
            leader_election_namespace=ns, lease_duration=LEASE,
        ) as standby:  # fmt: skip
            await api(kube, "POST", wc_path(ns), windows_container("one"))
            await eventually(ready_object(kube, ns, "one"), what="Ready by the leader")
            assert (tmp_path / "first" / ns / "one").exists()
            assert not _leads(standby)
            assert not standby.health.is_ready()
            assert not (tmp_path / "bundles").exists()  # the standby reconciles nothing

            leader.send_signal(signal.SIGKILL)
            await leader.wait()
            killed = time.monotonic()
            await eventually(lambda: _leads(standby), within=3 * LEASE, what="failover")
            took = time.monotonic() - killed
            assert took <= LEASE + 1.0, took

            await api(kube, "POST", wc_path(ns), windows_container("two"))
            await eventually(ready_object(kube, ns, "two"), what="Ready by the new leader")
            assert (tmp_path / "bundles" / ns / "two").exists()
            await eventually(lambda: standby.health.is_ready(), within=10)
    finally:
        if leader.returncode is None:
            leader.kill()
            await leader.wait()


async def test_a_leader_that_cannot_renew_stops_reconciling(
    kube: KubeCluster, kube_namespace: str, kube_proxy: FaultProxy, tmp_path: Path
) -> None:
    """When renewals fail for the renew deadline, the leader stops with LeaseLostError."""
    ns = kube_namespace
    kubeconfig = kube.kubeconfig(kube.admin_token, server=kube_proxy.url)
    settings = load_settings(
        {
            "source": "kubernetes", "kubeconfig": str(kubeconfig),
            "bundle_root": str(tmp_path / "bundles"), "listen": "127.0.0.1:0",
            "namespace": [ns], "leader_election_namespace": ns, "lease_duration": LEASE,
            "retry_attempts": 1, "shutdown_timeout": 1.0,
        }
    )  # fmt: skip
    mode = ClusterMode(settings)
    task = asyncio.create_task(mode.run())
    try:
        await eventually(lambda: _leads(mode), within=20, what="leadership")
        kube_proxy.fail(503, count=10_000, when=lambda m, p: "/leases/" in p)
        failing = time.monotonic()
        async with asyncio.timeout(3 * LEASE):
            with pytest.raises(LeaseLostError):
                await task
        assert time.monotonic() - failing < LEASE  # gone before another may take over
        assert not _leads(mode)
    finally:
        if not task.done():
            mode.request_stop()
            await asyncio.wait({task}, timeout=10)
