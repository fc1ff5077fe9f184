"""Windows path rules, applied whatever OS runs winspec (the bundles are for a Windows node)."""

from __future__ import annotations

import ntpath
import posixpath


def is_absolute(path: str) -> bool:
    """Whether a path is absolute by Windows rules: drive, UNC, or rooted with ``\\`` or ``/``."""
    drive, _ = ntpath.splitdrive(path)
    return bool(drive) or path[:1] in ("\\", "/")


def depth(path: str) -> int:
    """The number of separators in the cleaned path (moby sorts mounts by this)."""
    return ntpath.normpath(path).count("\\")


def looks_windows(path: str) -> bool:
    """Whether a host path is a Windows path (has a drive or a backslash)."""
    return "\\" in path or bool(ntpath.splitdrive(path)[0])


def host_join(base: str, *parts: str) -> str:
    """Join onto a host path with that path's own separator (Windows node or dev host)."""
    if looks_windows(base):
        return ntpath.join(base, *parts)
    return posixpath.join(base, *parts)
