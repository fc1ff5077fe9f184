"""The floor of the Docker-mode benchmarks: the least a client must do, in its own process.

Run by :mod:`tests.benchmarks.bench_relist` as
``python -m tests.benchmarks.floor_client SOCKET DIR WORKERS SIZE``: list the containers of the
engine at ``SOCKET`` (``GET /containers/json?all=1``), then with ``WORKERS`` concurrent workers on
one aiohttp session inspect each one (``GET /containers/{id}/json``) and, unless ``SIZE`` is 0,
write a file of ``SIZE`` bytes durably into ``DIR`` (:func:`floor_write`). It prints
``first TIME`` when its first container is done and ``done TIME CPU`` when the last is (wall
clock, seconds; the CPU time the process had used), so that the caller, which started the
process, times it from process start as it does ``winspec run``: the interpreter's start and
the imports a client needs (asyncio, aiohttp) are the floor's start-up.

It imports nothing of winspec (nor of the other benchmarks, which do).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
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


async def relist_floor(socket_path: str, directory: Path, workers: int, size: int) -> int:
    """List, then inspect every container (and write a file of ``size`` bytes unless 0) into
    the existing ``directory``, printing ``first`` and ``done`` times; the number of containers."""
    data = b"f" * size
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
                    await asyncio.to_thread(floor_write, directory, f"{cid}.json", data)
                if not first:
                    first.append(time.time())
                    print(f"first {first[0]!r}", flush=True)

        await asyncio.gather(*(worker() for _ in range(workers)))
    print(f"done {time.time()!r} {time.process_time()!r}", flush=True)
    return len(ids)


def main(argv: list[str]) -> int:
    """``SOCKET DIR WORKERS SIZE``: run the floor once."""
    socket_path, directory, workers, size = argv
    asyncio.run(relist_floor(socket_path, Path(directory), int(workers), int(size)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
