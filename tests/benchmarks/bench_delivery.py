"""Central delivery against node-local mode: N simulated Windows nodes, R resources created while
the controllers run, bundles per second and the latency from resource created to bundle durable
on its node, both shapes in the same run.

Run: ``python -m tests.benchmarks.bench_delivery [--nodes N] [--resources R] [--workers W]``
(needs the binaries of .ci/install-kube-apiserver.sh and openssl). It starts its own etcd +
kube-apiserver (tests/kube.py); no kubelet runs.

Each "node" is a Node object; in the central phase also a real ``winspec agent`` child process
on a loopback port (TLS with a CA this run makes, tokens checked by the real API server through
TokenReview) and a Pod object bound to the node whose status says it runs at 127.0.0.1, as in
tests/integration/test_remote_delivery.py.

1. **central**: one ``winspec run --source kubernetes --delivery agent`` (no leader election,
   ``--workers W``) resolves and generates every bundle and PUTs it to the agent of the
   resource's node over HTTPS.
2. **node-local**: one ``winspec run --source kubernetes --node-name <node>`` per node (the same
   ``--workers W`` each), each writing its own node's bundles to its own local bundle root.

Both phases get the same R resources (each phase in its own namespace), spread round-robin over
the nodes and labelled ``winspec.io/node-name`` (node-local mode selects by it). They are POSTed
(8 at a time) only once every controller answers ``/readyz``, so start-up is not measured.

Measured per resource: from just before the test's POST (wall clock; ``creationTimestamp`` has
whole seconds only) to the modification time of the bundle's ``.digest`` on the node, the last
file written before the bundle's directory is renamed into place and synced (so within that
rename + fsync of durable). Throughput: R over the time from the first POST to the last
``.digest``; beside it the rate of the POSTs themselves (the offered rate, which bounds it).
Everything shares this machine's cores: the API server, etcd, the agents and the
controllers, unlike a real cluster where each node brings its own.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.cluster import NODE_LABEL
from tests.agent import AgentProcess
from tests.benchmarks.bench_kubernetes import peak_rss_mb
from tests.clustermode import windows_container
from tests.integration.test_remote_delivery import Delivery, _agent_pod, _node, make_delivery
from tests.kube import KubeCluster
from tests.processes import clean_env, free_port, http_status, winspec_run_command
from tests.support.waiting import wait_for

AGENTS_NS = "bench-agents"
WC = "/apis/winspec.io/v1alpha1/namespaces/{ns}/windowscontainers"


@dataclass
class Figures:
    """One phase's results."""

    name: str
    nodes: int
    latencies: list[float]
    seconds: float
    #: How long the POSTs took (the offered rate: a phase cannot be faster).
    posting: float
    peak_rss_mb: float

    @property
    def rate(self) -> float:
        """Bundles durable per second."""
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """The ``p`` quantile of the latencies, in milliseconds (nearest rank)."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))] * 1000


@contextmanager
def children(commands: list[list[str]]) -> Iterator[list[tuple[subprocess.Popen[bytes], int]]]:
    """Start ``winspec run`` children (each with its own ``--listen`` port) until they all answer
    ``/readyz`` 200; stop them (SIGTERM) when the block ends."""
    started: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        for argv in commands:
            port = free_port()
            proc = subprocess.Popen(
                [*argv, "--listen", f"127.0.0.1:{port}", "--log-level", "warning"],
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
            started.append((proc, port))
        for proc, port in started:

            def ready(proc: subprocess.Popen[bytes] = proc, port: int = port) -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"winspec run exited with {proc.returncode}")
                return http_status(f"http://127.0.0.1:{port}/readyz") == 200

            wait_for(ready, 60, interval=0.1, what="winspec run /readyz")
        yield started
    finally:
        for proc, _ in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in started:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def resource(name: str, node: str) -> dict[str, Any]:
    """A WindowsContainer for ``node``, labelled with it (node-local mode selects by the label)."""
    body = windows_container(name, nodeName=node)
    body["metadata"]["labels"] = {NODE_LABEL: node}
    return body


def create_and_measure(
    kube: KubeCluster,
    ns: str,
    placement: dict[str, tuple[str, Path]],
    pids: list[int],
) -> tuple[list[float], float, float, float]:
    """POST every resource (``name`` → its node and where its bundle lands), wait for every
    ``.digest``; the latencies, the phase's seconds, the POSTs' seconds, and the children's
    summed peak RSS."""
    kube.create_namespace(ns)
    posted: dict[str, float] = {}

    def create(name: str) -> None:
        node, _ = placement[name]
        posted[name] = time.time()
        kube.api("POST", WC.format(ns=ns), resource(name, node))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, sorted(placement)))
    posting = time.time() - min(posted.values())
    durable: dict[str, float] = {}
    deadline = time.monotonic() + 120 + len(placement)
    peaks = dict.fromkeys(pids, 0.0)
    while len(durable) < len(placement):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ns}: {len(placement) - len(durable)} bundles never arrived")
        for pid in pids:
            peaks[pid] = max(peaks[pid], peak_rss_mb(pid) or 0.0)
        for name, (_, bundle) in placement.items():
            if name not in durable:
                with suppress(FileNotFoundError):
                    durable[name] = os.stat(bundle / ".digest").st_mtime
        time.sleep(0.2)
    latencies = [durable[n] - posted[n] for n in placement]
    seconds = max(durable.values()) - min(posted.values())
    return latencies, seconds, posting, sum(peaks.values())


def central(
    kube: KubeCluster, d: Delivery, nodes: list[str], count: int, workers: int, scratch: Path
) -> Figures:
    """One controller delivering to one real agent per node."""
    ns = "bench-central"
    agents: list[AgentProcess] = []
    try:
        for node in nodes:
            (scratch / node).mkdir()
            agent = d.agent(scratch / node / "bundles")
            agent.start()
            agents.append(agent)
            _agent_pod(d, node, agent.port)
        placement = {
            f"r{i:05d}": (nodes[i % len(nodes)], agents[i % len(nodes)].root / ns / f"r{i:05d}")
            for i in range(count)
        }
        command = winspec_run_command(
            "--source", "kubernetes", "--kubeconfig", str(kube.admin_kubeconfig),
            "--bundle-root", str(scratch / "controller"), "--namespace", ns,
            "--no-leader-elect", "--workers", str(workers), "--delivery", "agent",
            "--agent-namespace", d.namespace, "--agent-ca-file", str(d.tls.ca),
            "--agent-token-file", str(d.token_file),
        )  # fmt: skip
        with children([command]) as started:
            pids = [p.pid for p, _ in started] + [a.proc.pid for a in agents if a.proc]
            measured = create_and_measure(kube, ns, placement, pids)
    finally:
        for agent in agents:
            agent.stop()
    return Figures("central", len(nodes), *measured)


def node_local(
    kube: KubeCluster, nodes: list[str], count: int, workers: int, scratch: Path
) -> Figures:
    """One controller per node, each writing only its own node's bundles locally."""
    ns = "bench-local"
    placement = {
        f"r{i:05d}": (nodes[i % len(nodes)], scratch / nodes[i % len(nodes)] / ns / f"r{i:05d}")
        for i in range(count)
    }
    common = (
        "--source", "kubernetes", "--kubeconfig", str(kube.admin_kubeconfig), "--namespace", ns,
        "--no-leader-elect", "--workers", str(workers), "--delivery", "local",
    )  # fmt: skip
    commands = [
        winspec_run_command(*common, "--bundle-root", str(scratch / node), "--node-name", node)
        for node in nodes
    ]
    with children(commands) as started:
        measured = create_and_measure(kube, ns, placement, [p.pid for p, _ in started])
    return Figures("node-local", len(nodes), *measured)


def report(results: list[Figures]) -> None:
    """Print both phases side by side."""
    print(
        f"{'shape':10} {'nodes':>5} {'bundles':>7} {'seconds':>7} {'per s':>6} {'POST/s':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'peak RSS':>9}"
    )
    for r in results:
        print(
            f"{r.name:10} {r.nodes:5d} {len(r.latencies):7d} {r.seconds:7.1f} {r.rate:6.1f} "
            f"{len(r.latencies) / r.posting:6.1f} "
            f"{r.percentile(0.5):7.0f} {r.percentile(0.99):7.0f} {r.percentile(1.0):7.0f} "
            f"{r.peak_rss_mb:6.0f} MB"
        )
    print("peak RSS: the controller(s) plus, for central, the agents (sum of each one's peak)")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--resources", type=int, default=400)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.resources < 1 or args.workers < 1:
        parser.error("--nodes, --resources and --workers must be at least 1")
    # SIGTERM too stops the API server and etcd this started (through the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    kube = KubeCluster()
    try:
        kube.start()
        kube.apply_crd()
        kube.apply_gmsa_crd()
        nodes = [f"bench-win-{i}" for i in range(args.nodes)]
        for node in nodes:
            _node(kube, node)
        with tempfile.TemporaryDirectory(prefix="winspec-bench-") as tmp:
            scratch = Path(tmp)
            d = make_delivery(kube, AGENTS_NS, scratch)
            (scratch / "central").mkdir()
            (scratch / "local").mkdir()
            print(f"central: {args.resources} resources, {args.nodes} agents ...", file=sys.stderr)
            results = [central(kube, d, nodes, args.resources, args.workers, scratch / "central")]
            print(f"node-local: {args.nodes} controllers ...", file=sys.stderr)
            results.append(node_local(kube, nodes, args.resources, args.workers, scratch / "local"))
        report(results)
    finally:
        kube.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
