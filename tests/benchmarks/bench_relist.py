"""Docker mode started beside 1,000 existing containers: the relist, next to its floor.

Run: ``python -m tests.benchmarks.bench_relist [--containers N] [--workers W] [--dir DIR]`` (as
root, with Debian's docker.io installed; it starts its own private dockerd from tests/dockerd.py
and removes it afterwards).

``N`` containers are created first (not timed). Then, on the same engine and file system:

1. **winspec, cold**: :class:`adapters.docker_mode.DockerMode` starts in this process with an empty
   bundle root (its default settings apart from the paths and ``W`` workers). Timed from
   ``run()`` to the ``N``-th bundle made durable (the writer is observed as in
   :mod:`tests.benchmarks.bench_docker`): connect, list, inspect every container and its image,
   generate, write.
2. **winspec, warm**: the same again over the bundles of phase 1 (a restart with nothing
   changed): timed to the ``N``-th write that found its bundle up to date.
3. **verify**: every bundle of phase 2 read back and compared with its content
   (:func:`adapters.bundles.local.find_drift`, drift repair's check, which phase 2 already
   included), alone, on ``W`` threads: its rate beside the floor's write rate.
4. **floor**: the least a relist must do: list the containers, then with ``W`` concurrent
   workers inspect each one (``GET /containers/{id}/json``) and write a file of the size of
   winspec's median ``config.json`` durably (write, fsync, rename, directory fsync), one
   aiohttp session; and the same without the writes (inspect only, the warm floor).

Printed: each phase's time and rate, and the ratios cold/floor and warm/inspect-only floor.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import aiohttp

import adapters.docker.mode as docker_mode
from adapters.bundles.local import LocalBundleWriter, find_drift
from controller.bundle import CONFIG_FILE, BundleContent
from controller.settings import load_settings
from tests.benchmarks.bench_docker import floor_write
from tests.benchmarks.engine import bench_parser, private_engine
from tests.dockerd import DockerDaemon


class _CountingWriter(LocalBundleWriter):
    """The real writer, noting when the ``target``-th write (changed or not) returned."""

    target = 0
    done = 0
    changed = 0
    finished: asyncio.Event | None = None
    sizes: list[int] = []  # noqa: RUF012 - shared on purpose: DockerMode builds the writer
    contents: dict[str, BundleContent] = {}  # noqa: RUF012 - the same

    async def write(self, bundle_id: str, content: BundleContent) -> bool:
        written = bool(await super().write(bundle_id, content))
        cls = _CountingWriter
        cls.done += 1
        cls.changed += written
        cls.contents[bundle_id] = content
        if written:
            cls.sizes.append(len(content.files[CONFIG_FILE]))
        if cls.done >= cls.target and cls.finished is not None:
            cls.finished.set()
        return written


async def run_winspec(daemon: DockerDaemon, scratch: Path, count: int, workers: int) -> float:
    """Start DockerMode, wait for ``count`` bundle writes, stop it; seconds to the last."""
    settings = load_settings(
        {
            "docker_host": daemon.host,
            "bundle_root": str(scratch / "bundles"),
            "secrets_dir": str(scratch / "secrets"),
            "listen": "127.0.0.1:0",
            "workers": workers,
            "log_format": "console",
            "log_level": "warning",
        }
    )
    _CountingWriter.target, _CountingWriter.done, _CountingWriter.changed = count, 0, 0
    _CountingWriter.finished = asyncio.Event()
    with mock.patch.object(docker_mode, "LocalBundleWriter", _CountingWriter):
        mode = docker_mode.DockerMode(settings)
        began = time.perf_counter()
        run = asyncio.ensure_future(mode.run())
        try:
            waiter = asyncio.ensure_future(_CountingWriter.finished.wait())
            await asyncio.wait({waiter, run}, timeout=600, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if run.done():
                run.result()
            took = time.perf_counter() - began
        finally:
            mode.request_stop()
            await asyncio.wait_for(run, timeout=60)
    if _CountingWriter.done < count:
        raise TimeoutError(f"only {_CountingWriter.done} of {count} bundles within 600s")
    return took


async def run_floor(daemon: DockerDaemon, directory: Path, workers: int, size: int) -> float:
    """List, then inspect every container (and write a file of ``size`` bytes unless 0) into
    the existing ``directory``."""
    data = b"f" * size
    connector = aiohttp.UnixConnector(path=daemon.socket_path, limit=workers)
    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get("http://docker/containers/json", params={"all": "1"}) as response:
            ids = [c["Id"] for c in await response.json()]
        queue: asyncio.Queue[str] = asyncio.Queue()
        for cid in ids:
            queue.put_nowait(cid)

        async def worker() -> None:
            while not queue.empty():
                cid = queue.get_nowait()
                async with session.get(f"http://docker/containers/{cid}/json") as response:
                    await response.read()
                if size:
                    await asyncio.to_thread(floor_write, directory, f"{cid}.json", data)

        await asyncio.gather(*(worker() for _ in range(workers)))
    return time.perf_counter() - began


def run_verify(root: Path, workers: int) -> float:
    """Read back every bundle below ``root`` and compare it with its content (no drift expected)."""
    contents = _CountingWriter.contents
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        drift = list(pool.map(lambda i: find_drift(root / i, contents[i].files), contents))
    took = time.perf_counter() - began
    assert not any(drift), "drift in bundles nobody touched"
    return took


def _line(name: str, seconds: float, count: int) -> str:
    return f"{name:34} {seconds:8.2f} s  {count / seconds:9.0f} containers/s"


def main(argv: list[str] | None = None) -> int:
    """Create the containers, run the phases, print, clean up."""
    parser = bench_parser(__doc__)
    parser.add_argument("--containers", type=int, default=1000, help="default 1000")
    parser.add_argument("--workers", type=int, default=4, help="winspec workers (default 4)")
    args = parser.parse_args(argv)
    with private_engine("bench-relist", args.dir) as (daemon, scratch):
        (scratch / "secrets").mkdir()
        with ThreadPoolExecutor(max_workers=8) as pool:
            names = [f"relist-{i:05d}" for i in range(args.containers)]
            list(pool.map(daemon.create_container, names))
        n = args.containers
        cold = asyncio.run(run_winspec(daemon, scratch, n, args.workers))
        assert _CountingWriter.changed == n, _CountingWriter.changed
        warm = asyncio.run(run_winspec(daemon, scratch, n, args.workers))
        assert _CountingWriter.changed == 0, _CountingWriter.changed
        verify = run_verify(scratch / "bundles", args.workers)
        size = int(statistics.median(_CountingWriter.sizes))
        (scratch / "floor").mkdir()
        floor = asyncio.run(run_floor(daemon, scratch / "floor", args.workers, size))
        inspect_only = asyncio.run(run_floor(daemon, scratch / "floor", args.workers, 0))
        version = daemon.call("GET", "/version")
    print(
        f"engine: dockerd {version.get('Version')} (vfs), {n} existing containers, "
        f"{args.workers} workers; floor file {size} bytes (winspec's median config.json)"
    )
    print(_line("winspec cold (no bundles yet)", cold, n))
    print(_line("floor: list + inspect + write", floor, n))
    print(_line("winspec warm (all up to date)", warm, n))
    print(_line("floor: list + inspect", inspect_only, n))
    print(_line("verify only (read back, compare)", verify, n))
    print(f"ratio cold/floor {cold / floor:.2f}x, warm/inspect-only {warm / inspect_only:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
