"""The file-system primitives of the bundle writer: exclusive creation, fsync, atomic exchange.

Blocking, and raising :class:`OSError` as the file system does. :func:`exchange` is Linux's
``renameat2(RENAME_EXCHANGE)`` (called through ``ctypes``): two paths swapped in one step;
where it is unavailable (another platform, an old C library, a file system without it) it
answers ``False`` and the caller falls back (see ``docs/bundles.md``). Files are created mode
0600, directories 0700.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import sys
from collections.abc import Callable
from concurrent.futures import Executor, wait
from contextlib import suppress
from pathlib import Path
from typing import cast

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


def write_file(path: Path, data: bytes) -> None:
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


def fsync_file(path: Path) -> None:
    """Make the file ``path`` durable."""
    # Opened for writing: Windows' FlushFileBuffers needs write access.
    fd = os.open(path, os.O_WRONLY | O_BINARY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
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
