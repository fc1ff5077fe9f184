"""The floor of the Docker-mode benchmarks: the least a client must do, in its own process.

Run by :mod:`tests.benchmarks.bench_relist` as
``python -m tests.benchmarks.floor_client SOCKET DIR WORKERS SIZE [bundle]``: list the containers
of the engine at ``SOCKET`` (``GET /containers/json?all=1``), then with ``WORKERS`` concurrent
workers on one aiohttp session inspect each one (``GET /containers/{id}/json``) and, unless
``SIZE`` is 0, write a file of ``SIZE`` bytes durably into ``DIR`` (:func:`floor_write`), or with
``bundle`` a bundle's shape (:func:`floor_bundle_write`). It prints
``first TIME`` when its first container is done and ``done TIME CPU`` when the last is (wall
clock, seconds; the CPU time the process had used), so that the caller, which started the
process, times it from process start as it does ``winspec run``: the interpreter's start and
the imports a client needs (asyncio, aiohttp) are the floor's start-up.

It imports nothing of winspec (nor of the other benchmarks, which do), except for the bundle's
shape: there the group commit of winspec's writer (its least costly durability barrier), on first
use.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from functools import partial
from pathlib import Path

import aiohttp


def floor_write(directory: Path, name: str, data: bytes) -> None:
    """One file, durably and atomically: write, fsync, rename, fsync the directory."""
    tmp = directory / f".tmp-{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, directory / name)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def floor_bundle_write(directory: Path, name: str, data: bytes) -> None:
    """A bundle's shape, the least it can cost: a new directory holding ``config.json`` (``data``),
    ``links.json`` (none: every bundle has one) and ``.digest`` made durable, renamed into place,
    the rename made durable.

    The two barriers are those of winspec's writer on this file system: a ``syncfs`` shared by
    concurrent writers (:class:`adapters.bundles.fsops.GroupSync`), or where that is not known
    to be durable an fsync of each path. Nothing else of a bundle write is done: no check of
    what is there, no digest computed, no payload directories, no leftovers swept.
    """
    from adapters.bundles import fsops

    tmp = directory / f".tmp-{name}"
    os.mkdir(tmp, 0o700)
    fsops.write_file(tmp / "config.json", data)
    fsops.write_file(tmp / "links.json", b'{"links":[]}')
    fsops.write_file(tmp / ".digest", b"0" * 64 + b"\n")
    fsops.make_durable(
        directory,
        [
            partial(fsops.fsync_file, tmp / "config.json"),
            partial(fsops.fsync_file, tmp / "links.json"),
            partial(fsops.fsync_file, tmp / ".digest"),
            partial(fsops.fsync_dir, tmp),
        ],
    )
    os.rename(tmp, directory / name)
    fsops.make_durable(directory, [partial(fsops.fsync_dir, directory)])


async def relist_floor(
    socket_path: str, directory: Path, workers: int, size: int, *, bundle: bool = False
) -> int:
    """List, then inspect every container (and write a file of ``size`` bytes unless 0, or a
    bundle's shape) into the existing ``directory``, printing ``first`` and ``done`` times; the
    number of containers."""
    data = b"f" * size
    write = floor_bundle_write if bundle else floor_write
    connector = aiohttp.UnixConnector(path=socket_path, limit=workers)
    first: list[float] = []
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
                    name = cid if bundle else f"{cid}.json"
                    await asyncio.to_thread(write, directory, name, data)
                if not first:
                    first.append(time.time())
                    print(f"first {first[0]!r}", flush=True)

        await asyncio.gather(*(worker() for _ in range(workers)))
    print(f"done {time.time()!r} {time.process_time()!r}", flush=True)
    return len(ids)


def main(argv: list[str]) -> int:
    """``SOCKET DIR WORKERS SIZE [bundle]``: run the floor once."""
    socket_path, directory, workers, size, *shape = argv
    bundle = shape == ["bundle"]
    asyncio.run(relist_floor(socket_path, Path(directory), int(workers), int(size), bundle=bundle))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
