"""Leader election on a real Lease: one leader among replicas, failover within the lease
duration when the leader is killed, and a leader that loses the Lease stops at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.kubernetes.client import KubeClient, RetryPolicy, load_api_client
from adapters.kubernetes.leader import LeaderElector, LeaseSettings
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
from tests.support import waiting

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


# -- the elector itself, on the real server (and through the fault proxy) ----------------------

RENEW = 2.5  # renew deadline of the elector-level tests; lease 4 s, retry period 0.4 s
RETRY = 0.4
SLACK = 2.5


class _Candidate:
    """One LeaderElector with its own client; records when it gained and lost leadership."""

    def __init__(self, client: KubeClient, settings: LeaseSettings) -> None:
        self.client = client
        self.started: list[float] = []
        self.stopped: list[float] = []
        self.elector = LeaderElector(client, settings, on_change=self._changed)
        self.task: asyncio.Task[None] | None = None

    def _changed(self, leading: bool) -> None:
        (self.started if leading else self.stopped).append(time.monotonic())

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run())

    @property
    def leads(self) -> bool:
        return self.elector.leading.is_set()

    async def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@pytest.fixture
async def candidates(kube: KubeCluster) -> AsyncIterator[Callable[..., Any]]:
    """Makes electors (admin, or the given kubeconfig); all cancelled and closed at the end."""
    made: list[_Candidate] = []

    async def make(
        namespace: str,
        identity: str,
        *,
        kubeconfig: Path | None = None,
        lease_duration: float = 4.0,
        renew_deadline: float = RENEW,
    ) -> _Candidate:
        api_client = await load_api_client(str(kubeconfig or kube.admin_kubeconfig))
        client = KubeClient(api_client, retry=RetryPolicy(attempts=2), timeout=5.0)
        settings = LeaseSettings(
            namespace=namespace, name="winspec", identity=identity,
            lease_duration=lease_duration, renew_deadline=renew_deadline, retry_period=RETRY,
        )  # fmt: skip
        candidate = _Candidate(client, settings)
        made.append(candidate)
        return candidate

    try:
        yield make
    finally:
        for candidate in made:
            await candidate.cancel()
            await candidate.client.close()


async def _until(predicate: Callable[[], bool], within: float, what: str) -> float:
    """Wait for ``predicate``; the monotonic time it became true."""
    await waiting.eventually(predicate, within=within, interval=0.02, what=what)
    return time.monotonic()


def _lease_path(ns: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/winspec"


async def _leading_through_proxy(
    kube: KubeCluster, ns: str, proxy: FaultProxy, candidates: Callable[..., Any]
) -> _Candidate:
    """Elector "a" talking to the server through the fault proxy, once it leads."""
    a: _Candidate = await candidates(
        ns, "a", kubeconfig=kube.kubeconfig(kube.admin_token, server=proxy.url)
    )
    a.start()
    await _until(lambda: a.leads, 10, "a to lead")
    return a


async def test_a_stolen_lease_is_lost_within_a_retry_period(
    kube: KubeCluster, kube_namespace: str, candidates: Callable[..., Any]
) -> None:
    """Another identity overwriting the Lease ends leadership within a retry, not the deadline."""
    ns = kube_namespace
    a = await candidates(ns, "a", lease_duration=30.0, renew_deadline=20.0)
    a.start()
    await _until(lambda: a.leads, 10, "a to lead")
    lease = kube.api("GET", _lease_path(ns))
    lease["spec"]["holderIdentity"] = "intruder"
    kube.api("PUT", _lease_path(ns), lease)
    stolen = time.monotonic()
    lost = await _until(lambda: not a.leads, 10, "a to notice") - stolen
    assert lost < 2 * RETRY + 1.0, lost  # not the 20 s renew deadline
    assert a.task is not None
    assert a.task.done()
    assert a.task.exception() is None
    await a.elector.release()  # not ours any more: the intruder's Lease is left alone
    assert kube.api("GET", _lease_path(ns))["spec"]["holderIdentity"] == "intruder"


async def test_a_conflict_on_the_releasing_write_is_read_again_and_the_lease_freed(
    kube: KubeCluster, kube_namespace: str, kube_proxy: FaultProxy, candidates: Callable[..., Any]
) -> None:
    """A 409 on the release's write (a late renew) is re-read and retried: the holder is cleared."""
    ns = kube_namespace
    a = await _leading_through_proxy(kube, ns, kube_proxy, candidates)
    await a.cancel()
    kube_proxy.fail(409, when=lambda method, path: method == "PUT" and "/leases/" in path)
    await a.elector.release()
    assert kube_proxy.count(lambda entry: entry.injected) == 1
    assert not kube.api("GET", _lease_path(ns))["spec"].get("holderIdentity")


async def test_a_partitioned_leader_stops_before_the_standby_starts(
    kube: KubeCluster, kube_namespace: str, kube_proxy: FaultProxy, candidates: Callable[..., Any]
) -> None:
    """A leader cut off from the API (503s) has stopped leading before the standby takes over."""
    ns = kube_namespace
    a = await _leading_through_proxy(kube, ns, kube_proxy, candidates)
    b = await candidates(ns, "b")
    b.start()
    await asyncio.sleep(RETRY * 3)
    assert not b.leads
    kube_proxy.fail(503, count=10**9, when=lambda method, path: "/leases" in path)
    await _until(lambda: b.leads, 4.0 + SLACK, "b to take over")
    assert a.stopped, "a never stopped leading"
    assert a.stopped[0] < b.started[0], "two leaders at once"


async def test_5xx_lose_leadership_at_the_renew_deadline_not_earlier_and_it_comes_back(
    kube: KubeCluster, kube_namespace: str, kube_proxy: FaultProxy, candidates: Callable[..., Any]
) -> None:
    """500s on Lease calls end leadership at the renew deadline, not before; then it leads again."""
    ns = kube_namespace
    a = await _leading_through_proxy(kube, ns, kube_proxy, candidates)
    failing = True
    kube_proxy.fail(500, count=10**9, when=lambda method, path: failing and "/leases" in path)
    broken = time.monotonic()
    lost = await _until(lambda: not a.leads, RENEW + SLACK, "a to give up") - broken
    assert lost >= RENEW - RETRY - 0.1, f"gave up after {lost}s, before the renew deadline"
    assert a.task is not None
    assert a.task.done()
    assert a.task.exception() is None
    failing = False
    a.start()  # the same elector stands again once the server answers
    await _until(lambda: a.leads, 10, "a to lead again")
    assert kube_proxy.count(lambda entry: entry.injected) > 1


async def test_a_hung_api_server_ends_leadership_at_the_renew_deadline(
    kube: KubeCluster, kube_namespace: str, candidates: Callable[..., Any]
) -> None:
    """Requests that never answer (API server SIGSTOPped) cannot stretch the renew deadline."""
    a = await candidates(kube_namespace, "a")
    a.start()
    await _until(lambda: a.leads, 10, "a to lead")
    apiserver = kube._procs["kube-apiserver"]  # the session server of this test process
    os.kill(apiserver.pid, signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        lost = await _until(lambda: not a.leads, RENEW + SLACK, "a to give up") - frozen
        assert lost <= RENEW + 0.5, lost
    finally:
        os.kill(apiserver.pid, signal.SIGCONT)
    a.start()
    await _until(lambda: a.leads, 20, "a to lead again once the server answers")
