"""Bundles written into a directory on this host (Docker mode, and the node agent).

Layout: ``<root>/<bundle id>/`` holds exactly the files of a
:class:`~controller.bundle.BundleContent` (``config.json``, ``links.json``, ``secrets/<id>``,
``configs/<id>``) plus ``.digest``, the content digest, so that rewriting unchanged content costs
one small read: no write, no fsync. The digest is trusted; a bundle edited by hand is not seen
as changed (delete it to force a rewrite). Files are mode 0600 and directories 0700.

Why a whole directory is swapped: a bundle is several files, and a runtime that reads
``config.json`` must find the payloads its mounts point at. Each version is built in a
temporary directory inside the root (``.tmp-<id>-<random>``, so the final rename never crosses
a file system), every file and directory is fsynced (all at once on the writer's fsync threads,
so the file system can fold them into one journal commit: about half the latency of one after
another), and only then does one rename publish it:

* On Linux, ``renameat2(RENAME_EXCHANGE)`` swaps the new directory with the old one, so
  ``<root>/<id>`` always names a complete bundle, old or new. The old version, now under the
  temporary name, is deleted afterwards.
* Where exchange is unavailable (Windows, a file system without it; see
  :func:`atomic_replace_supported`), the old bundle is renamed aside to ``.old-<id>-<random>``
  and the new one renamed in: for that instant ``<root>/<id>`` is absent, never partial.

A reader that needs several files of one version opens the bundle directory once and reads
relative to that handle; reading by path twice may straddle a swap.

What a crash can leave: (1) before the swap, a ``.tmp-`` directory holding part or all of the
new version, the old bundle intact in place; (2) after it, the new bundle in place and the old
version under ``.tmp-`` (exchange) or ``.old-`` (fallback), perhaps half deleted; (3) in the
fallback only, between its two renames, nothing at ``<root>/<id>`` and both versions under
``.old-``/``.tmp-`` names. :meth:`LocalBundleWriter.sweep` deletes every ``.tmp-``/``.old-``
leftover at start-up; a live bundle lost in case (3) has no ``.digest`` any more, so the
initial list rewrites it.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from secrets import token_hex
from typing import Literal, ParamSpec, TypeVar, cast

from controller.bundle import (
    CONFIG_FILE,
    CONFIGS_DIR,
    LINKS_FILE,
    SECRETS_DIR,
    BundleContent,
    check_bundle_id,
    is_valid_bundle_id,
)
from controller.errors import PermanentError, TransientError

DIGEST_FILE = ".digest"
TEMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"

_FILE_MODE = 0o600
_DIR_MODE = 0o700
# Without O_BINARY, Windows' os.open translates newlines.
_O_BINARY: int = getattr(os, "O_BINARY", 0)
_O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)

# The payload ids controller.bundle accepts, minus what Windows would not keep as written: it
# drops a trailing dot, and device names (NUL, COM1.txt, …) are not files at all.
_PAYLOAD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
_WINDOWS_DEVICES = frozenset(
    ["con", "prn", "aux", "nul"]
    + [f"com{n}" for n in range(1, 10)]
    + [f"lpt{n}" for n in range(1, 10)]
)

BundleOutcome = Literal["written", "unchanged", "removed", "absent", "failed"]
"""What one call did: ``write`` gives written/unchanged, ``remove`` removed/absent."""

BundleMetricsHook = Callable[[BundleOutcome, float], None]
"""Called after every write and remove with its outcome and the seconds it took."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


class LocalBundleWriter:
    """Writes bundles below ``root`` on this host; a :class:`controller.ports.BundleWriter`.

    Blocking file work runs in a thread. Calls for one bundle id are serialised (the work queue
    already runs one key at a time; this holds even without it). Failures of the file system
    raise :class:`~controller.errors.TransientError`; a bad bundle id or file name raises
    :class:`~controller.errors.PermanentError` before any path is built.
    """

    def __init__(
        self,
        root: Path,
        *,
        metrics_hook: BundleMetricsHook | None = None,
        fsync_threads: int = 8,
    ) -> None:
        """``fsync_threads``: how many fsyncs may run at once (0: one after another)."""
        self._root = root
        self._metrics_hook = metrics_hook
        self._locks: dict[str, _IdLock] = {}
        self._fsync_pool = (
            ThreadPoolExecutor(fsync_threads, thread_name_prefix="winspec-bundle-fsync")
            if fsync_threads > 0
            else None
        )

    def close(self) -> None:
        """Let the fsync threads end once idle; call when no write is in progress any more."""
        if self._fsync_pool is not None:
            self._fsync_pool.shutdown(wait=False)

    @property
    def root(self) -> Path:
        """The directory that holds one subdirectory per bundle."""
        return self._root

    async def write(self, bundle_id: str, content: BundleContent) -> bool:
        """Write the bundle atomically; ``False`` when the same content was already there."""
        start = time.perf_counter()
        try:
            check_bundle_id(bundle_id)
            async with self._lock(bundle_id):
                written = await _in_thread(
                    write_bundle_sync,
                    self._root,
                    bundle_id,
                    content,
                    fsync_executor=self._fsync_pool,
                )
        except PermanentError:
            self._observe("failed", start)
            raise
        except OSError as exc:
            self._observe("failed", start)
            raise TransientError(f"cannot write bundle {bundle_id}: {exc}") from exc
        self._observe("written" if written else "unchanged", start)
        return written

    async def remove(self, bundle_id: str) -> bool:
        """Remove the bundle; ``False`` when there was none."""
        start = time.perf_counter()
        try:
            check_bundle_id(bundle_id)
            async with self._lock(bundle_id):
                removed = await _in_thread(remove_bundle_sync, self._root, bundle_id)
        except PermanentError:
            self._observe("failed", start)
            raise
        except OSError as exc:
            self._observe("failed", start)
            raise TransientError(f"cannot remove bundle {bundle_id}: {exc}") from exc
        self._observe("removed" if removed else "absent", start)
        return removed

    async def list_ids(self) -> list[str]:
        """The ids of every bundle present, sorted; temporary and leftover entries are not."""
        try:
            return await _in_thread(list_bundle_ids_sync, self._root)
        except OSError as exc:
            raise TransientError(f"cannot list bundles in {self._root}: {exc}") from exc

    async def sweep(self, live_ids: Collection[str]) -> list[str]:
        """Delete bundles not in ``live_ids`` and every temporary leftover; their names, sorted.

        Meant for start-up, before workers run, but safe beside them: each id's entries are
        deleted under that id's lock, so a write in progress never loses its temporary
        directory.
        """
        live = frozenset(live_ids)
        try:
            by_id = await _in_thread(_sweep_candidates, self._root, live)
            removed: list[str] = []
            for bundle_id, names in sorted(by_id.items()):
                async with self._lock(bundle_id):
                    removed += await _in_thread(_delete_entries, self._root, names)
        except OSError as exc:
            raise TransientError(f"cannot sweep bundles in {self._root}: {exc}") from exc
        return sorted(removed)

    def _observe(self, outcome: BundleOutcome, start: float) -> None:
        if self._metrics_hook is not None:
            self._metrics_hook(outcome, time.perf_counter() - start)

    @asynccontextmanager
    async def _lock(self, bundle_id: str) -> AsyncIterator[None]:
        # Locks live only while someone holds or awaits them, so the map does not grow with
        # every container ever seen.
        entry = self._locks.get(bundle_id)
        if entry is None:
            entry = self._locks[bundle_id] = _IdLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[bundle_id]


@dataclass(slots=True)
class _IdLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


async def _in_thread(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run blocking ``fn`` in a thread; if cancelled, return only once the thread is done.

    A thread cannot be stopped, so releasing the bundle's lock while it still runs would let
    the next write of the same id run beside it.
    """
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved: the caller sees the cancellation instead
        raise


def write_bundle_sync(
    root: Path,
    bundle_id: str,
    content: BundleContent,
    *,
    fsync_executor: Executor | None = None,
) -> bool:
    """Write one bundle atomically and durably; ``False`` when the same content is there.

    Blocking. With ``fsync_executor`` (not the executor running this call) the fsyncs of the
    new files and directories run at once, so the file system can commit them together
    instead of one journal commit each. Raises :class:`~controller.errors.PermanentError` for
    a bad bundle id or file name (before any path is built) and :class:`OSError` when the file
    system fails.
    """
    check_bundle_id(bundle_id)
    _check_file_names(content.files)
    digest = content.digest
    live = root / bundle_id
    if _read_digest(live) == digest:
        return False
    _ensure_root(root)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{bundle_id}-", dir=root))
    try:
        _sync_all(_fill(tmp, content.files, digest), fsync_executor)
        _install(root, live, tmp, bundle_id)
    finally:
        # Holds nothing after a first install, the old version after an exchange, or a
        # partial new version after a failure.
        _discard(tmp)
    return True


def remove_bundle_sync(root: Path, bundle_id: str) -> bool:
    """Remove one bundle; ``False`` when there was none. Blocking.

    The bundle is renamed aside first, so it disappears at once rather than file by file.
    """
    check_bundle_id(bundle_id)
    aside = root / f"{OLD_PREFIX}{bundle_id}-{token_hex(4)}"
    try:
        os.rename(root / bundle_id, aside)
    except FileNotFoundError:
        return False
    _fsync_dir(root)
    _discard(aside)
    return True


def list_bundle_ids_sync(root: Path) -> list[str]:
    """The ids of the bundle directories below ``root``, sorted. Blocking."""
    try:
        with os.scandir(root) as entries:
            return sorted(
                entry.name
                for entry in entries
                if is_valid_bundle_id(entry.name) and entry.is_dir(follow_symlinks=False)
            )
    except FileNotFoundError:
        return []


def atomic_replace_supported(root: Path) -> bool:
    """Whether replacing a bundle below ``root`` is one atomic swap here.

    When it is not, a bundle being replaced is absent (never partial) for an instant; worth a
    warning at start-up. Blocking.
    """
    _ensure_root(root)
    first = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}probe-", dir=root))
    second = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}probe-", dir=root))
    try:
        return _exchange(first, second)
    finally:
        _discard(first)
        _discard(second)


def _check_file_names(files: Mapping[str, bytes]) -> None:
    if CONFIG_FILE not in files:
        raise PermanentError(f"a bundle needs {CONFIG_FILE}")
    folded: set[str] = set()
    for name in files:
        if not _is_bundle_file_name(name):
            raise PermanentError(
                f"refusing bundle file {name!r}: expected {CONFIG_FILE}, {LINKS_FILE}, "
                f"{SECRETS_DIR}/<id> or {CONFIGS_DIR}/<id>"
            )
        # Case-insensitive file systems (NTFS) would make the second file overwrite the first.
        key = name.casefold()
        if key in folded:
            raise PermanentError(f"bundle file names that differ only by case: {name!r}")
        folded.add(key)


def _is_bundle_file_name(name: str) -> bool:
    if name in (CONFIG_FILE, LINKS_FILE):
        return True
    directory, slash, leaf = name.partition("/")
    return (
        slash == "/"
        and directory in (SECRETS_DIR, CONFIGS_DIR)
        and _PAYLOAD_NAME.match(leaf) is not None
        and not leaf.endswith(".")
        and leaf.split(".", 1)[0].casefold() not in _WINDOWS_DEVICES
    )


def _read_digest(bundle_dir: Path) -> str | None:
    try:
        with open(bundle_dir / DIGEST_FILE, "rb") as f:
            return f.read(100).decode("ascii", "replace").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _ensure_root(root: Path) -> None:
    if not root.is_dir():
        root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        _fsync_dir(root.parent)


def _fill(directory: Path, files: Mapping[str, bytes], digest: str) -> list[Callable[[], None]]:
    """Create every file and subdirectory; return the fsyncs that make them durable."""
    syncs: list[Callable[[], None]] = [partial(_fsync_dir, directory)]
    subdirs: set[str] = set()
    for name in sorted(files):
        parent, slash, _ = name.rpartition("/")
        if slash and parent not in subdirs:
            subdirs.add(parent)
            os.mkdir(directory / parent, _DIR_MODE)
            syncs.append(partial(_fsync_dir, directory / parent))
        _write_file(directory / name, files[name])
        syncs.append(partial(_fsync_file, directory / name))
    _write_file(directory / DIGEST_FILE, f"{digest}\n".encode("ascii"))
    syncs.append(partial(_fsync_file, directory / DIGEST_FILE))
    return syncs


def _write_file(path: Path, data: bytes) -> None:
    # O_EXCL: never follow or reuse anything already at the path.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, _FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _sync_all(syncs: list[Callable[[], None]], executor: Executor | None) -> None:
    """Run every fsync; all of them have finished when this returns or raises."""
    if executor is None:
        for sync in syncs:
            sync()
        return
    futures = [executor.submit(sync) for sync in syncs]
    wait(futures)
    for future in futures:
        future.result()


def _fsync_file(path: Path) -> None:
    # Opened for writing: Windows' FlushFileBuffers needs write access.
    fd = os.open(path, os.O_WRONLY | _O_BINARY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(root: Path, live: Path, tmp: Path, bundle_id: str) -> None:
    """Publish the complete directory ``tmp`` as ``live``; afterwards ``tmp`` holds the old one."""
    if not _exchange(tmp, live):
        if os.path.lexists(live):
            aside = root / f"{OLD_PREFIX}{bundle_id}-{token_hex(4)}"
            os.rename(live, aside)
            os.rename(tmp, live)
            _fsync_dir(root)
            _discard(aside)
            return
        os.rename(tmp, live)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    # Windows cannot open a directory to fsync it; NTFS journals its metadata instead.
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY | _O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    """Delete ``path`` if it exists; what cannot be deleted now is left for the sweep."""
    with suppress(OSError):
        _delete(path)


def _delete(path: Path) -> bool:
    """Delete a file, link or directory tree; ``False`` when nothing was there."""
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


def _sweep_candidates(root: Path, live: frozenset[str]) -> dict[str, list[str]]:
    """Entries of ``root`` to delete, grouped by the bundle id they belong to."""
    by_id: dict[str, list[str]] = {}
    try:
        with os.scandir(root) as entries:
            names = [entry.name for entry in entries]
    except FileNotFoundError:
        return by_id
    for name in names:
        for prefix in (TEMP_PREFIX, OLD_PREFIX):
            if name.startswith(prefix):
                # "<prefix><id>-<random>"; the random part never holds a dash.
                bundle_id = name[len(prefix) :].rpartition("-")[0]
                by_id.setdefault(bundle_id, []).append(name)
                break
        else:
            if is_valid_bundle_id(name) and name not in live:
                by_id.setdefault(name, []).append(name)
    return by_id


def _delete_entries(root: Path, names: list[str]) -> list[str]:
    removed: list[str] = []
    for name in names:
        if name.startswith((TEMP_PREFIX, OLD_PREFIX)):
            deleted = _delete(root / name)
        else:
            deleted = remove_bundle_sync(root, name)
        if deleted:
            removed.append(name)
    return removed


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


def _exchange(first: Path, second: Path) -> bool:
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
