"""Windows path rules, applied whatever OS runs winspec (the bundles are for a Windows node).

``ntpath`` is the reference for every function here. It is slow (a join or a normpath costs
about a microsecond), so each function first checks cheaply whether the input is one whose
result is known without it, and calls ``ntpath`` for everything else.
"""

from __future__ import annotations

import ntpath
import posixpath
import re
from collections.abc import Sequence

# A rooted path with forward slashes whose components are not empty, "." or ".." and have no
# ":" (ntpath reads "/:x" as drive "/:"): normpath only turns its slashes into backslashes.
# LCOW mount destinations look like this.
_CLEAN_SLASHED = re.compile(r"^(/(?!\.\.?(?:/|\Z))[^\\/:]+)+\Z")


def is_absolute(path: str) -> bool:
    """Whether a path is absolute by Windows rules: drive, UNC, or rooted with ``\\`` or ``/``."""
    # ntpath.splitdrive finds a drive in "X:" and UNC paths start with a separator anyway.
    return path[1:2] == ":" or path[:1] in ("\\", "/")


def has_drive_root(path: str) -> bool:
    """Whether a path starts with a drive and a root (``C:\\``, ``c:/``).

    ``ntpath.join(anything, path)`` returns such a path unchanged.
    """
    return path[1:2] == ":" and path[2:3] in ("\\", "/")


def _is_clean(path: str) -> bool:
    """Whether ``ntpath.normpath`` would return a path unchanged, by a sufficient test.

    The path is a drive root (``C:\\``) alone or followed by names separated by single
    backslashes: no ``/``, no empty, ``.`` or ``..`` component, no trailing backslash (normpath
    drops one, except a drive root's). Most Docker paths are; a few substring searches cost
    much less than normpath.
    """
    if path[1:3] != ":\\" or not (path[0].isascii() and path[0].isalpha()):
        return False
    return len(path) == 3 or (
        "/" not in path
        and "\\\\" not in path
        and "\\.\\" not in path
        and "\\..\\" not in path
        and not path.endswith(("\\", "\\.", "\\.."))
    )


def depth(path: str) -> int:
    """The number of separators in the cleaned path (moby sorts mounts by this)."""
    if _is_clean(path):
        return path.count("\\")
    if _CLEAN_SLASHED.match(path):
        return path.count("/")
    return ntpath.normpath(path).count("\\")


def clean(path: str) -> str:
    """``ntpath.normpath``, skipped for paths it would not change."""
    if _is_clean(path):
        return path
    return ntpath.normpath(path)


def looks_windows(path: str) -> bool:
    """Whether a host path is a Windows path (has a drive or a backslash)."""
    return "\\" in path or bool(ntpath.splitdrive(path)[0])


def are_plain_names(parts: Sequence[str]) -> bool:
    """Whether each part is one path component ``ntpath.join`` treats as a name, nothing more.

    Not empty, no separator, and no ``:`` (``ntpath`` would read a drive into ``"x:y"``).
    ``"."`` and ``".."`` are plain names to ``ntpath.join`` (only ``normpath`` resolves them).
    """
    joined = "".join(parts)  # one search of each character for all the parts
    return "" not in parts and "\\" not in joined and "/" not in joined and ":" not in joined


def host_join(base: str, *parts: str) -> str:
    """Join onto a host path with that path's own separator (Windows node or dev host)."""
    if parts and has_drive_root(base) and are_plain_names(parts):
        # The common case, ("C:\\ProgramData\\docker", "containers", id, "secrets"): for a
        # drive-rooted base and plain names, ntpath.join only puts a backslash between them.
        return base + ("" if base[-1] in ("\\", "/") else "\\") + "\\".join(parts)
    if looks_windows(base):
        return ntpath.join(base, *parts)
    return posixpath.join(base, *parts)
