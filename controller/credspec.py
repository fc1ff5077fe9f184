"""Credential spec security options (rules S21–S26) and the port that reads them.

Parsing and the containment check of ``file://`` paths are pure and live here, so every
caller gets the same messages. Reading a file or the Windows registry is an adapter's job
(:class:`CredentialSpecReader`); swarm configs arrive already resolved in the request.
"""

from __future__ import annotations

import functools
import ntpath
import re
from typing import Literal, Protocol

import msgspec

from controller.errors import SpecError
from controller.winpath import are_plain_names, clean, has_drive_root, host_join, is_absolute

Scheme = Literal["file", "registry", "config", "raw"]
_SCHEME_BY_NAME: dict[str, Scheme] = {
    "file": "file",
    "registry": "registry",
    "config": "config",
    "raw": "raw",
}

CREDENTIAL_SPEC_DIR = "CredentialSpecs"
_CONTROL = re.compile(r"[\x00-\x1f]")
INVALID_VALUE = (
    "invalid credential spec security option - value must be prefixed by 'file://', "
    "'registry://', or 'raw://' followed by a non-empty value"
)


class CredentialSpecOption(msgspec.Struct, frozen=True, kw_only=True):
    """One parsed ``credentialspec=<scheme>://<value>`` security option.

    A frozen msgspec Struct: as immutable as a frozen dataclass, much cheaper to build.
    """

    scheme: Scheme
    value: str


class CredentialSpecReader(Protocol):
    """Reads credential specs that live on the node (file and registry schemes)."""

    def read_file(self, parts: tuple[str, ...], *, base: str, container_id: str) -> str:
        """Contents of ``base`` joined with ``parts`` (already checked to stay under it)."""
        ...

    def read_registry(self, name: str, *, container_id: str) -> str:
        """The registry value ``name`` under Docker's CredentialSpecs key."""
        ...


def _go_lower(text: str) -> str:
    """Go's ``strings.ToLower``: rune by rune with the simple mapping ("İ" → "i", not "i̇")."""
    if text.isascii():
        return text.lower()  # ASCII letters map one to one: Python and Go agree
    return "".join(
        low if len(low := ch.lower()) == 1 else ("i" if ch == "\u0130" else ch) for ch in text
    )


def parse_security_options(options: list[str]) -> list[CredentialSpecOption]:
    """Parse ``HostConfig.SecurityOpt`` into credential spec options, in order (S21, S22)."""
    parsed: list[CredentialSpecOption] = []
    for opt in options:
        if "=" not in opt:
            raise SpecError(f"invalid security option: no equals sign in supplied value {opt}")
        key, value = opt.split("=", 1)
        # Go's strings.EqualFold: simple case folding, so "ſ" matches "s" (casefold agrees here).
        if key.casefold() != "credentialspec":
            raise SpecError(f"security option not supported: {key}")
        raw_scheme, sep, rest = value.partition("://")
        scheme = _SCHEME_BY_NAME.get(_go_lower(raw_scheme))
        if not sep or scheme is None or rest == "":
            raise SpecError(INVALID_VALUE)
        parsed.append(CredentialSpecOption(scheme=scheme, value=rest))
    return parsed


def credential_spec_base(daemon_root: str) -> str:
    """The directory ``file://`` credential specs must be under (``<root>\\CredentialSpecs``)."""
    return host_join(daemon_root, CREDENTIAL_SPEC_DIR)


@functools.lru_cache(maxsize=8)
def _windows_base(daemon_root: str) -> str:
    """:func:`credential_spec_base` with Windows separators, cleaned.

    A node has one daemon root, so this is the same for every request: computed once per root.
    """
    return clean(credential_spec_base(daemon_root).replace("/", "\\"))


def _plain_names(names: list[str]) -> bool:
    """Whether every component is a plain name, not ``"."`` or ``".."`` (cleaning keeps them)."""
    return are_plain_names(names) and "." not in names and ".." not in names


def check_file_path(value: str, *, daemon_root: str) -> tuple[str, ...]:
    """The path components of a ``file://`` value below the base directory (S23).

    Windows path rules apply whatever host runs this: both separators, drive and UNC
    paths are absolute. Unlike moby's string-prefix test the check is a real, case-insensitive
    containment check on the cleaned path.
    """
    if _CONTROL.search(value):
        # Windows allows no NUL or control character in a file name (and a NUL would cut
        # the path short in every system call): refused before the value reaches one.
        raise SpecError(
            "invalid credential spec - file:// path contains a NUL or control character"
        )
    if is_absolute(value):
        raise SpecError("invalid credential spec - file:// path cannot be absolute")
    base_win = _windows_base(daemon_root)
    names = value.split("\\")
    if _plain_names(names) and has_drive_root(base_win) and base_win.isascii():
        # The common case, "file://webapp01.json": names joined onto a clean drive path need
        # no cleaning and stay under it, so the full check below would return them as they
        # are. (ASCII: the check's case folding keeps the base's length, so the slicing agrees.)
        return tuple(names)
    full = ntpath.normpath(ntpath.join(base_win, value)).split("\\")
    # Compare component by component: case folding may change a name's length ("İ"), so the
    # remainder is cut by position in the list, never by a character count.
    base_parts = [ntpath.normcase(p) for p in base_win.rstrip("\\").split("\\")]
    inside = len(full) > len(base_parts) and all(
        ntpath.normcase(f) == b for f, b in zip(full, base_parts, strict=False)
    )
    rest = tuple(p for p in full[len(base_parts) :] if p)
    if not inside or not rest:
        base = credential_spec_base(daemon_root)
        raise SpecError(f"invalid credential spec - file:// path must be under {base}")
    return rest
