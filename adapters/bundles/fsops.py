"""The file-system primitives of the bundle writer: exclusive creation, fsync, atomic exchange.

Blocking, and raising :class:`OSError` as the file system does. :func:`exchange` is Linux's
``renameat2(RENAME_EXCHANGE)`` (called through ``ctypes``): two paths swapped in one step;
where it is unavailable (another platform, an old C library, a file system without it) it
answers ``False`` and the caller falls back (see ``docs/bundles.md``). Files are created mode
0600, directories 0700.

:func:`make_durable` is how the bundle writer waits for what it wrote to be on disk. On a local
Linux file system known to implement it (ext2/3/4, XFS, Btrfs, F2FS, tmpfs) that is a group
commit: one ``syncfs`` makes everything written so far durable, and concurrent writers share it
(:class:`GroupSync`) instead of each fsyncing its files and directories one by one. Anywhere
else (FUSE such as ntfs-3g, network file systems, other platforms) each path is fsynced.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, wait
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import cast

#: A path as the functions here take it: a string is cheaper to build than a Path in a hot loop.
StrPath = str | os.PathLike[str]

FILE_MODE = 0o600
DIR_MODE = 0o700
# Without O_BINARY, Windows' os.open translates newlines.
O_BINARY: int = getattr(os, "O_BINARY", 0)
_O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)


def ensure_dir(path: Path) -> None:
    """Create ``path`` (and its parents) unless it is a directory; its creation made durable."""
    if not path.is_dir():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fsync_dir(path.parent)


def write_file(path: StrPath, data: bytes) -> None:
    """Create the file ``path`` holding ``data`` (not fsynced)."""
    # O_EXCL: never follow or reuse anything already at the path.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_BINARY, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def sync_all(syncs: list[Callable[[], None]], executor: Executor | None) -> None:
    """Run every fsync; all of them have finished when this returns or raises."""
    if executor is None:
        for sync in syncs:
            sync()
        return
    futures = [executor.submit(sync) for sync in syncs]
    wait(futures)
    for future in futures:
        future.result()


def fsync_file(path: StrPath) -> None:
    """Make the file ``path`` durable."""
    # Opened for writing: Windows' FlushFileBuffers needs write access.
    fd = os.open(path, os.O_WRONLY | O_BINARY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: StrPath) -> None:
    """Make the entries of the directory ``path`` durable."""
    # Windows cannot open a directory to fsync it; NTFS journals its metadata instead.
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY | _O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_real_dir(path: Path) -> bool:
    """Whether ``path`` is a directory, not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def discard(path: Path) -> None:
    """Delete ``path`` if it exists; what cannot be deleted now is left for the sweep."""
    with suppress(OSError):
        delete(path)


def delete(path: Path) -> bool:
    """Delete a file, link or directory tree (never following a link); ``False`` if none."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    try:
        if stat.S_ISDIR(mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _load_renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.renameat2  # glibc 2.28+, musl 1.1.24+
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return cast(Callable[[int, bytes, int, bytes, int], int], func)


_renameat2 = _load_renameat2()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def can_exchange() -> bool:
    """Whether :func:`exchange` may work here: the C library has ``renameat2`` (the file system
    may still refuse it)."""
    return _renameat2 is not None


def exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step; ``False`` when not possible here or ``second`` is missing."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE):
        err = ctypes.get_errno()
        # ENOENT: nothing to swap with; EINVAL: this file system has no exchange; ENOSYS: kernel.
        if err in (errno.ENOENT, errno.EINVAL, errno.ENOSYS):
            return False
        raise OSError(err, os.strerror(err), str(first), None, str(second))
    return True


# -- group commit ---------------------------------------------------------------------------------

#: statfs(2) magic numbers of the local file systems whose syncfs(2) makes every file and
#: directory written before it durable (data, metadata and the journal): ext2/3/4, XFS, Btrfs,
#: F2FS, and tmpfs (where nothing is durable anyway). FUSE (ntfs-3g) is not among them: its
#: syncfs need not reach the daemon, so there every path is fsynced.
SYNCFS_FILESYSTEMS = frozenset({0xEF53, 0x58465342, 0x9123683E, 0xF2F52010, 0x01021994})


class GroupSync:
    """Durability barriers shared by concurrent callers: a group commit.

    :meth:`wait` returns once a sync that *began after* :meth:`wait` was called has finished;
    callers arriving while one runs share the next. So with k writers waiting, k barriers cost
    one sync, not k, and none returns before what it wrote is covered. The caller that finds
    none running runs its own ``sync`` (every caller's covers the same file system). A failing
    sync raises in every caller it was meant to cover.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._issued = 0  # tickets handed out
        self._done = 0  # every ticket up to this one is covered by a finished sync
        self._running = False
        self._failed: tuple[int, int, OSError] | None = None  # (first, last) ticket, error
        #: How many syncs ran (for tests and benchmarks).
        self.syncs = 0

    def wait(self, sync: Callable[[], None]) -> None:
        """Block until everything written before this call is durable."""
        with self._cond:
            self._issued += 1
            ticket = self._issued
            while self._done < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                first, covers = self._done + 1, self._issued
                self._running = True
                self._cond.release()
                error: OSError | None = None
                try:
                    sync()
                except OSError as exc:
                    error = exc
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._done = covers
                    self.syncs += 1
                    self._failed = None if error is None else (first, covers, error)
                    self._cond.notify_all()
            failed = self._failed
            if failed is not None and failed[0] <= ticket <= failed[1]:
                raise OSError(failed[2].errno, failed[2].strerror, failed[2].filename)


def _load_libc_function(name: str, argtypes: list[type]) -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    func.argtypes = argtypes
    func.restype = ctypes.c_int
    return cast(Callable[..., int], func)


_syncfs = _load_libc_function("syncfs", [ctypes.c_int])
_statfs = _load_libc_function("statfs", [ctypes.c_char_p, ctypes.c_void_p])
_STATFS_BYTES = 512  # larger than struct statfs on every Linux ABI; f_type comes first
_groups: dict[int, GroupSync] = {}  # by device
_groups_lock = threading.Lock()


def filesystem_type(path: Path) -> int | None:
    """The statfs(2) magic number of the file system holding ``path`` (None: not known)."""
    if _statfs is None:
        return None
    buffer = ctypes.create_string_buffer(_STATFS_BYTES)
    if _statfs(os.fsencode(path), buffer) != 0:
        return None
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


def syncfs_device(directory: Path) -> int | None:
    """The device of the file system holding ``directory`` when its syncfs is known to make
    writes durable (the group commit applies), else None (each path is fsynced there). Raises
    :class:`OSError` when ``directory`` cannot be examined."""
    if _syncfs is None:
        return None
    # Asked every time (one statfs): a mount point can change file systems under a process.
    if filesystem_type(directory) not in SYNCFS_FILESYSTEMS:
        return None
    return os.stat(directory).st_dev


def group_sync(directory: Path) -> GroupSync | None:
    """The group commit of the file system holding ``directory``, shared by every directory
    on it, or None where syncfs is not known to make writes durable (each path is fsynced
    there). Raises :class:`OSError` when ``directory`` cannot be examined."""
    device = syncfs_device(directory)
    if device is None:
        return None
    with _groups_lock:
        return _groups.setdefault(device, GroupSync())


def syncfs(directory: Path) -> None:
    """syncfs(2): make everything written to the file system holding ``directory`` durable."""
    if _syncfs is None:
        raise OSError(errno.ENOSYS, "syncfs is not available here", str(directory))
    fd = os.open(directory, os.O_RDONLY | _O_DIRECTORY)
    try:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(directory))
    finally:
        os.close(fd)


def make_durable(
    directory: Path, syncs: Sequence[Callable[[], None]], executor: Executor | None = None
) -> None:
    """Make what was written below ``directory`` durable: one shared syncfs where the file
    system supports the group commit (:func:`group_sync`), else every fsync of ``syncs``
    (:func:`sync_all`). Either way all of it is on disk when this returns."""
    group = group_sync(directory)
    if group is None:
        sync_all(list(syncs), executor)
    else:
        group.wait(partial(syncfs, directory))
