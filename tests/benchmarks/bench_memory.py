"""Cluster mode's memory per watched resource, central and node-local, against a real
kube-apiserver: the steady RSS of ``winspec run`` once everything is reconciled, at two sizes,
and the bytes per resource from the slope between them.

Run: ``python -m tests.benchmarks.bench_memory [--sizes 10000 20000]`` (needs the binaries of
.ci/install-kube-apiserver.sh). It starts its own etcd + kube-apiserver (tests/kube.py) with the
server's default settings (the watch cache on).

One namespace grows to each size in turn: WindowsContainers as bench_kubernetes makes them
(each refers to one Secret), every tenth one labelled ``winspec.io/node-name`` with the node
all of them are scheduled to. At each size, one after the other, each from a new empty bundle
root and stopped (SIGTERM) after its reading:

- **central**: ``winspec run --source kubernetes`` (default settings apart from paths, no leader
  election, ``--workers 16``) watches every resource of the namespace and reconciles them all;
- **node-local**: the same with ``--node-name``: it lists and watches only the resources
  labelled with its node (the API server filters them), a tenth of the namespace, as one
  instance of the DaemonSet of manifests/overlays/node-local would on a node holding them.

Read: ``VmRSS`` 5 s after the last resource is reconciled (its /metrics count every one as a
success), and the peak (``VmHWM``). The baseline (size 0) is the same command on an empty
namespace, read 5 s after its /readyz answers. Bytes per resource: the difference of the
steady RSS between the two sizes over the difference of the resources each watched (the
baseline is printed beside it, to see whether the growth is linear from the start).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from controller.cluster import NODE_LABEL
from tests.benchmarks.bench_kubernetes import (
    bench_cluster,
    peak_rss_mb,
    populate,
    winspec_argv,
    winspec_successes,
)
from tests.clustermode import NODE
from tests.kube import KubeCluster
from tests.processes import clean_env, free_port

NS = "bench-memory"
EMPTY = "bench-memory-empty"
SETTLE = 5.0  # seconds between the last reconcile and the reading
NODE_SHARE = 10  # every tenth resource is labelled with the measured node


@dataclass(frozen=True)
class Reading:
    """One process's memory at one size."""

    shape: str
    watched: int
    seconds: float
    rss_mb: float
    peak_mb: float


def rss_mb(pid: int) -> float:
    """The current resident set size of a live process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def measure(kube: KubeCluster, shape: str, ns: str, watched: int, scratch: Path) -> Reading:
    """Start winspec (central, or node-local with ``--node-name``), wait until it has reconciled
    ``watched`` resources (0: until ready), let it settle, read its memory, stop it."""
    port = free_port()
    bundles = Path(tempfile.mkdtemp(prefix=f"{shape}-", dir=scratch))
    argv = winspec_argv(kube, ns, bundles, port)
    argv += ["--node-name", NODE] if shape == "node-local" else []
    started = time.monotonic()
    child = subprocess.Popen(
        argv, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            time.sleep(0.2)
            if child.poll() is not None:
                raise RuntimeError(f"winspec ({shape}) exited with {child.returncode}")
            if (winspec_successes(port) >= watched > 0) or (watched == 0 and _ready(port)):
                break
        seconds = time.monotonic() - started
        time.sleep(SETTLE)
        reading = Reading(shape, watched, seconds, rss_mb(child.pid), peak_rss_mb(child.pid) or 0)
    finally:
        child.terminate()
        child.wait(30)
    print(
        f"{shape} {watched}: {reading.rss_mb:.1f} MB ({reading.seconds:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    return reading


def run(kube: KubeCluster, sizes: list[int], scratch: Path) -> list[Reading]:
    """The baselines, then each size: grow the namespace, read central, then node-local."""
    kube.create_namespace(EMPTY)
    readings = [measure(kube, shape, EMPTY, 0, scratch) for shape in ("central", "node-local")]
    made = 0
    for size in sorted(sizes):
        print(f"creating resources {made} … {size - 1} in {NS} ...", file=sys.stderr, flush=True)
        populate(
            kube,
            NS,
            size - made,
            first=made,
            labels=lambda i: {NODE_LABEL: NODE} if i % NODE_SHARE == 0 else {},
        )
        made = size
        readings.append(measure(kube, "central", NS, size, scratch))
        mine = len(range(0, size, NODE_SHARE))
        readings.append(measure(kube, "node-local", NS, mine, scratch))
    return readings


MIB = 1024 * 1024
PROJECTED = 100_000  # resources in the cluster of the projection line


def report(readings: list[Reading]) -> None:
    """The readings, then per shape the bytes per watched resource (slope between the two
    sizes, and from the baseline to the first size) and what they project."""
    print(f"{'shape':10} {'watched':>8} {'steady RSS':>11} {'peak RSS':>9} {'seconds':>8}")
    for r in readings:
        print(f"{r.shape:10} {r.watched:8d} {r.rss_mb:8.1f} MB {r.peak_mb:6.1f} MB "
              f"{r.seconds:8.1f}")  # fmt: skip
    for shape in ("central", "node-local"):
        base, low, high = [r for r in readings if r.shape == shape]
        slope = (high.rss_mb - low.rss_mb) * MIB / (high.watched - low.watched)
        start = (low.rss_mb - base.rss_mb) * MIB / low.watched
        # The line through the two sizes, at no resource: the idle process plus what its first
        # reconciles load once (modules, caches); projections follow that line.
        fixed = low.rss_mb - low.watched * slope / MIB
        print(f"{shape}: {slope:,.0f} bytes per watched resource from {low.watched:,} to "
              f"{high.watched:,} ({start:,.0f} from none to {low.watched:,}); "
              f"{base.rss_mb:.1f} MB watching none, {fixed:.1f} MB where the line through the "
              f"two sizes meets none")  # fmt: skip
        sizes = (PROJECTED,) if shape == "central" else (100, 1000)
        print(f"{shape}, projected per process: "
              + ", ".join(f"{fixed + k * slope / MIB:,.0f} MB with {k:,} resources"
                          for k in sizes))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[10000, 20000], metavar="N")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with bench_cluster(watch_cache=True) as (kube, scratch):
        readings = run(kube, args.sizes, scratch)
    report(readings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
