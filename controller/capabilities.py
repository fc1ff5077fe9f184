"""Linux capabilities for LCOW specs, as moby's ``oci/caps`` computes them (rule S30)."""

from __future__ import annotations

from collections.abc import Sequence

from controller.errors import SpecError

#: Docker's default capability set (moby ``oci.DefaultCapabilities``), in Docker's order.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

#: Every capability up to CAP_BLOCK_SUSPEND, in kernel number order (37, no CAP_AUDIT_READ).
ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
)

_KNOWN = frozenset(ALL_CAPABILITIES)
_ALL = "ALL"


def _unknown(cap: str) -> SpecError:
    # Go's %q quoting; capability names never need escaping beyond the quotes.
    return SpecError(f'linux spec capabilities: unknown capability: "{cap}"')


def _go_upper(text: str) -> str:
    """Go's ``strings.ToUpper``: rune by rune, so "ß" or "ﬆ" stay (Python would expand them)."""
    if text.isascii():
        return text.upper()
    return "".join(up if len(up := ch.upper()) == 1 else ch for ch in text)


def _normalize(caps: Sequence[str]) -> list[str]:
    """Upper-case, add ``CAP_``, keep ``ALL``; refuse unknown names."""
    out: list[str] = []
    for raw in caps:
        cap = _go_upper(raw)
        if cap == _ALL:
            out.append(cap)
            continue
        if not cap.startswith("CAP_"):
            cap = "CAP_" + cap
        if cap not in _KNOWN:
            raise _unknown(cap)
        out.append(cap)
    return out


def tweak_capabilities(
    *,
    adds: Sequence[str] | None,
    drops: Sequence[str] | None,
    explicit: Sequence[str] | None,
    privileged: bool,
    basics: Sequence[str] = DEFAULT_CAPABILITIES,
) -> list[str]:
    """The capability list for a container, as moby's ``TweakCapabilities``."""
    if privileged:
        return list(ALL_CAPABILITIES)
    if explicit is not None:
        for cap in explicit:
            if cap not in _KNOWN:
                raise _unknown(cap)
        return list(explicit)
    if not adds and not drops:
        return list(basics)
    cap_drop = _normalize(drops or ())
    cap_add = _normalize(adds or ())
    if _ALL in cap_add:
        return [c for c in ALL_CAPABILITIES if c not in cap_drop]
    if _ALL in cap_drop:
        return cap_add
    return [c for c in basics if c not in cap_drop] + cap_add
