"""A flood of 10,000 engine events at ``winspec run``: its memory, next to its floor.

Run: ``python -m tests.benchmarks.bench_flood [--events E] [--containers C] [--dir DIR]`` (as
root, with Debian's docker.io installed; it starts its own private dockerd from tests/dockerd.py
and removes it afterwards).

``winspec run`` runs as a child process (default settings apart from the paths), so its memory
is its own: ``VmRSS`` is sampled from ``/proc`` every 20 ms and ``VmHWM`` (the kernel's peak) read
at the end. The flood is real engine events, as fast as 8 client threads can make them: ``C``
containers created, then ``POST /containers/{id}/update`` over them round-robin until ``E``
events were made in all (each create and each update is one event winspec watches). Then it
waits until every container has its bundle and the work queue is empty.

Printed: events made and received, the time to drain, reconciles and bundle writes, and the
memory: peak and after the flood, beside two floors measured in the same run: the same process
idle right after it became ready, and a bare interpreter that only imports winspec's modules.
The work queue keeps one entry per container, not per event (an event for a queued key only
marks it dirty), and the image cache is capped, so memory follows containers, not events.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.benchmarks.engine import bench_parser, private_engine
from tests.dockerd import DockerDaemon
from tests.integration.winspec_process import WinspecProcess
from tests.processes import REPO, clean_env


def memory_kib(pid: int, field: str) -> int:
    """One ``Vm*`` field of ``/proc/<pid>/status``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def bare_interpreter_kib() -> int:
    """Peak RSS of an interpreter that imports what ``winspec run`` imports, then stops."""
    code = (
        "import adapters.cli, adapters.docker.mode, adapters.run;"
        "print(open('/proc/self/status').read())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise KeyError("VmHWM")


def flood(daemon: DockerDaemon, containers: int, events: int) -> list[str]:
    """Create ``containers``, then update them round-robin; ``events`` actions in all."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        names = [f"flood-{i:05d}" for i in range(containers)]
        ids = list(pool.map(daemon.create_container, names))
        updates = max(0, events - containers)
        shares = itertools.cycle([256, 512, 1024, 2048])
        bodies = [
            (cid, {"CpuShares": next(shares)})
            for cid in itertools.islice(itertools.cycle(ids), updates)
        ]
        list(
            pool.map(
                lambda item: daemon.call("POST", f"/containers/{item[0]}/update", item[1]), bodies
            )
        )
    return ids


def main(argv: list[str] | None = None) -> int:
    """Start the engine and winspec, flood, wait for the drain, print, clean up."""
    parser = bench_parser(__doc__)
    parser.add_argument("--events", type=int, default=10_000, help="default 10000")
    parser.add_argument("--containers", type=int, default=1000, help="default 1000")
    args = parser.parse_args(argv)
    with private_engine("bench-flood", args.dir) as (daemon, scratch):
        proc = WinspecProcess(daemon, scratch, "--log-level", "warning")
        try:
            _measure(daemon, proc, args)
        finally:
            proc.close()
    return 0


def _measure(daemon: DockerDaemon, proc: WinspecProcess, args: argparse.Namespace) -> None:
    """Start winspec, flood it, wait for the drain and print the figures."""
    proc.start()
    proc.wait_ready()
    assert proc.proc is not None
    pid = proc.proc.pid
    time.sleep(1.0)
    idle = memory_kib(pid, "VmRSS")
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(memory_kib(pid, "VmRSS"))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.monotonic()
    ids = flood(daemon, args.containers, args.events)
    made = time.monotonic() - began
    while not (
        all((proc.root / cid / "config.json").is_file() for cid in ids)
        and proc.metric("workqueue_depth") == 0
        and proc.metric("controller_runtime_active_workers") == 0
    ):
        proc.check_alive()
        time.sleep(0.1)
    drained = time.monotonic() - began
    time.sleep(1.0)
    stop.set()
    sampler.join()
    after = memory_kib(pid, "VmRSS")
    peak = memory_kib(pid, "VmHWM")
    received = proc.metric("winspec_events_received_total")
    reconciles = proc.metric("controller_runtime_reconcile_total")
    written = proc.metric("winspec_bundles_written_total", result="written")
    adds = proc.metric("workqueue_adds_total")
    bare = bare_interpreter_kib()
    proc.stop()
    print(
        f"flood: {args.events} events ({args.containers} creates, "
        f"{args.events - args.containers} updates) made in {made:.1f} s "
        f"({args.events / made:.0f}/s); winspec received {received:.0f}"
    )
    print(
        f"drained {drained:.1f} s after the first event: {reconciles:.0f} reconciles, "
        f"{adds:.0f} queue adds, {written:.0f} bundle writes"
    )
    mib = 1024
    print(
        f"winspec RSS: peak {peak / mib:.1f} MiB (sampled max {max(samples) / mib:.1f}), "
        f"after the flood {after / mib:.1f} MiB"
    )
    print(
        f"floors: winspec idle after start {idle / mib:.1f} MiB; "
        f"bare interpreter with winspec's imports {bare / mib:.1f} MiB"
    )


if __name__ == "__main__":
    sys.exit(main())
