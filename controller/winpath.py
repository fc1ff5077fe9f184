"""Windows path rules, applied whatever OS runs winspec (the bundles are for a Windows node)."""

from __future__ import annotations

import ntpath
import posixpath
import re

# A path ntpath.normpath would return unchanged: a drive root and components that are not
# empty, "." or "..", with backslashes only. Most Docker paths are; they skip normpath.
_CLEAN = re.compile(r"^[A-Za-z]:(\\(?!\.\.?(?:\\|$))[^\\/]+)*\\?\Z")


def is_absolute(path: str) -> bool:
    """Whether a path is absolute by Windows rules: drive, UNC, or rooted with ``\\`` or ``/``."""
    # ntpath.splitdrive finds a drive in "X:" and UNC paths start with a separator anyway.
    return path[1:2] == ":" or path[:1] in ("\\", "/")


def depth(path: str) -> int:
    """The number of separators in the cleaned path (moby sorts mounts by this)."""
    if _CLEAN.match(path) and not (path.endswith("\\") and len(path) > 3):
        return path.count("\\")
    return ntpath.normpath(path).count("\\")


def clean(path: str) -> str:
    """``ntpath.normpath``, skipped for paths it would not change."""
    if _CLEAN.match(path) and not (path.endswith("\\") and len(path) > 3):
        return path
    return ntpath.normpath(path)


def looks_windows(path: str) -> bool:
    """Whether a host path is a Windows path (has a drive or a backslash)."""
    return "\\" in path or bool(ntpath.splitdrive(path)[0])


def host_join(base: str, *parts: str) -> str:
    """Join onto a host path with that path's own separator (Windows node or dev host)."""
    if looks_windows(base):
        return ntpath.join(base, *parts)
    return posixpath.join(base, *parts)
