"""Bundles written into a directory on this host (Docker mode).

Layout: ``<root>/<bundle id>/`` holds exactly the files of a
:class:`~controller.bundle.BundleContent` (``config.json``, ``links.json``, ``secrets/<id>``,
``configs/<id>``) plus ``.digest``, the content digest, so that rewriting unchanged content costs
one small read: no write, no fsync. The digest is trusted; a bundle edited by hand is not seen
as changed (delete it to force a rewrite). Files are mode 0600 and directories 0700.

``.digest`` holds an HMAC-SHA256 (:meth:`~controller.bundle.BundleContent.keyed_digest`) under
the root's own random key, ``<root>/.digest-key`` (32 bytes, mode 0600): an unkeyed hash of
files that include secrets would let anyone who can read ``.digest`` (or a log or backup that
copied it) test guesses of a weak secret offline. The key is created on first use, complete or
not at all (written to a temporary file, fsynced, then hard-linked to its name, so two writers
agree on one key), and read by every later run, so unchanged bundles stay unchanged across
restarts. A key file that is missing, of the wrong length or readable by others is replaced by
a new key (every bundle is then rewritten once); one that is a link or not a regular file is
refused (:class:`~controller.errors.PermanentError`).

Why a whole directory is swapped: a bundle is several files, and a runtime that reads
``config.json`` must find the payloads its mounts point at. Each version is built in a
temporary directory inside the root (``.tmp-<tag>-<random>``, so the final rename never crosses
a file system; the tag is the id, or for an id too long to fit with the prefix in the 255 bytes
of a file name, its start and a hash of it: see :func:`leftover_tag`), every file and
directory is fsynced (all at once on the writer's fsync threads, so the file system can fold
them into one journal commit: about half the latency of one after another), and only then does
one rename publish it:

* On Linux, ``renameat2(RENAME_EXCHANGE)`` swaps the new directory with the old one, so
  ``<root>/<id>`` always names a complete bundle, old or new. The old version, now under the
  temporary name, is deleted afterwards.
* Where exchange is unavailable (Windows, a file system without it; see
  :func:`atomic_replace_supported`), the old bundle is renamed aside to ``.old-<id>-<random>``
  and the new one renamed in: for that instant ``<root>/<id>`` is absent, never partial.

Payload directories are carried over, not copied. ``secrets/`` and ``configs/`` are the
sources of a running container's bind mounts, and a bundle is rewritten after every
container's first start (S14 changes ``config.json``). Deleting the old directories would leave
the mounts showing deleted files (Linux) or fail with a sharing violation (Windows). So a
payload directory whose files are byte for byte the new ones is moved into the new version:
same directory, nothing rewritten; only a changed payload set is written fresh. A directory
cannot be in two bundles at once, and neither version may be without it while it is at
``<root>/<id>``, so the move depends on the platform:

* With exchange, the new version gets a *stand-in* in place of each carried directory: a
  symbolic link ``secrets -> ../.tmp-<id>-<random>/secrets``, the temporary directory's own
  name. The bundles are swapped (the new version is live; the link leads, by path, into the old
  version, which now has that temporary name and still holds the original), then each stand-in
  is exchanged with the original it points at. ``<root>/<id>`` is a complete bundle at every
  step, and its payloads are the original files: a container started meanwhile mounts, through
  the link, the original directory (a copy as stand-in would be deleted with the old version
  under its mount). A lookup that follows the link at the very instant of its exchange may fail
  with ``ELOOP`` (the link, now in the old version, leads to itself); a retry finds the original
  in place. A reader holding the old version's handle may find its payloads gone (``ENOENT``,
  or that ``ELOOP``). Being a link, never a directory, a stand-in is told from an original
  without doubt, which is what makes the crash repair below unambiguous.
* Without it, when every payload directory is carried over (the usual rewrite: only
  ``config.json`` changed), no directory is renamed at all, which a Windows mount could refuse:
  ``.digest`` is deleted, ``links.json`` and ``config.json`` are replaced one file at a time
  (each atomically), then the new ``.digest`` is put in place. A reader may see one of these
  files new and the other old for an instant (only if both changed); it never misses a file.
  When a payload set changed, the old bundle is renamed aside, the carried directories are moved
  from it into the new version, and the new version renamed in: absent for an instant, never
  partial.

A reader that needs several files of one version opens the bundle directory once and reads
relative to that handle; reading by path twice may straddle a swap.

What a crash (or a failure the writer cannot undo) can leave: (1) before the swap, a ``.tmp-``
directory holding part or all of the new version, the old bundle intact in place; (2) after it,
the new bundle in place and the old version under ``.tmp-`` (exchange) or ``.old-`` (fallback),
perhaps half deleted; (3) in the fallback only, between its renames, nothing at ``<root>/<id>``
and both versions under ``.old-``/``.tmp-`` names, a carried directory in either; (4) with
exchange, between the swap and the exchange of a stand-in with its original, the new bundle in
place whose payload directory is still the stand-in, the original inside the old version under
``.tmp-``; (5) in the fallback's in-place update, the bundle in place without ``.digest``, each
file whole, some replaced. :meth:`LocalBundleWriter.sweep` first puts every original of case
(4) back in place (an exchange with its stand-in), then deletes every ``.tmp-``/``.old-``
leftover at start-up; a write of the bundle does the same repair first. No state shows a bundle
without its payloads at ``<root>/<id>``. A bundle that is missing (case 3) or has no
``.digest`` (case 5) is rewritten by the initial list; in case 3 that rewrite writes its
payloads fresh, so a container still running from it keeps mounts of deleted directories, as
every rewrite did before carrying.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import hashlib
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from secrets import token_bytes, token_hex
from typing import ParamSpec, TypeVar, cast

from controller.bundle import (
    CONFIG_FILE,
    CONFIGS_DIR,
    DIGEST_KEY_BYTES,
    LINKS_FILE,
    SECRETS_DIR,
    BundleContent,
    check_bundle_id,
    is_valid_bundle_id,
)
from controller.errors import PermanentError, TransientError
from controller.models import check_payload_id

DIGEST_FILE = ".digest"
KEY_FILE = ".digest-key"
TEMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"

_PAYLOAD_DIRS = (SECRETS_DIR, CONFIGS_DIR)
_FILE_MODE = 0o600
_DIR_MODE = 0o700
# Without O_BINARY, Windows' os.open translates newlines.
_O_BINARY: int = getattr(os, "O_BINARY", 0)
_O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)
_O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
# Opening a FIFO planted under a file's name must not block: fstat then refuses it.
_O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
# What os.link raises where the file system has no hard links.
_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV, errno.EINVAL}
)
# A leftover is "<TEMP_PREFIX or OLD_PREFIX><tag>-<random>", random 8 characters without a dash
# (tempfile's or token_hex(4)); it fits in one file name (255 bytes: NTFS, ext4, XFS) whenever
# the bundle id does, because a tag is never longer than _TAG_MAX.
_NAME_MAX = 255
_RANDOM_CHARS = 8
_TAG_MAX = _NAME_MAX - max(len(TEMP_PREFIX), len(OLD_PREFIX)) - 1 - _RANDOM_CHARS
_TAG_HASH_CHARS = 32
# Temporary key files are "<TEMP_PREFIX><_KEY_TEMP_ID>-<random>": the sweep deletes a crash's.
_KEY_TEMP_ID = "digest-key"

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

    Blocking file work runs in a thread. Calls for one bundle id are serialised (the work queue
    already runs one key at a time; this holds even without it). Failures of the file system
    raise :class:`~controller.errors.TransientError`; a bad bundle id or file name raises
    :class:`~controller.errors.PermanentError` before any path is built.
    """

    def __init__(self, root: Path, *, fsync_threads: int = 8) -> None:
        """``fsync_threads``: how many fsyncs may run at once (0: one after another)."""
        self._root = root
        self._locks: dict[str, _IdLock] = {}
        self._key: bytes | None = None
        self._key_lock = asyncio.Lock()
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
        check_bundle_id(bundle_id)
        _check_file_names(content.files)  # refused before anything is created, the key included
        try:
            key = await self._digest_key()
            async with self._lock(leftover_tag(bundle_id)):
                return await _in_thread(
                    write_bundle_sync,
                    self._root,
                    bundle_id,
                    content,
                    fsync_executor=self._fsync_pool,
                    key=key,
                )
        except OSError as exc:
            raise TransientError(f"cannot write bundle {bundle_id}: {exc}") from exc

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
        self, live_ids: Collection[str], *, owned: Collection[str] | None = None
    ) -> list[str]:
        """Delete bundles not in ``live_ids`` and every temporary leftover; their names, sorted.

        With ``owned``, only bundles with those ids and the leftovers of those ids are
        candidates: another process sharing the root writes the rest (a leftover of an id
        outside ``owned`` may be its write in progress). A payload directory that a crash left
        in a leftover, with a stand-in in its bundle, is put back first (see the module
        docstring). Meant for start-up, before workers run, but safe beside them: each id's
        entries are handled under that id's lock, so a write in progress never loses its
        temporary directory.
        """
        live = frozenset(live_ids)
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


def write_bundle_sync(
    root: Path,
    bundle_id: str,
    content: BundleContent,
    *,
    fsync_executor: Executor | None = None,
    key: bytes | None = None,
) -> bool:
    """Write one bundle atomically and durably; ``False`` when the same content is there.

    Blocking. With ``fsync_executor`` (not the executor running this call) the fsyncs of the
    new files and directories run at once, so the file system can commit them together
    instead of one journal commit each. Payload directories whose content is unchanged are
    carried over into the new version (module docstring). ``key`` is the root's digest key
    (:func:`load_digest_key`, read here when not given). Raises
    :class:`~controller.errors.PermanentError` for a bad bundle id or file name (before any path
    is built) and :class:`OSError` when the file system fails.
    """
    check_bundle_id(bundle_id)
    _check_file_names(content.files)
    digest = content.keyed_digest(load_digest_key(root) if key is None else key)
    live = root / bundle_id
    for holder in _restore_carried(root, bundle_id):
        _discard(holder)
    if _read_digest(live) == digest:
        return False
    _ensure_root(root)
    payloads = _payload_sets(content.files)
    carried = [name for name in _PAYLOAD_DIRS if payloads[name] and _holds(live / name, payloads)]
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{leftover_tag(bundle_id)}-", dir=root))
    try:
        syncs = _fill(tmp, content.files, digest, skip=carried)
        if carried and _renameat2 is not None:
            for name in carried:
                # Relative to the new version's directory; once the versions are swapped this
                # name is the old version's, which then still holds the original.
                os.symlink(f"../{tmp.name}/{name}", tmp / name)
        _sync_all(syncs, fsync_executor)
        swapped = bool(carried) and _exchange(tmp, live)
    except BaseException:
        _discard(tmp)
        raise
    if swapped:
        _finish_carry(root, live, tmp, carried, fsync_executor)
        return True
    try:
        if carried and _in_place_possible(live, payloads, carried):
            _replace_in_place(live, tmp, content.files)
        else:
            _install(root, live, tmp, bundle_id, carried)
    finally:
        # Holds nothing after a first install, stand-ins at most after an update in place,
        # the old version after an exchange, or a partial new version after a failure.
        _discard(tmp)
    return True


def load_digest_key(root: Path) -> bytes:
    """The root's digest key, creating the root and the key on first use. Blocking.

    Raises :class:`~controller.errors.PermanentError` when ``<root>/.digest-key`` is a link or
    not a regular file, and :class:`OSError` when the file system fails.
    """
    _ensure_root(root)
    path = root / KEY_FILE
    while True:
        found, existing = _read_key(path)
        if existing is not None:
            return existing
        key = token_bytes(DIGEST_KEY_BYTES)
        tmp = root / f"{TEMP_PREFIX}{_KEY_TEMP_ID}-{token_hex(4)}"
        try:
            _write_file(tmp, key)
            _fsync_file(tmp)
            if found:
                os.replace(tmp, path)  # unusable: replaced whole, in one step
            else:
                try:
                    os.link(tmp, path)  # never over a key another writer just created
                except FileExistsError:
                    continue  # read theirs
                except OSError as exc:
                    if exc.errno not in _NO_HARD_LINKS:
                        raise
                    # A file system without hard links (FAT, ReFS): a rename, which two
                    # writers racing at the very first start could both do; the loser's
                    # bundles are rewritten once under the winner's key.
                    os.rename(tmp, path)
            _fsync_dir(root)
        finally:
            _discard(tmp)
        return key


def _read_key(path: Path) -> tuple[bool, bytes | None]:
    """Whether the key file exists, and its key if that is usable."""
    if os.path.islink(path):
        raise PermanentError(f"refusing the digest key {path}: it is a link")
    try:
        fd = os.open(path, os.O_RDONLY | _O_BINARY | _O_NOFOLLOW | _O_NONBLOCK)
    except FileNotFoundError:
        return False, None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermanentError(f"refusing the digest key {path}: not a regular file")
        data = os.read(fd, DIGEST_KEY_BYTES + 1)
    finally:
        os.close(fd)
    # Readable by others: the key may be known, so it protects nothing any more.
    exposed = os.name != "nt" and bool(st.st_mode & 0o077)
    return True, data if len(data) == DIGEST_KEY_BYTES and not exposed else None


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

    When it is not, a bundle whose payloads change is absent (never partial) for an instant
    while it is replaced; Docker mode logs a warning at start-up. Blocking.
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
    if slash != "/" or directory not in _PAYLOAD_DIRS:
        return False
    try:
        check_payload_id(leaf, directory)
    except PermanentError:
        return False
    return not leaf.endswith(".") and leaf.split(".", 1)[0].casefold() not in _WINDOWS_DEVICES


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
            with open(directory / name, "rb") as f:
                if f.read(len(data) + 1) != data:
                    return False
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


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


def _fill(
    directory: Path, files: Mapping[str, bytes], digest: str, *, skip: Collection[str] = ()
) -> list[Callable[[], None]]:
    """Create every file and subdirectory not in ``skip``; the fsyncs that make them durable."""
    syncs: list[Callable[[], None]] = [partial(_fsync_dir, directory)]
    subdirs: set[str] = set()
    for name in sorted(files):
        parent, slash, _ = name.rpartition("/")
        if parent in skip:
            continue
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


def _finish_carry(
    root: Path, live: Path, tmp: Path, carried: list[str], executor: Executor | None
) -> None:
    """After the swap: exchange each stand-in in ``live`` with its original, now in ``tmp``.

    Until then ``tmp`` holds the originals; it is deleted only once none is left in it. A
    failure leaves it for :func:`_restore_carried` (next write or sweep) to finish.
    """
    for name in carried:
        if not _exchange(tmp / name, live / name):
            raise OSError(errno.ENOENT, "cannot move the payload directory back", str(tmp / name))
    try:
        # Every order in which these two become durable is one of the documented crash states.
        _sync_all([partial(_fsync_dir, root), partial(_fsync_dir, live)], executor)
    finally:
        _discard(tmp)  # the old version, with the stand-ins


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
    _delete(live / DIGEST_FILE)
    _fsync_dir(live)
    for name in (LINKS_FILE, CONFIG_FILE):
        if name in files:
            os.replace(tmp / name, live / name)
        else:
            _delete(live / name)
    _fsync_dir(live)
    os.replace(tmp / DIGEST_FILE, live / DIGEST_FILE)
    _fsync_dir(live)


def _install(root: Path, live: Path, tmp: Path, bundle_id: str, carried: list[str]) -> None:
    """Publish the complete directory ``tmp`` as ``live``; afterwards ``tmp`` holds the old one.

    ``carried`` directories move from the old version into ``tmp`` first; this needs the
    fallback (rename aside, move, rename in), as no stand-in keeps the old version whole.
    """
    if not carried and _exchange(tmp, live):
        _fsync_dir(root)
        return
    if not os.path.lexists(live):
        os.rename(tmp, live)
        _fsync_dir(root)
        return
    aside = root / f"{OLD_PREFIX}{leftover_tag(bundle_id)}-{token_hex(_RANDOM_CHARS // 2)}"
    os.rename(live, aside)
    moved: list[str] = []
    try:
        for name in carried:
            _delete(tmp / name)  # a stand-in, if one was made
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
    if moved:
        _fsync_dir(live)
    _fsync_dir(root)
    _discard(aside)


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
            and _is_real_dir(original)
            and _exchange(original, stand_in)
        ):
            _fsync_dir(live)
            holders.add(holder)
        else:
            lost = True
            _delete(live / DIGEST_FILE)
            _fsync_dir(live)
    # Each holds the old version now, with a stand-in.
    return set() if lost else holders


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


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
    root: Path, live: frozenset[str], owned: frozenset[str] | None
) -> dict[str, tuple[list[str], list[str]]]:
    """Entries of ``root`` to delete, grouped by tag: the bundle ids present with that tag (to
    repair before anything goes) and the names to delete."""
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
            if name in tags and name not in live and (owned is None or name in owned):
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
