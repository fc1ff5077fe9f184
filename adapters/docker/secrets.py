"""Reading a granted swarm secret from ``--secrets-dir`` without trusting what is there.

The directory is where the swarm mounts the secrets granted to winspec's own service, by secret
name. Whoever can write into it could plant a link to ``/etc/shadow``, a FIFO that blocks the
reader forever, a device or a directory; winspec copies what it reads into a bundle that is
mounted into someone else's container. So a secret is opened without following links
(``O_NOFOLLOW``) and without blocking (``O_NONBLOCK``), the *opened* file is checked with
``fstat`` (a regular file of at most :data:`MAX_SECRET_BYTES`), and anything else is a
:class:`PermanentError` naming the secret and what was found. The one link accepted is the one
Docker itself makes on Windows: there a granted secret is a symbolic link to
``<internal secrets>\\<secret id>`` (:func:`windows_link_allowed`).

The directory itself is the operator's configuration and is trusted; only what is in it is not.
"""

from __future__ import annotations

import errno
import ntpath
import os
import re
import stat
from collections.abc import Callable

from controller.errors import PermanentError, TransientError

#: swarmkit's limit on a secret's size (``MaxSecretSize``).
MAX_SECRET_BYTES = 500 * 1024
#: Where a Windows container sees the secrets Docker grants it; the links point there.
WINDOWS_INTERNAL_SECRETS = "C:\\ProgramData\\Docker\\internal\\secrets"
#: swarmkit's grammar of secret names (``validateSecretName``), at most 64 characters.
_SECRET_NAME = re.compile(r"[a-zA-Z0-9]+(?:[a-zA-Z0-9_.-]*[a-zA-Z0-9])?")
_MAX_NAME = 64
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_BINARY", 0)
)
_CHUNK = 64 * 1024

#: Whether a link's target (as ``readlink`` gives it) is one Docker made; ``None``: no link is.
LinkRule = Callable[[str], bool]


def check_secret_name(name: str, secret_id: str) -> str:
    """``name`` when it is a swarm secret name (so a single plain path component)."""
    if len(name) > _MAX_NAME or not _SECRET_NAME.fullmatch(name):
        raise PermanentError(
            f"secret {secret_id!r} has an unusable name {name[:80]!r}: "
            "not a swarm secret name, refused before it becomes a path"
        )
    return name


def _strip_device_prefix(path: str) -> str:
    for prefix in ("\\\\?\\", "\\??\\"):
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


def windows_link_allowed(target: str, *, secret_id: str, daemon_root: str | None) -> bool:
    """Whether a link target is the one Docker makes on Windows for the secret ``secret_id``.

    Docker links a granted secret to ``C:\\ProgramData\\Docker\\internal\\secrets\\<id>`` (the
    container's view of its secrets mount); ``<daemon root>\\internal\\secrets\\<id>`` is
    accepted too for winspec running on the host itself. Exactly that file: an absolute path
    with no ``.``/``..`` component, compared case-insensitively component by component.
    """
    text = _strip_device_prefix(target.replace("/", "\\"))
    drive, rest = ntpath.splitdrive(text)
    if not drive or not rest.startswith("\\") or "\x00" in text:
        return False
    parts = rest.split("\\")
    if any(p in (".", "..") for p in parts[1:]) or "" in parts[1:]:
        return False
    bases = [WINDOWS_INTERNAL_SECRETS]
    if daemon_root:
        bases.append(ntpath.join(_strip_device_prefix(daemon_root), "internal", "secrets"))
    wanted = _components(text)
    return any(_components(ntpath.join(base, secret_id)) == wanted for base in bases)


def _components(path: str) -> list[str]:
    drive, rest = ntpath.splitdrive(path.replace("/", "\\"))
    return [drive.lower(), *(p.lower() for p in rest.split("\\") if p)]


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


def _what(mode: int) -> str:
    return next((text for test, text in _KINDS if test(mode)), "not a regular file")


def read_secret(
    directory: str,
    name: str,
    secret_id: str,
    *,
    link_allowed: LinkRule | None = None,
    max_bytes: int = MAX_SECRET_BYTES,
) -> bytes:
    """The bytes of the granted secret ``name``, read from ``directory`` (blocking: a thread).

    ``link_allowed`` decides which link targets are Docker's own (Windows); without it every
    link is refused. Every failure is typed: not granted, a link, not a regular file, too big,
    or unreadable are :class:`PermanentError`; other I/O errors :class:`TransientError`.
    """
    check_secret_name(name, secret_id)
    path = os.path.join(directory, name)
    label = f"secret {name!r} ({secret_id})"
    try:
        fd = _open_no_follow(path, label, directory)
    except FileNotFoundError as exc:
        raise PermanentError(
            f"{label} is not granted to winspec: grant it to the winspec service so it appears "
            f"in {directory}"
        ) from exc
    if fd is None:  # a link: only one Docker made, and then what it points at
        target = _read_link(path, label)
        if link_allowed is None or not link_allowed(target):
            raise PermanentError(
                f"{label} in {directory} is a symbolic link to {target[:200]!r}, which is not "
                "where Docker grants secrets: refused"
            )
        try:
            fd = _open_no_follow(os.path.join(directory, target), label, directory)
        except FileNotFoundError as exc:
            raise PermanentError(f"{label} is a link to {target!r}, which does not exist") from exc
        if fd is None:
            raise PermanentError(f"{label} is a link to {target!r}, itself a link: refused")
    try:
        return _read_regular(fd, label, max_bytes)
    finally:
        os.close(fd)


def read_plain_file(path: str, label: str, *, max_bytes: int) -> bytes:
    """The bytes of ``path``, which must be a regular file (not a link) of at most ``max_bytes``.

    Opened like a secret (no link followed, never blocking, ``fstat`` of what was opened).
    A missing file raises :class:`FileNotFoundError` for the caller to judge; every other
    failure is typed as in :func:`read_secret`.
    """
    directory = os.path.dirname(path) or "."
    fd = _open_no_follow(path, label, directory)
    if fd is None:
        raise PermanentError(f"{label} is a symbolic link: refused")
    try:
        return _read_regular(fd, label, max_bytes)
    finally:
        os.close(fd)


def _open_no_follow(path: str, label: str, directory: str) -> int | None:
    """An fd of ``path`` opened without following a final link; ``None`` when it is a link."""
    if os.name == "nt" and os.path.islink(path):
        return None  # Windows has no O_NOFOLLOW: the link is looked at first
    try:
        return os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        if exc.errno == errno.ENXIO:  # a socket, or a device without a driver
            raise PermanentError(f"{label} in {directory} is a special file: refused") from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise PermanentError(f"{label} in {directory}: permission denied") from exc
        if exc.errno in (errno.ENOTDIR, errno.ENAMETOOLONG, errno.EINVAL):
            raise PermanentError(f"cannot open {label} in {directory}: {exc.strerror}") from exc
        raise TransientError(f"cannot read {label}: {exc.strerror}") from exc
    except ValueError as exc:  # an embedded NUL (the name check lets none through)
        raise PermanentError(f"{label}: invalid path") from exc


def _read_link(path: str, label: str) -> str:
    try:
        return os.readlink(path)
    except OSError as exc:
        raise TransientError(f"cannot read the link of {label}: {exc.strerror}") from exc


def _read_regular(fd: int, label: str, max_bytes: int) -> bytes:
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermanentError(f"{label} is {_what(st.st_mode)}, not a regular file: refused")
        if st.st_size > max_bytes:
            raise PermanentError(
                f"{label} is {st.st_size} bytes, more than the {max_bytes} allowed"
            )
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except BlockingIOError as exc:  # a regular file never blocks; something swapped it
        raise TransientError(f"cannot read {label}: it would block") from exc
    except OSError as exc:
        raise TransientError(f"cannot read {label}: {exc.strerror}") from exc
    if size > max_bytes:
        raise PermanentError(f"{label} grew past the {max_bytes} bytes allowed while being read")
    return b"".join(chunks)
