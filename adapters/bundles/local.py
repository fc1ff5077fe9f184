"""Bundles written into a directory on this host: :class:`LocalBundleWriter`.

Layout: ``<root>/<bundle id>/`` holds exactly the files of a
:class:`~controller.bundle.BundleContent` plus ``.digest``, the content's keyed digest
(:mod:`adapters.bundles.digestkey`), so that rewriting unchanged content costs one small read.
Each version is built in a ``.tmp-`` directory beside it, fsynced, and published by one atomic
exchange (:mod:`adapters.bundles.fsops`), or where there is none by renames that leave the
bundle absent for an instant, never partial; unchanged payload directories are carried over,
not copied, so a running container's bind mounts stay valid. What a crash can leave, and how
:meth:`LocalBundleWriter.sweep` and the next write repair it: ``docs/bundles.md``.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from secrets import token_hex
from typing import ParamSpec, TypeVar

from adapters.bundles import fsops
from adapters.bundles.digestkey import KEY_FILE as KEY_FILE
from adapters.bundles.digestkey import load_digest_key
from adapters.bundles.loopsync import LoopGroupSync
from controller.bundle import (
    CONFIG_FILE,
    CONFIGS_DIR,
    DRIFT_EXTRA,
    DRIFT_MISSING,
    DRIFT_MODIFIED,
    LINKS_FILE,
    SECRETS_DIR,
    BundleContent,
    WriteOutcome,
    check_bundle_id,
    is_valid_bundle_id,
)
from controller.errors import PermanentError, TransientError
from controller.models import check_payload_id

DIGEST_FILE = ".digest"
TEMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"

_PAYLOAD_DIRS = (SECRETS_DIR, CONFIGS_DIR)
# Files of a bundle are read without following a link and without blocking: anyone who can
# write in the bundle root could leave a FIFO where a file belongs, whose open would otherwise
# wait for a writer (for ever, and on the loop when the check runs there).
_READ_FILE = (
    os.O_RDONLY | fsops.O_BINARY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
)
_DIGEST_MAX = 100  # bytes of .digest read: a digest is far shorter
# A leftover is "<TEMP_PREFIX or OLD_PREFIX><tag>-<random>", random 8 characters without a dash
# (tempfile's or token_hex(4)); it fits in one file name (255 bytes: NTFS, ext4, XFS) whenever
# the bundle id does, because a tag is never longer than _TAG_MAX.
_NAME_MAX = 255
_RANDOM_CHARS = 8
_TAG_MAX = _NAME_MAX - max(len(TEMP_PREFIX), len(OLD_PREFIX)) - 1 - _RANDOM_CHARS
_TAG_HASH_CHARS = 32
# The digest key's temporary files (digestkey.KEY_TEMP_PREFIX) are leftovers too, of the tag
# "digest-key": the sweep deletes one a crash left.

# Payload ids are those controller.models.check_payload_id accepts, minus what Windows would not
# keep as written: it drops a trailing dot, and device names (NUL, COM1.txt, …) are not files.
_WINDOWS_DEVICES = frozenset(
    ["con", "prn", "aux", "nul"]
    + [f"com{n}" for n in range(1, 10)]
    + [f"lpt{n}" for n in range(1, 10)]
)

_P = ParamSpec("_P")
_T = TypeVar("_T")


class LocalBundleWriter:
    """Writes bundles below ``root`` on this host; a :class:`controller.ports.BundleWriter`.

    Blocking file work runs in a thread, but on a local disk the check of a bundle found
    current and the making of a new bundle run on the loop, the waits for the disk excepted
    (:meth:`write`, ``docs/bundles.md``). Calls for one bundle id are serialised
    (the work queue already runs one key at a time; this holds even without it). Failures of
    the file system raise :class:`~controller.errors.TransientError`; a bad bundle id or file
    name raises :class:`~controller.errors.PermanentError` before any path is built.
    """

    def __init__(self, root: Path, *, fsync_threads: int = 8) -> None:
        """``fsync_threads``: how many fsyncs may run at once (0: one after another)."""
        self._root = root
        self._locks: dict[str, _IdLock] = {}
        self._key: bytes | None = None
        self._key_lock = asyncio.Lock()
        self._inline: bool | None = None
        # By device; None: the group commit does not apply there.
        self._loop_syncs: dict[int, LoopGroupSync | None] = {}
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

    async def write(self, bundle_id: str, content: BundleContent) -> bool | WriteOutcome:
        """Write the bundle atomically; ``False`` when the same content was already there, intact.

        A bundle whose ``.digest`` names the content is read back and rewritten when it
        differs (:func:`find_drift`): then a :class:`WriteOutcome` says what drift was repaired.
        """
        check_bundle_id(bundle_id)
        _check_file_names(content.files)  # refused before anything is created, the key included
        try:
            key = await self._digest_key()
            async with self._lock(leftover_tag(bundle_id)):
                # On a local disk, file system calls cost microseconds, far less than a
                # thread: each system call a thread makes hands the GIL to and from this loop
                # while it is busy. So there most writes run here: the check of a bundle found
                # current (every relist, every resync), and a new bundle built, but for the
                # waits for the disk. Anything else (a change, a repair, a network or FUSE file
                # system) goes to a thread, which checks again.
                if self._reads_inline():
                    current = _check_current(self._root, bundle_id, content, key)
                    if current is None:
                        return await self._write_new(bundle_id, content, key)
                    if current:
                        return False
                return await _in_thread(
                    write_bundle_outcome_sync,
                    self._root,
                    bundle_id,
                    content,
                    fsync_executor=self._fsync_pool,
                    key=key,
                )
        except OSError as exc:
            self._refuse_windows_name(bundle_id, exc)
            raise TransientError(f"cannot write bundle {bundle_id}: {exc}") from exc

    async def _write_new(self, bundle_id: str, content: BundleContent, key: bytes) -> bool:
        """Write a bundle where there is none: built and renamed into place on the loop, the
        two waits for the disk (its files durable; the rename durable) in a thread.

        The steps, and so the crash states, of :func:`write_bundle_outcome_sync` for a bundle
        not there yet. Should one appear meanwhile (not by this writer, which holds the id's
        lock), the rename fails and the retry takes the thread's way, which handles that.
        """
        root = self._root
        tmp, syncs = _build(root, bundle_id, content, key)
        try:
            await self._make_durable(syncs)
            _publish(root, tmp, bundle_id)
        except BaseException:
            fsops.discard(tmp)
            raise
        await self._make_durable([partial(fsops.fsync_dir, root)])
        return True

    async def _make_durable(self, syncs: list[Callable[[], None]]) -> None:
        """:func:`fsops.make_durable` for the root, awaited: where the group commit applies,
        the loop's own (:class:`LoopGroupSync`, one thread hand-off per syncfs for every
        writer waiting); else every path fsynced in a thread."""
        device = _device(self._root)
        if device not in self._loop_syncs:
            # The root's device is asked every time (a mount point can change file systems
            # under a process), the file system's type once per device: a device keeps its
            # file system while it is mounted.
            applies = fsops.syncfs_device(self._root) == device
            self._loop_syncs[device] = (
                LoopGroupSync(partial(fsops.syncfs, self._root)) if applies else None
            )
        group = self._loop_syncs[device]
        if group is None:
            await _in_thread(fsops.sync_all, syncs, self._fsync_pool)
        else:
            await group.wait()

    def _reads_inline(self) -> bool:
        """Whether this root is on a local disk's kernel file system (one of
        :data:`fsops.SYNCFS_FILESYSTEMS`), where reading a small file back costs microseconds,
        not a round trip to a FUSE daemon or a server. Known once the root exists, then kept:
        it decides only where the up-to-date check runs, not what it finds."""
        if self._inline is None:
            kind = fsops.filesystem_type(self._root)
            if kind is None:
                return False
            self._inline = kind in fsops.SYNCFS_FILESYSTEMS
        return self._inline

    async def digest(self, content: BundleContent) -> str:
        """The digest this writer keeps in ``.digest`` for ``content``: keyed under the root's
        key, so equal across restarts and across processes sharing the root, and no oracle for
        the payloads (it hashes nothing again once :meth:`write` has)."""
        try:
            return content.keyed_digest(await self._digest_key())
        except OSError as exc:
            raise TransientError(f"cannot read the digest key of {self._root}: {exc}") from exc

    async def remove(self, bundle_id: str) -> bool:
        """Remove the bundle; ``False`` when there was none."""
        check_bundle_id(bundle_id)
        try:
            async with self._lock(leftover_tag(bundle_id)):
                return await _in_thread(remove_bundle_sync, self._root, bundle_id)
        except OSError as exc:
            raise TransientError(f"cannot remove bundle {bundle_id}: {exc}") from exc

    async def list_ids(self) -> list[str]:
        """The ids of every bundle present, sorted; temporary and leftover entries are not."""
        try:
            return await _in_thread(list_bundle_ids_sync, self._root)
        except OSError as exc:
            raise TransientError(f"cannot list bundles in {self._root}: {exc}") from exc

    async def atomic_replace_supported(self) -> bool:
        """Whether replacing a bundle is one atomic swap below this root (creating the root)."""
        try:
            return await _in_thread(atomic_replace_supported, self._root)
        except OSError as exc:
            raise TransientError(f"cannot probe the bundle root {self._root}: {exc}") from exc

    async def sweep(
        self, live_ids: Collection[str] | None, *, owned: Collection[str] | None = None
    ) -> list[str]:
        """Delete bundles not in ``live_ids`` and every temporary leftover; their names, sorted.

        With ``live_ids`` None no bundle is deleted, only leftovers: what a sweep beside
        writers needs, as a bundle a write publishes after any list of ids was taken is live.

        With ``owned``, only bundles with those ids and the leftovers of those ids are
        candidates: another process sharing the root writes the rest (a leftover of an id
        outside ``owned`` may be its write in progress). A payload directory that a crash left
        in a leftover, with a stand-in in its bundle, is put back first (see
        ``docs/bundles.md``). Meant for start-up, before workers run, but safe beside them:
        each id's entries are handled under that id's lock, so a write in progress never loses
        its temporary directory.
        """
        live = None if live_ids is None else frozenset(live_ids)
        mine = None if owned is None else frozenset(owned)
        try:
            # The key first: its temporary file is never a leftover of this sweep's scan.
            await self._digest_key()
            by_tag = await _in_thread(_sweep_candidates, self._root, live, mine)
            removed: list[str] = []
            for tag, (ids, names) in sorted(by_tag.items()):
                async with self._lock(tag):
                    removed += await _in_thread(_sweep_tag, self._root, ids, names)
        except OSError as exc:
            raise TransientError(f"cannot sweep bundles in {self._root}: {exc}") from exc
        return sorted(removed)

    def _refuse_windows_name(self, bundle_id: str, exc: OSError) -> None:
        """Raise a :class:`PermanentError` when ``exc`` is a file system with Windows' name
        rules (NTFS) refusing the bundle id or the root's name: a device name such as ``con``
        or ``aux`` is a valid Kubernetes name, but never a file there, so retrying is futile."""
        if exc.errno != errno.EINVAL:
            return
        for kind, name in (("bundle id", bundle_id), ("bundle root", self._root.name)):
            if is_windows_reserved(name):
                raise PermanentError(
                    f"cannot write bundle {bundle_id}: the {kind} {name!r} is a device name "
                    f"under Windows' rules, which this file system applies ({exc})"
                ) from exc

    async def _digest_key(self) -> bytes:
        """The root's digest key, loaded (or created) once; raises :class:`OSError`."""
        async with self._key_lock:
            if self._key is None:
                self._key = await _in_thread(load_digest_key, self._root)
            return self._key

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


def _device(path: Path) -> int:
    """The device of the file system holding ``path``."""
    return os.stat(path).st_dev


def _build(
    root: Path, bundle_id: str, content: BundleContent, key: bytes
) -> tuple[Path, list[Callable[[], None]]]:
    """A new version of the bundle in a new ``.tmp-`` directory of ``root`` (made first if
    needed): that directory, and the fsyncs that would make it durable."""
    fsops.ensure_dir(root)
    tmp = root / f"{TEMP_PREFIX}{leftover_tag(bundle_id)}-{token_hex(_RANDOM_CHARS // 2)}"
    os.mkdir(tmp, fsops.DIR_MODE)
    try:
        return tmp, _fill(tmp, content.files, content.keyed_digest(key))
    except BaseException:
        fsops.discard(tmp)
        raise


def _publish(root: Path, tmp: Path, bundle_id: str) -> None:
    """Rename the new version ``tmp`` to the bundle's path, where there was nothing.

    Should something have appeared there meanwhile, the rename fails (a directory with entries,
    a file) or replaces an empty directory, which held nothing of a bundle.
    """
    os.rename(tmp, root / bundle_id)


def _check_current(root: Path, bundle_id: str, content: BundleContent, key: bytes) -> bool | None:
    """Whether the bundle is exactly ``content`` and nothing awaits repair: its ``.digest``
    names the content and every file reads back the same (a crash's stand-in for a payload
    directory is a link, so drift too). ``None`` when nothing is at its path (not even a broken
    link). What :func:`write_bundle_outcome_sync` checks before it writes; read-only, ``False``
    also when something cannot be read, for it to find out what."""
    live = os.path.join(root, bundle_id)
    try:
        digest = read_digest(live)
        if digest is None:
            return None if not os.path.lexists(live) else False
        return digest == content.keyed_digest(key) and not find_drift(live, content.files)
    except OSError:
        return False


def write_bundle_sync(
    root: Path,
    bundle_id: str,
    content: BundleContent,
    *,
    fsync_executor: Executor | None = None,
    key: bytes | None = None,
) -> bool:
    """Write one bundle atomically and durably; ``False`` when the same content is there
    (:func:`write_bundle_outcome_sync`, which also says what drift it repaired). Blocking."""
    return bool(
        write_bundle_outcome_sync(root, bundle_id, content, fsync_executor=fsync_executor, key=key)
    )


def write_bundle_outcome_sync(
    root: Path,
    bundle_id: str,
    content: BundleContent,
    *,
    fsync_executor: Executor | None = None,
    key: bytes | None = None,
) -> bool | WriteOutcome:
    """Write one bundle atomically and durably; ``False`` when the same content is there.

    A bundle whose ``.digest`` names the content already is read back, file by file, and
    rewritten when it differs (drift: a file edited, truncated, deleted or added on the node);
    then a :class:`WriteOutcome` says which kinds (:data:`~controller.bundle.DRIFT_KINDS`)
    were found; otherwise a plain bool.

    Blocking. With ``fsync_executor`` (not the executor running this call) the fsyncs of the
    new files and directories run at once, so the file system can commit them together
    instead of one journal commit each. Payload directories whose content is unchanged are
    carried over into the new version (``docs/bundles.md``). ``key`` is the root's digest key
    (:func:`load_digest_key`, read here when not given). Raises
    :class:`~controller.errors.PermanentError` for a bad bundle id or file name (before any path
    is built) and :class:`OSError` when the file system fails.
    """
    check_bundle_id(bundle_id)
    _check_file_names(content.files)
    digest = content.keyed_digest(load_digest_key(root) if key is None else key)
    live = root / bundle_id
    for holder in _restore_carried(root, bundle_id):
        fsops.discard(holder)
    drift: frozenset[str] = frozenset()
    if read_digest(live) == digest:
        drift = find_drift(live, content.files)
        if not drift:
            return False
    fsops.ensure_dir(root)
    payloads = _payload_sets(content.files)
    carried = [name for name in _PAYLOAD_DIRS if payloads[name] and _holds(live / name, payloads)]
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{leftover_tag(bundle_id)}-", dir=root))
    try:
        syncs = _fill(tmp, content.files, digest, skip=carried)
        if carried and fsops.can_exchange():
            for name in carried:
                # Relative to the new version's directory; once the versions are swapped this
                # name is the old version's, which then still holds the original.
                os.symlink(f"../{tmp.name}/{name}", tmp / name)
        fsops.make_durable(root, syncs, fsync_executor)
        swapped = bool(carried) and fsops.exchange(tmp, live)
    except BaseException:
        fsops.discard(tmp)
        raise
    if swapped:
        _finish_carry(root, live, tmp, carried, fsync_executor)
        return WriteOutcome(changed=True, drift=drift) if drift else True
    try:
        # In place, an entry the content lacks would stay: drift of that kind needs a new
        # directory.
        if carried and DRIFT_EXTRA not in drift and _in_place_possible(live, payloads, carried):
            _replace_in_place(live, tmp, content.files)
        else:
            _install(root, live, tmp, bundle_id, carried)
    finally:
        # Holds nothing after a first install, stand-ins at most after an update in place,
        # the old version after an exchange, or a partial new version after a failure.
        fsops.discard(tmp)
    return WriteOutcome(changed=True, drift=drift) if drift else True


def remove_bundle_sync(root: Path, bundle_id: str) -> bool:
    """Remove one bundle; ``False`` when there was none. Blocking.

    The bundle is renamed aside first, so it disappears at once rather than file by file.
    """
    check_bundle_id(bundle_id)
    aside = root / f"{OLD_PREFIX}{leftover_tag(bundle_id)}-{token_hex(_RANDOM_CHARS // 2)}"
    try:
        os.rename(root / bundle_id, aside)
    except FileNotFoundError:
        return False
    fsops.make_durable(root, [partial(fsops.fsync_dir, root)])
    fsops.discard(aside)
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

    When it is not, a bundle whose payloads change is absent (never partial) for an instant
    while it is replaced; Docker mode logs a warning at start-up. Blocking.
    """
    fsops.ensure_dir(root)
    first = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}probe-", dir=root))
    second = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}probe-", dir=root))
    try:
        return fsops.exchange(first, second)
    finally:
        fsops.discard(first)
        fsops.discard(second)


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
    if slash != "/" or directory not in _PAYLOAD_DIRS:
        return False
    try:
        check_payload_id(leaf, directory)
    except PermanentError:
        return False
    return not is_windows_reserved(leaf)


def is_windows_reserved(name: str) -> bool:
    """Whether Windows would not keep ``name`` as written: a trailing dot (dropped) or a device
    name (``NUL``, ``com1.txt``, …: not a file)."""
    return name.endswith(".") or name.split(".", 1)[0].casefold() in _WINDOWS_DEVICES


def _payload_sets(files: Mapping[str, bytes]) -> dict[str, dict[str, bytes]]:
    """The payload files of a (checked) content by directory, then by file name."""
    sets: dict[str, dict[str, bytes]] = {name: {} for name in _PAYLOAD_DIRS}
    for name, data in files.items():
        directory, slash, leaf = name.partition("/")
        if slash:
            sets[directory][leaf] = data
    return sets


def _holds(directory: Path, payloads: Mapping[str, Mapping[str, bytes]]) -> bool:
    """Whether ``directory`` is a real directory with exactly its payload set, byte for byte."""
    wanted = payloads[directory.name]
    try:
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            return False
        with os.scandir(directory) as entries:
            found = {entry.name: entry for entry in entries}
        if found.keys() != wanted.keys():
            return False
        for name, entry in found.items():
            if not entry.is_file(follow_symlinks=False) or entry.stat(
                follow_symlinks=False
            ).st_size != len(wanted[name]):
                return False
        for name, data in wanted.items():
            if _read_regular(directory / name, len(data)) != data:
                return False
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def find_drift(bundle_dir: str | Path, files: Mapping[str, bytes]) -> frozenset[str]:
    """How the bundle in ``bundle_dir`` differs from ``files`` (its content); empty: not at all.

    Every file is read back and compared byte for byte (``.digest`` alone proves nothing of
    the files beside it); nothing is written or fsynced. Kinds: ``modified`` (other bytes, or
    not a regular file), ``missing`` (a file of the content absent) and ``extra`` (an entry
    the content does not have, ``.digest`` aside). Blocking.
    """
    kinds: set[str] = set()
    wanted_top = {name.partition("/")[0] for name in files} | {DIGEST_FILE}
    with os.scandir(bundle_dir) as entries:
        top = list(entries)
    for entry in top:
        if entry.name not in wanted_top:
            kinds.add(DRIFT_EXTRA)
        elif entry.name in _PAYLOAD_DIRS:
            if not entry.is_dir(follow_symlinks=False):
                kinds.add(DRIFT_MODIFIED)  # a link or a file where the directory belongs
                continue
            with os.scandir(entry.path) as inner:
                if any(f"{entry.name}/{e.name}" not in files for e in inner):
                    kinds.add(DRIFT_EXTRA)
    for name, data in files.items():
        try:
            if _read_regular(os.path.join(bundle_dir, name), len(data)) != data:
                kinds.add(DRIFT_MODIFIED)
        except FileNotFoundError:
            kinds.add(DRIFT_MISSING)
    return frozenset(kinds)


def _open_regular(path: str | Path) -> tuple[int, int] | None:
    """A descriptor of the regular file at ``path`` (opened not through a link, never waiting on
    a FIFO) and its size; ``None``, nothing left open, when it is no regular file (a link, a
    FIFO, a socket, a device, a directory, a file where a directory belongs on the way).
    :class:`FileNotFoundError` when nothing is there."""
    try:
        fd = os.open(path, _READ_FILE)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.ENOTDIR):
            return None
        raise
    try:
        status = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if stat.S_ISREG(status.st_mode):
        return fd, status.st_size
    os.close(fd)
    return None


def _read_regular(path: str | Path, size: int | None = None) -> bytes | None:
    """The bytes of the regular file at ``path`` (:func:`_open_regular`): whole, or when
    ``size`` is given, ``None`` unless it is of ``size`` bytes (read as far as one more: it
    may grow meanwhile)."""
    opened = _open_regular(path)
    if opened is None:
        return None
    fd, actual = opened
    try:
        if size is not None and actual != size:
            return None
        return os.read(fd, actual + 1)
    finally:
        os.close(fd)


def is_intact(bundle_dir: Path, digest: str, key: bytes) -> bool:
    """Whether the files in ``bundle_dir`` are exactly a content whose digest under ``key`` is
    ``digest`` (its ``.digest``): every file read back and hashed, for when the content itself
    is not at hand (the agent's listing). Blocking; raises :class:`OSError` when it cannot read.
    """
    files: dict[str, bytes] = {}
    try:
        with os.scandir(bundle_dir) as entries:
            top = list(entries)
        for entry in top:
            if entry.name == DIGEST_FILE:
                continue
            if entry.name in _PAYLOAD_DIRS and entry.is_dir(follow_symlinks=False):
                with os.scandir(entry.path) as inner:
                    for leaf in inner:
                        if not leaf.is_file(follow_symlinks=False):
                            return False
                        data = _read_regular(leaf.path)
                        if data is None:
                            return False
                        files[f"{entry.name}/{leaf.name}"] = data
            elif entry.name in (CONFIG_FILE, LINKS_FILE) and entry.is_file(follow_symlinks=False):
                data = _read_regular(entry.path)
                if data is None:
                    return False
                files[entry.name] = data
            else:
                return False
    except (FileNotFoundError, NotADirectoryError):
        return False
    return BundleContent(files=files).keyed_digest(key) == digest


def read_digest(bundle_dir: str | Path) -> str | None:
    """What the bundle's ``.digest`` holds; None when there is none (no bundle, no file, an
    empty one, or one that is no regular file)."""
    try:
        opened = _open_regular(os.path.join(bundle_dir, DIGEST_FILE))
    except FileNotFoundError:
        return None
    if opened is None:
        return None
    fd, _ = opened
    try:
        return os.read(fd, _DIGEST_MAX).decode("ascii", "replace").strip() or None
    finally:
        os.close(fd)


def _fill(
    directory: Path, files: Mapping[str, bytes], digest: str, *, skip: Collection[str] = ()
) -> list[Callable[[], None]]:
    """Create every file and subdirectory not in ``skip``; the fsyncs that make them durable."""
    base = os.fspath(directory)  # joined as strings: this runs for every bundle written
    syncs: list[Callable[[], None]] = [partial(fsops.fsync_dir, base)]
    subdirs: set[str] = set()
    for name in sorted(files):
        parent, slash, _ = name.rpartition("/")
        if parent in skip:
            continue
        if slash and parent not in subdirs:
            subdirs.add(parent)
            subdir = os.path.join(base, parent)
            os.mkdir(subdir, fsops.DIR_MODE)
            syncs.append(partial(fsops.fsync_dir, subdir))
        path = os.path.join(base, name)
        fsops.write_file(path, files[name])
        syncs.append(partial(fsops.fsync_file, path))
    path = os.path.join(base, DIGEST_FILE)
    fsops.write_file(path, f"{digest}\n".encode("ascii"))
    syncs.append(partial(fsops.fsync_file, path))
    return syncs


def _finish_carry(
    root: Path, live: Path, tmp: Path, carried: list[str], executor: Executor | None
) -> None:
    """After the swap: exchange each stand-in in ``live`` with its original, now in ``tmp``.

    Until then ``tmp`` holds the originals; it is deleted only once none is left in it. A
    failure leaves it for :func:`_restore_carried` (next write or sweep) to finish.
    """
    for name in carried:
        if not fsops.exchange(tmp / name, live / name):
            raise OSError(errno.ENOENT, "cannot move the payload directory back", str(tmp / name))
    try:
        # Every order in which these two become durable is one of the documented crash states.
        fsops.make_durable(
            root, [partial(fsops.fsync_dir, root), partial(fsops.fsync_dir, live)], executor
        )
    finally:
        fsops.discard(tmp)  # the old version, with the stand-ins


def _in_place_possible(
    live: Path, payloads: Mapping[str, Mapping[str, bytes]], carried: list[str]
) -> bool:
    """Whether every payload directory of ``live`` stays as it is: carried, or absent in both."""
    for name in _PAYLOAD_DIRS:
        if name not in carried and (payloads[name] or os.path.lexists(live / name)):
            return False
    return True


def _replace_in_place(live: Path, tmp: Path, files: Mapping[str, bytes]) -> None:
    """Update ``live`` from the files in ``tmp`` without renaming a directory (no exchange).

    ``.digest`` goes first and comes back last, so a bundle caught halfway is rewritten.
    """
    fsops.delete(live / DIGEST_FILE)
    fsops.fsync_dir(live)
    for name in (LINKS_FILE, CONFIG_FILE):
        if name in files:
            os.replace(tmp / name, live / name)
        else:
            fsops.delete(live / name)
    fsops.fsync_dir(live)
    os.replace(tmp / DIGEST_FILE, live / DIGEST_FILE)
    fsops.fsync_dir(live)


def _install(root: Path, live: Path, tmp: Path, bundle_id: str, carried: list[str]) -> None:
    """Publish the complete directory ``tmp`` as ``live``; afterwards ``tmp`` holds the old one.

    ``carried`` directories move from the old version into ``tmp`` first; this needs the
    fallback (rename aside, move, rename in), as no stand-in keeps the old version whole.
    """
    if not carried and fsops.exchange(tmp, live):
        fsops.make_durable(root, [partial(fsops.fsync_dir, root)])
        return
    if not os.path.lexists(live):
        os.rename(tmp, live)
        fsops.make_durable(root, [partial(fsops.fsync_dir, root)])
        return
    aside = root / f"{OLD_PREFIX}{leftover_tag(bundle_id)}-{token_hex(_RANDOM_CHARS // 2)}"
    os.rename(live, aside)
    moved: list[str] = []
    try:
        for name in carried:
            fsops.delete(tmp / name)  # a stand-in, if one was made
            os.rename(aside / name, tmp / name)
            moved.append(name)
        os.rename(tmp, live)
    except BaseException:
        # Put the old version back whole, so a retry finds it and nothing carried is lost.
        with suppress(OSError):
            for name in moved:
                os.rename(tmp / name, aside / name)
            os.rename(aside, live)
        raise
    syncs = [partial(fsops.fsync_dir, live)] if moved else []
    fsops.make_durable(root, [*syncs, partial(fsops.fsync_dir, root)])
    fsops.discard(aside)


def _restore_carried(root: Path, bundle_id: str) -> set[Path]:
    """Put back every original that a crash left behind a stand-in in the bundle (case 4).

    Returns the leftovers that held them, now holding nothing of the live bundle. A stand-in
    whose original is gone makes the bundle's ``.digest`` go, so that the next write rewrites
    it; no leftover is returned then.
    """
    live = root / bundle_id
    holders: set[Path] = set()
    lost = False
    for name in _PAYLOAD_DIRS:
        # On every write, even of unchanged content (so a retry repairs what its failed
        # attempt left): string paths keep the usual case, no stand-in, to two cheap lstats.
        try:
            if not stat.S_ISLNK(os.lstat(os.path.join(root, bundle_id, name)).st_mode):
                continue
            stand_in = live / name
            target = os.readlink(stand_in)
        except (FileNotFoundError, NotADirectoryError):
            continue
        up, _, rest = target.partition("/")
        holder_name, _, leaf = rest.partition("/")
        holder = root / holder_name
        original = holder / name
        if (
            up == ".."
            and holder_name.rpartition("-")[0] == f"{TEMP_PREFIX}{leftover_tag(bundle_id)}"
            and leaf == name
            and fsops.is_real_dir(original)
            and fsops.exchange(original, stand_in)
        ):
            fsops.fsync_dir(live)
            holders.add(holder)
        else:
            lost = True
            fsops.delete(live / DIGEST_FILE)
            fsops.fsync_dir(live)
    # Each holds the old version now, with a stand-in.
    return set() if lost else holders


def leftover_tag(bundle_id: str) -> str:
    """What stands for ``bundle_id`` in the names of its leftovers (``.tmp-``, ``.old-``).

    The id itself when it fits, else its first characters, ``_`` (never in an id) and a hash of
    it: a 253-character Kubernetes name is a valid bundle id, but ``.tmp-<id>-<random>`` would
    be 267 bytes, past what a file name may hold.
    """
    if len(bundle_id) <= _TAG_MAX:
        return bundle_id
    digest = hashlib.sha256(bundle_id.encode()).hexdigest()[:_TAG_HASH_CHARS]
    return f"{bundle_id[: _TAG_MAX - _TAG_HASH_CHARS - 1]}_{digest}"


def _sweep_candidates(
    root: Path, live: frozenset[str] | None, owned: frozenset[str] | None
) -> dict[str, tuple[list[str], list[str]]]:
    """Entries of ``root`` to delete, grouped by tag: the bundle ids present with that tag (to
    repair before anything goes) and the names to delete (no bundle when ``live`` is None)."""
    try:
        with os.scandir(root) as entries:
            names = [entry.name for entry in entries]
    except FileNotFoundError:
        return {}
    ids = [name for name in names if is_valid_bundle_id(name)]
    tags = {bundle_id: leftover_tag(bundle_id) for bundle_id in ids}
    mine = None if owned is None else {leftover_tag(bundle_id) for bundle_id in owned}
    by_tag: dict[str, tuple[list[str], list[str]]] = {}

    def add(tag: str, name: str) -> None:
        by_tag.setdefault(tag, ([], []))[1].append(name)

    for name in names:
        for prefix in (TEMP_PREFIX, OLD_PREFIX):
            if name.startswith(prefix):
                # "<prefix><tag>-<random>"; the random part never holds a dash.
                tag = name[len(prefix) :].rpartition("-")[0]
                if mine is None or tag in mine:
                    add(tag, name)
                break
        else:
            dead = live is not None and name in tags and name not in live
            if dead and (owned is None or name in owned):
                add(tags[name], name)
    for bundle_id in ids:
        if tags[bundle_id] in by_tag:
            by_tag[tags[bundle_id]][0].append(bundle_id)
    return by_tag


def _sweep_tag(root: Path, ids: list[str], names: list[str]) -> list[str]:
    """Repair the carried directories of the bundles ``ids``, then delete ``names``; those
    deleted."""
    for bundle_id in ids:
        _restore_carried(root, bundle_id)
    removed: list[str] = []
    for name in names:
        if name.startswith((TEMP_PREFIX, OLD_PREFIX)):
            deleted = fsops.delete(root / name)
        else:
            deleted = remove_bundle_sync(root, name)
        if deleted:
            removed.append(name)
    return removed
