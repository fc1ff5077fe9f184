"""Cluster mode's memory per watched resource, central and node-local, against a real
kube-apiserver: the steady RSS of ``winspec run`` once everything is reconciled, at two sizes,
and the bytes per resource from the slope between them.

Run: ``python -m tests.benchmarks.bench_memory [--sizes N N [N ...]] [--node-share K]`` (needs
the binaries of .ci/install-kube-apiserver.sh). It starts its own etcd + kube-apiserver
(tests/kube.py) with the server's default settings (the watch cache on).

One namespace grows to each size in turn (10,000 and 20,000 unless ``--sizes`` says otherwise):
WindowsContainers as bench_kubernetes makes them (each refers to one Secret), every K-th one
(tenth unless ``--node-share`` says otherwise; with 1, all) labelled ``winspec.io/node-name``
with the node all of them are scheduled to. At each size, one after the other, each from a new
empty bundle root and stopped (SIGTERM) after its reading:

- **central**: ``winspec run --source kubernetes`` (default settings apart from paths, no leader
  election, ``--workers 16``) watches every resource of the namespace and reconciles them all;
- **node-local**: the same with ``--node-name``: it lists and watches only the resources
  labelled with its node (the API server filters them), a tenth of the namespace by default, as
  one instance of the DaemonSet of manifests/overlays/node-local would on a node holding them.
  With ``--node-share 1`` both shapes watch the same resources, so their costs compare at equal
  sizes.

Read: ``VmRSS`` 5 s after the last resource is reconciled (its /metrics count every one as a
success), and the peak (``VmHWM``). The baseline (size 0) is the same command on an empty
namespace, read 5 s after its /readyz answers. Bytes per resource: the difference of the
steady RSS between the two largest sizes over the difference of the resources each watched
(the slope from the baseline, and between each two sizes in turn, printed beside it, to see
whether the growth is linear from the start); projections follow the line through the two
largest sizes.
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
NODE_SHARE = 10  # by default every tenth resource is labelled with the measured node


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


def run(
    kube: KubeCluster, sizes: list[int], scratch: Path, node_share: int = NODE_SHARE
) -> list[Reading]:
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
            labels=lambda i: {NODE_LABEL: NODE} if i % node_share == 0 else {},
        )
        made = size
        readings.append(measure(kube, "central", NS, size, scratch))
        mine = len(range(0, size, node_share))
        readings.append(measure(kube, "node-local", NS, mine, scratch))
    return readings


MIB = 1024 * 1024


def _slope(low: Reading, high: Reading) -> float:
    """Bytes of steady RSS per watched resource from ``low`` to ``high``."""
    return (high.rss_mb - low.rss_mb) * MIB / (high.watched - low.watched)


PROJECTED = 100_000  # resources in the cluster of the projection line


def report(readings: list[Reading]) -> None:
    """The readings, then per shape the bytes per watched resource (slope between the two
    largest sizes, and from the baseline to the first size) and what they project."""
    print(f"{'shape':10} {'watched':>8} {'steady RSS':>11} {'peak RSS':>9} {'seconds':>8}")
    for r in readings:
        print(f"{r.shape:10} {r.watched:8d} {r.rss_mb:8.1f} MB {r.peak_mb:6.1f} MB "
              f"{r.seconds:8.1f}")  # fmt: skip
    for shape in ("central", "node-local"):
        base, *measured = [r for r in readings if r.shape == shape]
        low, high = measured[-2:]
        slope = _slope(low, high)
        first = measured[0]
        start = _slope(base, first)
        if len(measured) > 2:
            steps = zip([base, *measured], measured, strict=False)
            print(f"{shape}, bytes per watched resource between each two sizes: "
                  + ", ".join(f"{_slope(a, b):,.0f} ({a.watched:,} to {b.watched:,})"
                              for a, b in steps))  # fmt: skip
        # The line through the two largest sizes, at no resource: the idle process plus what
        # its first reconciles load once (modules, caches); projections follow that line.
        fixed = low.rss_mb - low.watched * slope / MIB
        print(f"{shape}: {slope:,.0f} bytes per watched resource from {low.watched:,} to "
              f"{high.watched:,} ({start:,.0f} from none to {first.watched:,}); "
              f"{base.rss_mb:.1f} MB watching none, {fixed:.1f} MB where the line through "
              f"those two sizes meets none")  # fmt: skip
        sizes = (PROJECTED,) if shape == "central" else (100, 1000)
        print(f"{shape}, projected per process: "
              + ", ".join(f"{fixed + k * slope / MIB:,.0f} MB with {k:,} resources"
                          for k in sizes))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[10000, 20000],
        metavar="N",
        help="the namespace's sizes, two or more (default: 10000 20000)",
    )
    parser.add_argument(
        "--node-share",
        type=int,
        default=NODE_SHARE,
        metavar="K",
        help="label every K-th resource with the node; node-local watches those (default: 10; "
        "1: all, so both shapes watch the same resources)",
    )
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes))
    if len(sizes) < 2 or sizes[0] < 1 or args.node_share < 1:
        parser.error("need two or more different sizes above 0, and --node-share of 1 or more")
    if len(range(0, sizes[0], args.node_share)) == len(range(0, sizes[1], args.node_share)):
        parser.error("the two smallest sizes give node-local the same resources: space them out")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with bench_cluster(watch_cache=True) as (kube, scratch):
        readings = run(kube, sizes, scratch, args.node_share)
    report(readings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
