"""The digest key of a bundle root: ``<root>/.digest-key``, 32 random bytes, mode 0600.

Each bundle's ``.digest`` is an HMAC-SHA256 under this key
(:meth:`~controller.bundle.BundleContent.keyed_digest`), no oracle for the secrets it covers.
The key is created on first use, complete or not at all (written to a temporary file, fsynced,
then hard-linked to its name, so two writers agree on one key), and read by every later run. A
key file that is missing, of the wrong length or readable by others is replaced by a new key
(readable by others counts only where the file system keeps modes: NTFS or FAT mounted on Linux
show every file 0777); one that is a link or not a regular file is refused. See
``docs/bundles.md``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from secrets import token_bytes, token_hex

from adapters.bundles import fsops
from controller.bundle import DIGEST_KEY_BYTES
from controller.errors import PermanentError

KEY_FILE = ".digest-key"
#: A temporary key file is named as the bundle writer names its leftovers,
#: ``.tmp-<tag>-<random>`` (tag ``digest-key``): its sweep deletes one that a crash left.
KEY_TEMP_PREFIX = ".tmp-digest-key-"

_O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
# Opening a FIFO planted under a file's name must not block: fstat then refuses it.
_O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
# What os.link raises where the file system has no hard links.
_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV, errno.EINVAL}
)


def load_digest_key(root: Path) -> bytes:
    """The root's digest key, creating the root and the key on first use. Blocking.

    Raises :class:`~controller.errors.PermanentError` when ``<root>/.digest-key`` is a link or
    not a regular file, and :class:`OSError` when the file system fails.
    """
    fsops.ensure_dir(root)
    path = root / KEY_FILE
    while True:
        found, existing, existing_raw = _read_key(path)
        if existing is not None:
            return existing
        key = token_bytes(DIGEST_KEY_BYTES)
        tmp = root / f"{KEY_TEMP_PREFIX}{token_hex(4)}"
        try:
            fsops.write_file(tmp, key)
            if found and existing_raw is not None and _modes_ignored(tmp):
                # Created 0600 yet readable by others: this file system keeps no modes (NTFS
                # or FAT mounted on Linux), so the existing key's mode says nothing about it
                # and replacing it would only give every start, every process, a new key.
                return existing_raw
            fsops.fsync_file(tmp)
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
            fsops.fsync_dir(root)
        finally:
            fsops.discard(tmp)
        return key


def _read_key(path: Path) -> tuple[bool, bytes | None, bytes | None]:
    """Whether the key file exists, its key if that is usable, and its key if that is usable
    but for its mode."""
    if os.path.islink(path):
        raise PermanentError(f"refusing the digest key {path}: it is a link")
    try:
        fd = os.open(path, os.O_RDONLY | fsops.O_BINARY | _O_NOFOLLOW | _O_NONBLOCK)
    except FileNotFoundError:
        return False, None, None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermanentError(f"refusing the digest key {path}: not a regular file")
        data = os.read(fd, DIGEST_KEY_BYTES + 1)
    finally:
        os.close(fd)
    # Readable by others: the key may be known, so it protects nothing any more.
    exposed = os.name != "nt" and bool(st.st_mode & 0o077)
    whole = data if len(data) == DIGEST_KEY_BYTES else None
    return True, None if exposed else whole, whole


def _modes_ignored(path: Path) -> bool:
    """Whether the file ``path``, just created mode 0600, shows other bits all the same."""
    return os.name != "nt" and bool(os.lstat(path).st_mode & 0o077)
