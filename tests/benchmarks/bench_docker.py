"""Docker mode against a real engine: container create event → bundle durable, next to the floor.

Run: ``python -m tests.benchmarks.bench_docker [--containers N] [--rate R] [--dir DIR]`` (as
root, with Debian's docker.io installed; it starts its own private dockerd from tests/dockerd.py
and removes it afterwards).

Three phases on the same engine and the same file system, one after the other:

1. **winspec**: :class:`adapters.docker_mode.DockerMode` runs in this process (its default settings
   apart from the paths). ``N`` containers are created at a steady ``R`` per second from a
   thread pool, so a slow create does not hold back the next one.
2. **floor**: the least any event-driven bundle writer must do. A minimal client streams the
   engine's ``/events`` (aiohttp, the same filter) and for each create event writes a file of
   the size of winspec's median ``config.json``, fsyncs it, renames it into place and fsyncs the
   directory; one event at a time. It inspects nothing and generates nothing. ``N`` new
   containers are created at the same rate.
3. **floor-b**: the same client writing a bundle's shape instead of the file (a new directory
   with ``config.json``, ``links.json`` and ``.digest``, made durable, renamed into place, the
   rename made durable, with winspec's own barriers:
   :func:`tests.benchmarks.floor_client.floor_bundle_write`), the least any writer of such
   bundles pays; ``N`` more containers at the same rate.

What is measured, per container, the same way in both phases:

* *event time*: the engine's own timestamp of the create event (``timeNano``), read from a
  separate ``/events`` stream in phase 1 and from the floor's own stream in phase 2. The engine
  and this process read the same wall clock.
* *durable time*: the wall clock when the write returned with everything on disk. For winspec
  the bundle writer is observed by a subclass whose ``write`` notes the time when the original
  returns (files and directories fsynced, the directory renamed into place, the root fsynced);
  it changes nothing else. Polling for ``config.json`` would see the rename before the last
  fsync and be up to a polling interval late, so it is not used.
* *write time*: when the write was called (winspec's bundle writer, the floor's file write),
  so that the latency splits into what came before the write (event delivery, for winspec
  also the queue, the inspect and the generator) and the write itself.

Printed: p50/p99/max latency (durable − event) and the throughput (containers over the time
from the first event to the last durable write), for each, and their ratios; then each phase's
latency split at the write. Throughput cannot exceed the offered rate ``R``; raise ``--rate`` to
look for the ceiling. Each phase is bounded: it gives up ``--timeout`` seconds after its last
create and reports what was missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp

import adapters.docker.mode as docker_mode
from adapters.bundles.local import LocalBundleWriter
from adapters.docker.client import DockerClient
from controller.bundle import CONFIG_FILE, BundleContent, WriteOutcome
from controller.settings import load_settings
from tests.benchmarks.floor_client import floor_bundle_write, floor_write
from tests.dockerd import DockerDaemon, dockerd_unavailable_reason

CREATE_FILTERS = json.dumps({"type": ["container"], "event": ["create"]})


@dataclass
class Phase:
    """Per-container times of one phase (wall clock, seconds)."""

    name: str
    event_at: dict[str, float] = field(default_factory=dict)
    durable_at: dict[str, float] = field(default_factory=dict)
    received_at: dict[str, float] = field(default_factory=dict)
    write_at: dict[str, float] = field(default_factory=dict)
    #: Seconds each container's inspect took (winspec only: the floor inspects nothing).
    inspect_took: dict[str, float] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    def latencies(self) -> list[float]:
        """Durable − event, in seconds, for every container with both."""
        return self.spans(self.event_at, self.durable_at)

    def spans(self, start: dict[str, float], end: dict[str, float]) -> list[float]:
        """``end`` − ``start``, in seconds, for every container with both."""
        return [end[cid] - start[cid] for cid in self.created if cid in start and cid in end]

    def throughput(self) -> float:
        """Containers made durable per second, from the first event to the last write."""
        done = [cid for cid in self.created if cid in self.durable_at and cid in self.event_at]
        if len(done) < 2:
            return 0.0
        span = max(self.durable_at[c] for c in done) - min(self.event_at[c] for c in done)
        return len(done) / span if span > 0 else 0.0

    def create_rate(self) -> float:
        """Creates per second as the engine timestamped them, first to last."""
        times = sorted(self.event_at[c] for c in self.created if c in self.event_at)
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def missing(self) -> int:
        """Containers created but never seen durable (or whose event was not seen)."""
        return sum(
            1 for cid in self.created if cid not in self.durable_at or cid not in self.event_at
        )


# -- the engine's event stream ---------------------------------------------------------------


async def stream_creates(
    daemon: DockerDaemon,
    on_create: Callable[[str, float, float], Any],
    opened: asyncio.Event,
) -> None:
    """Stream create events from the engine; call ``on_create(id, event time, receipt time)``."""
    connector = aiohttp.UnixConnector(path=daemon.socket_path)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.get("http://docker/events", params={"filters": CREATE_FILTERS}) as response,
    ):
        response.raise_for_status()
        opened.set()
        async for line in response.content:
            if not line.strip():
                continue
            received = time.time()
            event = json.loads(line)
            cid = (event.get("Actor") or {}).get("ID") or event.get("id")
            if cid:
                result = on_create(cid, event["timeNano"] / 1e9, received)
                if asyncio.iscoroutine(result):
                    await result


@contextlib.contextmanager
def background(coro: Any) -> Iterator[asyncio.Task[Any]]:
    """Run ``coro`` as a task for the duration of the block, then cancel it."""
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        task.cancel()


async def wait_open(opened: asyncio.Event, task: asyncio.Task[Any]) -> None:
    """Wait until a stream is open, or raise what ended its task."""
    waiter = asyncio.ensure_future(opened.wait())
    await asyncio.wait({waiter, task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()
    if not opened.is_set():
        raise TimeoutError("the /events stream did not open within 30s")


# -- creating containers at a steady rate ----------------------------------------------------


async def create_steadily(
    daemon: DockerDaemon, prefix: str, count: int, rate: float, pool: ThreadPoolExecutor
) -> list[str]:
    """Create ``count`` containers, the i-th issued at start + i/rate; their ids in order."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    futures = []
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        create = functools.partial(daemon.create_container, f"{prefix}-{i:05d}")
        futures.append(loop.run_in_executor(pool, create))
    return list(await asyncio.gather(*futures))


async def wait_all(phase: Phase, *, within: float) -> None:
    """Poll until every created container is durable, or ``within`` seconds pass."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            # Polling does not bias the figures: the times are noted where the writes return.
            while phase.missing():  # noqa: ASYNC110
                await asyncio.sleep(0.01)


# -- phase 1: winspec ------------------------------------------------------------------------


class _ObservedWriter(LocalBundleWriter):
    """The real bundle writer, noting when each changed bundle became durable."""

    phase: Phase | None = None

    async def write(self, bundle_id: str, content: BundleContent) -> bool | WriteOutcome:
        started = time.time()
        written = await super().write(bundle_id, content)
        phase = _ObservedWriter.phase
        if written and phase is not None and bundle_id not in phase.durable_at:
            phase.durable_at[bundle_id] = time.time()
            phase.write_at[bundle_id] = started
            phase.sizes.append(len(content.files[CONFIG_FILE]))
        return written


_real_get_raw = DockerClient.get_raw


async def _observed_get_raw(self: DockerClient, path: str, *, api: str, **kwargs: Any) -> bytes:
    """The real ``get_raw``, noting how long each container inspect of the phase took."""
    started = time.perf_counter()
    raw = await _real_get_raw(self, path, api=api, **kwargs)
    phase = _ObservedWriter.phase
    if api == "container_inspect" and phase is not None:
        phase.inspect_took.setdefault(path.split("/")[2], time.perf_counter() - started)
    return raw


async def _measure_winspec(
    mode: docker_mode.DockerMode,
    run: asyncio.Future[None],
    phase: Phase,
    daemon: DockerDaemon,
    args: argparse.Namespace,
    pool: ThreadPoolExecutor,
) -> None:
    deadline = time.monotonic() + 30
    while not mode.health.is_ready():
        if run.done():
            run.result()
        if time.monotonic() > deadline:
            raise TimeoutError("winspec did not become ready within 30s")
        await asyncio.sleep(0.01)

    def note(cid: str, event_at: float, received: float) -> None:
        phase.event_at[cid] = event_at
        phase.received_at[cid] = received

    opened = asyncio.Event()
    with background(stream_creates(daemon, note, opened)) as observer:
        await wait_open(opened, observer)
        phase.created = await create_steadily(
            daemon, "bench-winspec", args.containers, args.rate, pool
        )
        await wait_all(phase, within=args.timeout)


async def run_winspec(
    daemon: DockerDaemon, scratch: Path, args: argparse.Namespace, pool: ThreadPoolExecutor
) -> Phase:
    """Phase 1: DockerMode in-process; N containers at the rate; times per container."""
    phase = Phase("winspec")
    (scratch / "secrets").mkdir()
    settings = load_settings(
        {
            "docker_host": daemon.host,
            "bundle_root": str(scratch / "bundles"),
            "secrets_dir": str(scratch / "secrets"),
            "listen": "127.0.0.1:0",
            "workers": args.workers,
            "log_format": "console",
        }
    )
    _ObservedWriter.phase = phase
    # DockerMode builds its own writer when it starts serving: for this phase, it builds the
    # observing subclass.
    with (
        mock.patch.object(docker_mode, "LocalBundleWriter", _ObservedWriter),
        mock.patch.object(DockerClient, "get_raw", _observed_get_raw),
    ):
        mode = docker_mode.DockerMode(settings)
        run = asyncio.ensure_future(mode.run())
        try:
            await _measure_winspec(mode, run, phase, daemon, args, pool)
        finally:
            mode.request_stop()
            await asyncio.wait_for(run, timeout=60)
            _ObservedWriter.phase = None
    return phase


# -- phase 2: the floor ----------------------------------------------------------------------


async def run_floor(
    daemon: DockerDaemon,
    scratch: Path,
    args: argparse.Namespace,
    pool: ThreadPoolExecutor,
    size: int,
    *,
    bundle: bool = False,
) -> Phase:
    """Phase 2 (or with ``bundle`` 3): the minimal client; N new containers at the same rate;
    times per container."""
    phase = Phase("floor-b" if bundle else "floor")
    directory = scratch / phase.name
    directory.mkdir()
    data = b"f" * size

    async def handle(cid: str, event_at: float, received: float) -> None:
        phase.event_at[cid] = event_at
        phase.received_at[cid] = received
        phase.write_at[cid] = time.time()
        if bundle:
            await asyncio.to_thread(floor_bundle_write, directory, cid, data)
        else:
            await asyncio.to_thread(floor_write, directory, f"{cid}.json", data)
        phase.durable_at[cid] = time.time()

    opened = asyncio.Event()
    with background(stream_creates(daemon, handle, opened)) as client:
        await wait_open(opened, client)
        phase.created = await create_steadily(
            daemon, f"bench-{phase.name}", args.containers, args.rate, pool
        )
        await wait_all(phase, within=args.timeout)
    return phase


# -- report ----------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.1f} ms"


def _percentiles(samples: list[float]) -> tuple[float, float, float]:
    if len(samples) < 2:
        value = samples[0] if samples else float("nan")
        return value, value, value
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98], max(samples)


def _file_system(path: Path) -> str:
    best, fs = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount_point, fstype, *_ = line.split()
            if str(path).startswith(mount_point) and len(mount_point) > len(best):
                best, fs = mount_point, fstype
    except OSError:
        pass
    return fs


def report(
    daemon: DockerDaemon, scratch: Path, args: argparse.Namespace, phases: list[Phase]
) -> None:
    """Print the set-up, one line per phase and the ratios."""
    version = daemon.call("GET", "/version")
    winspec, floor, _ = phases
    size = int(statistics.median(winspec.sizes)) if winspec.sizes else 0
    print(
        f"engine: dockerd {version.get('Version')} (API {version.get('ApiVersion')}, vfs), "
        f"{os.cpu_count()} CPUs; files in {scratch} ({_file_system(scratch)})"
    )
    print(
        f"load: {args.containers} containers per phase, created at {args.rate:g}/s; "
        f"winspec with {args.workers} workers; floor file {size} bytes "
        f"(winspec's median config.json)"
    )
    print("latency: engine's create event timestamp -> bundle durable (write returned)")
    print(f"{'':10} {'p50':>11} {'p99':>11} {'max':>11} {'throughput':>14}  done")
    rows = {}
    for phase in phases:
        p50, p99, peak = _percentiles(phase.latencies())
        rows[phase.name] = (p50, p99, peak, phase.throughput())
        done = len(phase.created) - phase.missing()
        print(
            f"{phase.name:10} {_ms(p50):>11} {_ms(p99):>11} {_ms(peak):>11} "
            f"{phase.throughput():10.1f} /s  {done}/{len(phase.created)}"
        )
    w, f = rows["winspec"], rows["floor"]
    for name, of in (("floor", f), ("floor-b", rows["floor-b"])):
        ratio = [w[i] / of[i] if of[i] else float("nan") for i in range(4)]
        print(
            f"{'ratio':10} {ratio[0]:10.2f}x {ratio[1]:10.2f}x {ratio[2]:10.2f}x "
            f"{ratio[3]:12.2f}x   (winspec / {name})"
        )
    # What the engine managed: the offered rate is an upper bound, not a guarantee.
    made = {phase.name: phase.create_rate() for phase in phases}
    print(
        f"creates made by the engine (its event timestamps): winspec phase "
        f"{made['winspec']:.1f}/s, floor phases {made['floor']:.1f}/s and "
        f"{made['floor-b']:.1f}/s (offered {args.rate:g}/s)"
    )
    print("where the time goes (p50 / p99): event -> write called | the write (called -> durable)")
    for phase in phases:
        before = _percentiles(phase.spans(phase.event_at, phase.write_at))
        writing = _percentiles(phase.spans(phase.write_at, phase.durable_at))
        print(
            f"{phase.name:10} {_ms(before[0])} / {_ms(before[1])} | "
            f"{_ms(writing[0])} / {_ms(writing[1])}"
        )
    delivery = [floor.received_at[c] - floor.event_at[c] for c in floor.received_at]
    if delivery:
        p50, p99, _ = _percentiles(delivery)
        print(
            f"of which event delivery (engine timestamp -> client read): "
            f"p50 {_ms(p50).strip()}, p99 {_ms(p99).strip()}"
        )
    inspects = [winspec.inspect_took[c] for c in winspec.created if c in winspec.inspect_took]
    if inspects:
        p50, p99, _ = _percentiles(inspects)
        # What the floor leaves out: a create event carries no configuration to generate from.
        without = _percentiles(
            [
                winspec.durable_at[c] - winspec.event_at[c] - winspec.inspect_took[c]
                for c in winspec.created
                if c in winspec.inspect_took and c in winspec.durable_at and c in winspec.event_at
            ]
        )
        print(
            f"of which winspec's container inspect (the floor makes none): p50 "
            f"{_ms(p50).strip()}, p99 {_ms(p99).strip()}; winspec's latency less its inspect: "
            f"p50 {_ms(without[0]).strip()} ({without[0] / f[0]:.2f}x the floor, "
            f"{without[0] / rows['floor-b'][0]:.2f}x floor-b), "
            f"p99 {_ms(without[1]).strip()} ({without[1] / f[1]:.2f}x, "
            f"{without[1] / rows['floor-b'][1]:.2f}x)"
        )


async def _run(daemon: DockerDaemon, scratch: Path, args: argparse.Namespace) -> list[Phase]:
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="bench-create") as pool:
        winspec = await run_winspec(daemon, scratch, args, pool)
        size = int(statistics.median(winspec.sizes)) if winspec.sizes else 4096
        floor = await run_floor(daemon, scratch, args, pool, size)
        shape = await run_floor(daemon, scratch, args, pool, size, bundle=True)
    return [winspec, floor, shape]


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, start a private dockerd, run both phases, print, clean up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--containers", type=int, default=100, help="per phase (default 100)")
    parser.add_argument("--rate", type=float, default=20.0, help="creates per second (default 20)")
    parser.add_argument("--workers", type=int, default=4, help="winspec workers (default 4)")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait after the last create"
    )
    parser.add_argument("--dir", type=Path, help="parent of the scratch dir (default: TMPDIR)")
    args = parser.parse_args(argv)
    if args.containers < 2 or args.rate <= 0:
        parser.error("need --containers >= 2 and --rate > 0")
    reason = dockerd_unavailable_reason(probe=False)
    if reason is not None:
        print(f"bench_docker: cannot run: {reason}", file=sys.stderr)
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="winspec-bench-docker-", dir=args.dir))
    daemon = DockerDaemon()
    try:
        daemon.start()
        daemon.import_image()
        phases = asyncio.run(_run(daemon, scratch, args))
        report(daemon, scratch, args, phases)
    finally:
        daemon.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if all(phase.missing() == 0 for phase in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
