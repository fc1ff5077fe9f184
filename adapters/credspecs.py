"""Credential specs that live on the node: files under the daemon root and registry values.

The containment rule for ``file://`` paths (S23) is checked on the value in the core
(:func:`controller.credspec.check_file_path`); here the file is read without trusting the
directory it is in, which anyone who may write below ``<daemon root>\\CredentialSpecs`` could
change while it is read:

- the path is walked from the base one component at a time, each opened relative to the one
  before (``openat``) with ``O_NOFOLLOW``: a link anywhere below the base is refused, by name,
  and swapping a directory for a link mid-read cannot lead outside (the base itself is the
  operator's and may be a link);
- every component is opened ``O_NONBLOCK`` and checked with ``fstat`` after opening (the same
  inode as the ``lstat`` before, a directory or a regular file): a FIFO, device or socket is
  refused before anything blocks on it, and no component is trusted on its name alone;
- at most :data:`MAX_CREDENTIAL_SPEC_BYTES` are read, and the text must be UTF-8;
- the whole read runs in a daemon thread the caller waits for at most :data:`READ_TIMEOUT_SECONDS`
  (a file system that stops answering cannot hold a reconcile, or the process's exit, for ever).

Hosts without ``openat`` (Windows) open the path and then check what was opened instead: its
real path must be under the base and be the same file as the one opened.

Every failure is a :class:`SpecError` naming the file and the container (a timeout a
:class:`TransientError`), never an ``OSError``. A Windows daemon root is refused on any other OS
(``winspec generate`` on Linux reads a request whose daemon root is ``C:\\ProgramData\\docker``):
the file lives on that Windows host, and the request must carry its contents.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from adapters.threads import (
    CallLimiter,
    CallTimeoutError,
    TooManyStuckCallsError,
    call_with_timeout,
)
from controller.errors import SpecError, TransientError
from controller.winpath import looks_windows

REGISTRY_KEY = (
    r"SOFTWARE\Microsoft\Windows NT\CurrentVersion\Virtualization\Containers\CredentialSpecs"
)
#: The largest credential spec file read (a real one is a few kilobytes of JSON).
MAX_CREDENTIAL_SPEC_BYTES = 1024 * 1024
#: How long one file or registry read may take before the reconcile gives up (and retries).
READ_TIMEOUT_SECONDS = 10.0
#: How many reads may be unfinished at once (stuck ones included) before new ones are refused.
MAX_UNFINISHED_READS = 16

_T = TypeVar("_T")
# What the walk needs: openat (dir_fd) and O_NOFOLLOW / O_DIRECTORY / O_NONBLOCK.
WALK_SUPPORTED = (
    os.open in os.supports_dir_fd
    and os.stat in os.supports_dir_fd
    and all(hasattr(os, flag) for flag in ("O_NOFOLLOW", "O_DIRECTORY", "O_NONBLOCK"))
)
_COMMON_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_NOINHERIT", 0)
)


class _RefusedError(Exception):
    """The file is not one winspec reads; the message says why (turned into a SpecError)."""


class NodeCredentialSpecReader:
    """Reads ``file://`` and ``registry://`` credential specs on the host winspec runs on."""

    def __init__(
        self,
        *,
        timeout: float = READ_TIMEOUT_SECONDS,
        max_bytes: int = MAX_CREDENTIAL_SPEC_BYTES,
        max_unfinished: int = MAX_UNFINISHED_READS,
    ) -> None:
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._limiter = CallLimiter(max_unfinished)

    def read_file(self, parts: tuple[str, ...], *, base: str, container_id: str) -> str:
        """Read ``base/parts…`` without following a link or blocking on a special file (S23).

        A Windows base (``C:\\ProgramData\\docker\\CredentialSpecs``) can only be read on
        Windows: elsewhere it would be taken as a relative path under the current directory.
        """
        shown = "\\".join(parts)
        if os.name != "nt" and looks_windows(base):
            raise SpecError(
                f"file:// credential spec {shown} is under a Windows daemon root ({base}); it "
                "can only be read on that Windows host — resolve it into the request's "
                "credentialSpecs.file map"
            )
        full = os.path.join(base, *parts) if _plain(parts) else f"{base}{os.sep}{shown}"
        what = f"credential spec file {full!r} for container {container_id}"
        if not _plain(parts):
            raise SpecError(f"{what} could not be read: not a plain relative path")
        max_bytes = self._max_bytes
        data = self._bounded(lambda: read_contained(base, parts, max_bytes=max_bytes), what)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError(f"{what} could not be read: not UTF-8 text ({exc.reason})") from exc

    def read_registry(self, name: str, *, container_id: str) -> str:
        """Read a credential spec from Docker's registry key (S24); Windows hosts only."""
        if sys.platform != "win32":
            raise SpecError(
                f"registry credential spec {name!r} for container {container_id} cannot be "
                "read: registry:// credential specs are only available on a Windows host"
            )
        if "\0" in name:
            raise SpecError(
                f"registry credential spec {name!r} for container {container_id} was not found"
            )
        what = f"registry credential spec {name!r} for container {container_id}"
        return self._bounded(lambda: _read_registry(name, container_id), what)

    def _bounded(self, fn: Callable[[], _T], what: str) -> _T:
        """``fn()`` under the read timeout; every failure typed and naming ``what``."""
        try:
            return call_with_timeout(fn, timeout=self._timeout, limiter=self._limiter)
        except CallTimeoutError as exc:
            raise TransientError(
                f"{what} could not be read within {self._timeout:g} s (the file system does "
                "not answer); retrying"
            ) from exc
        except TooManyStuckCallsError as exc:
            raise TransientError(
                f"{what} was not read: {exc} (the file system does not answer); retrying"
            ) from exc
        except _RefusedError as exc:
            raise SpecError(f"{what} could not be read: {exc}") from exc
        except OSError as exc:
            raise SpecError(f"{what} could not be read: {_reason(exc)}") from exc
        except ValueError as exc:  # e.g. an embedded NUL that slipped past the checks
            raise SpecError(f"{what} could not be read: {exc}") from exc


def _plain(parts: Sequence[str]) -> bool:
    """Whether every part is one ordinary file name (no separator, NUL, ``.`` or ``..``)."""
    return bool(parts) and all(
        p not in ("", ".", "..") and "/" not in p and "\\" not in p and "\0" not in p for p in parts
    )


def _reason(exc: OSError) -> str:
    """An OS error's reason without its path (the message names the file already)."""
    if exc.errno == errno.ENOENT:
        return "no such file or directory"
    if exc.errno == errno.ELOOP:
        return "it is a link (links are not followed)"
    return exc.strerror or type(exc).__name__


def _kind(mode: int) -> str:
    """What a file that is neither a directory nor a regular file is, for messages."""
    if stat.S_ISLNK(mode):
        return "a link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def read_contained(base: str, parts: Sequence[str], *, max_bytes: int) -> bytes:
    """The bytes of the regular file ``base/parts…``, never reached through a link.

    Blocking; raises ``OSError`` or a refusal (an exception whose text says why).
    """
    if WALK_SUPPORTED:
        return _read_walking(base, parts, max_bytes=max_bytes)
    return _read_verified(base, parts, max_bytes=max_bytes)


def _read_walking(base: str, parts: Sequence[str], *, max_bytes: int) -> bytes:
    """Open each component relative to the last with ``O_NOFOLLOW``; check each with fstat."""
    fd = os.open(base, _COMMON_FLAGS | os.O_DIRECTORY)
    try:
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            where = "/".join(parts[: i + 1])
            before = os.stat(name, dir_fd=fd, follow_symlinks=False)
            _check_component(before.st_mode, where, last=last)
            flags = _COMMON_FLAGS | os.O_NOFOLLOW | (0 if last else os.O_DIRECTORY)
            try:
                next_fd = os.open(name, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped since the stat
                    raise _RefusedError(f"{where} changed while it was opened") from exc
                raise
            os.close(fd)
            fd = next_fd
            opened = os.fstat(fd)
            _check_component(opened.st_mode, where, last=last)
            if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
                raise _RefusedError(f"{where} changed while it was opened")
        return _read_bounded(fd, max_bytes)
    finally:
        os.close(fd)


def _check_component(mode: int, where: str, *, last: bool) -> None:
    if stat.S_ISLNK(mode):
        raise _RefusedError(
            f"{where} is a link (links below the credential spec directory are refused)"
        )
    if not last and not stat.S_ISDIR(mode):
        raise _RefusedError(f"{where} is {_kind(mode)}, not a directory")
    if last and not stat.S_ISREG(mode):
        raise _RefusedError(f"{where} is {_kind(mode)}, not a regular file")


def _read_verified(base: str, parts: Sequence[str], *, max_bytes: int) -> bytes:
    """Without ``openat``: open by path, then check where the file opened really is.

    The path is asked of the open file itself (not resolved again by name), so a link swapped
    in or out around the open cannot make an outside file look inside.
    """
    fd = os.open(os.path.join(base, *parts), _COMMON_FLAGS)
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise _RefusedError(f"{'/'.join(parts)} is {_kind(opened.st_mode)}, not a regular file")
        real_base = os.path.normcase(os.path.realpath(base))
        real_full = os.path.normcase(_opened_path(fd))
        if os.path.commonpath([real_base, real_full]) != real_base or real_full == real_base:
            raise _RefusedError(f"it resolves outside {base} (links are not followed out of it)")
        return _read_bounded(fd, max_bytes)
    finally:
        os.close(fd)


def _opened_path(fd: int) -> str:
    """The real path of the file open as ``fd``, asked of the system by handle."""
    if sys.platform == "win32":  # pragma: no cover - Windows only
        import ctypes
        import msvcrt
        from ctypes import wintypes

        get_path = ctypes.windll.kernel32.GetFinalPathNameByHandleW
        get_path.argtypes = [wintypes.HANDLE, wintypes.LPWSTR, wintypes.DWORD, wintypes.DWORD]
        get_path.restype = wintypes.DWORD
        size = 32768
        buffer = ctypes.create_unicode_buffer(size)
        length = get_path(msvcrt.get_osfhandle(fd), buffer, size, 0)
        if length == 0 or length >= size:
            raise ctypes.WinError()
        path: str = buffer.value
        if path.startswith("\\\\?\\UNC\\"):
            return "\\\\" + path[len("\\\\?\\UNC\\") :]
        return path.removeprefix("\\\\?\\")
    return os.readlink(f"/proc/self/fd/{fd}")


def _read_bounded(fd: int, max_bytes: int) -> bytes:
    """At most ``max_bytes`` from ``fd``; a longer file is refused."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = os.read(fd, max_bytes + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise _RefusedError(f"it is larger than {max_bytes} bytes")


def _read_registry(name: str, container_id: str) -> str:  # pragma: no cover - Windows only
    if sys.platform != "win32":
        raise SpecError("registry:// credential specs are only available on a Windows host")
    import winreg

    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, REGISTRY_KEY) as key:
            value, _value_type = winreg.QueryValueEx(key, name)
    except FileNotFoundError as exc:
        raise SpecError(
            f'registry credential spec "{name}" for container {container_id} was not found'
        ) from exc
    if not isinstance(value, str):
        raise SpecError(
            f"registry credential spec {name!r} for container {container_id} is not a string"
        )
    return value
