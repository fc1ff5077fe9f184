"""The bundle writer's group commit (adapters.bundles.fsops, and adapters.bundles.loopsync for
writers on the event loop): one syncfs shared by concurrent writers where the file system
supports it, every fsync elsewhere."""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from adapters.bundles import fsops
from adapters.bundles.loopsync import LoopGroupSync


class _Recorder:
    """A sync that takes a while and records when each one began and ended."""

    def __init__(self, *, seconds: float = 0.02, fail: set[int] | None = None) -> None:
        self.started = 0
        self.finished = 0
        self._seconds = seconds
        self._fail = fail or set()
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.started += 1
            number = self.started
        time.sleep(self._seconds)
        with self._lock:
            self.finished += 1
        if number in self._fail:
            raise OSError(errno.EIO, "I/O error", "/bundles")


def test_concurrent_waiters_share_syncs_and_each_is_covered() -> None:
    """Concurrent barriers share syncs; each returns after a sync begun after its call."""
    group = fsops.GroupSync()
    sync = _Recorder()
    failures: list[str] = []
    gate = threading.Barrier(16)

    def writer() -> None:
        gate.wait()
        for _ in range(5):
            begun_before = sync.started
            group.wait(sync)
            if sync.finished <= begun_before:
                failures.append(f"back after {sync.finished} syncs, {begun_before} begun before")

    threads = [threading.Thread(target=writer) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert group.syncs == sync.started == sync.finished
    assert group.syncs < 16 * 5 / 2  # shared: at least two barriers a sync on average


def test_a_failed_sync_fails_the_barriers_it_covered_only() -> None:
    """A sync that fails raises in every caller it covered; the next barrier runs a new sync."""
    group = fsops.GroupSync()
    sync = _Recorder(seconds=0, fail={1})
    with pytest.raises(OSError, match="I/O error") as failed:
        group.wait(sync)
    assert failed.value.errno == errno.EIO
    group.wait(sync)  # a new sync, which succeeds
    assert (group.syncs, sync.started) == (2, 2)


def test_make_durable_uses_one_syncfs_on_a_local_file_system(tmp_path: Path) -> None:
    """On ext4, XFS, Btrfs, F2FS or tmpfs, make_durable is one syncfs and no fsync."""
    group = fsops.group_sync(tmp_path)
    if group is None:
        pytest.skip(f"{tmp_path} is on a file system without the group commit")
    before = group.syncs
    fsyncs: list[str] = []
    fsops.make_durable(tmp_path, [partial(fsyncs.append, "fsync")])
    assert (group.syncs - before, fsyncs) == (1, [])


def test_make_durable_fsyncs_every_path_without_the_group_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system not known to take syncfs (FUSE, network), every fsync runs."""
    monkeypatch.setattr(fsops, "SYNCFS_FILESYSTEMS", frozenset())
    assert fsops.group_sync(tmp_path) is None
    fsyncs: list[str] = []
    fsops.make_durable(tmp_path, [partial(fsyncs.append, "a"), partial(fsyncs.append, "b")])
    assert fsyncs == ["a", "b"]


def test_filesystem_type_of_a_missing_path_is_unknown(tmp_path: Path) -> None:
    """A path statfs cannot examine has no file-system type (and so no group commit)."""
    assert fsops.filesystem_type(tmp_path / "absent") is None


async def test_loop_waiters_share_syncs_and_each_is_covered() -> None:
    """Coroutines' barriers share syncs; each returns after a sync begun after its call."""
    sync = _Recorder()
    group = LoopGroupSync(sync)
    failures: list[str] = []

    async def writer() -> None:
        for _ in range(5):
            begun_before = sync.started
            await group.wait()
            if sync.finished <= begun_before:
                failures.append(f"back after {sync.finished} syncs, {begun_before} begun before")

    await asyncio.gather(*(writer() for _ in range(16)))
    assert failures == []
    assert group.syncs == sync.started == sync.finished
    assert group.syncs <= 2 * 5 + 1  # 16 writers, 5 rounds: the first, then one per round


async def test_a_waiter_arriving_during_a_sync_waits_for_the_next() -> None:
    """A barrier asked for while a sync runs is not answered by that sync, but by the next."""
    sync = _Recorder(seconds=0.05)
    group = LoopGroupSync(sync)
    first = asyncio.create_task(group.wait())
    await asyncio.sleep(0.01)  # the first sync is running now
    assert sync.started == 1
    await group.wait()
    assert (sync.started, sync.finished, first.done()) == (2, 2, True)


async def test_a_failed_loop_sync_fails_the_barriers_it_covered_only() -> None:
    """A failed sync raises in every coroutine it covered; the next barrier runs a new sync."""
    sync = _Recorder(seconds=0.02, fail={2})
    group = LoopGroupSync(sync)
    first = asyncio.create_task(group.wait())
    await asyncio.sleep(0.005)
    covered = [asyncio.create_task(group.wait()) for _ in range(3)]  # all share sync 2
    results = await asyncio.gather(first, *covered, return_exceptions=True)
    assert results[0] is None
    assert [type(r) for r in results[1:]] == [OSError] * 3
    assert all(isinstance(r, OSError) and r.errno == errno.EIO for r in results[1:])
    await group.wait()  # a new sync, which succeeds
    assert (group.syncs, sync.started) == (3, 3)


async def test_a_cancelled_loop_waiter_leaves_the_others_sync_alone() -> None:
    """Cancelling one coroutine's barrier neither stops the sync nor fails the others sharing it."""
    sync = _Recorder(seconds=0.05)
    group = LoopGroupSync(sync)
    opener = asyncio.create_task(group.wait())
    await asyncio.sleep(0.01)  # sync 1 runs; the next two share sync 2
    first = asyncio.create_task(group.wait())
    other = asyncio.create_task(group.wait())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.gather(opener, other)
    assert first.cancelled()
    assert (group.syncs, sync.finished) == (2, 2)
