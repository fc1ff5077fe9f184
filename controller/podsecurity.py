"""The Pod Security Standards, applied to a WindowsContainer as Pod Security admission applies
them to a Windows Pod.

A user who may create WindowsContainers in a namespace must get no more host access through
winspec than the namespace's ``pod-security.kubernetes.io/enforce`` label lets a Pod have. Each
control of the standard is mapped onto the spec fields that grant the same access (the
"Pod Security" section of docs/security.md is the table):

========================  ==========  ===================================================
control                   from level  WindowsContainer fields refused
========================  ==========  ===================================================
HostProcess / privileged  baseline    ``privileged: true``
hostPath volumes          baseline    every ``mounts`` entry (its source is a node path,
                                      for ``bind`` and ``volume`` alike)
host devices              baseline    ``devices``, ``deviceCgroupRules``
capabilities              baseline    ``capAdd``/``capabilities`` beyond the baseline set
runAsNonRoot              restricted  ``user`` empty (the image's default) or an
                                      administrator (``ContainerAdministrator``, …)
Linux-only controls       restricted  ``image.os: linux``: allowPrivilegeEscalation and
                                      seccomp cannot be expressed, so not satisfied
========================  ==========  ===================================================

Controls without a WindowsContainer field (host namespaces, host ports, sysctls, /proc mount
type, SELinux, AppArmor) cannot be violated. Pure: a function of the spec and the level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from controller.cluster import WindowsContainerSpec
from controller.errors import PermanentError

Level = Literal["privileged", "baseline", "restricted"]
LEVELS: tuple[Level, ...] = get_args(Level)
#: The namespace label Pod Security admission enforces.
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"

#: Capabilities the baseline level lets a container add (the standard's list).
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
#: Windows accounts that are the container's administrator (what kubelet treats as root).
_WINDOWS_ADMINISTRATORS = frozenset(
    {"containeradministrator", "administrator", "system", "localsystem"}
)


def namespace_level(labels: Mapping[str, str] | None, default: Level) -> Level:
    """The level a namespace enforces: its label, ``default`` without one, and ``restricted``
    for a value that is not a level (the most restrictive, rather than none)."""
    value = (labels or {}).get(ENFORCE_LABEL)
    if value is None:
        return default
    for level in LEVELS:
        if value == level:
            return level
    return "restricted"


@dataclass(frozen=True, slots=True)
class Violation:
    """One control a spec breaks: its name, and the fields that break it."""

    control: str
    fields: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.control} ({', '.join(self.fields)})"


def _capability(name: str) -> str:
    """A capability as Docker accepts it (``cap_sys_admin``, ``SYS_ADMIN``), normalised."""
    upper = name.strip().upper()
    return upper[4:] if upper.startswith("CAP_") else upper


def _is_administrator(user: str) -> bool:
    """Whether a Windows ``user`` is empty (the image decides) or an administrator account."""
    account = user.rpartition("\\")[2].strip().casefold()
    return not account or account in _WINDOWS_ADMINISTRATORS


def violations(spec: WindowsContainerSpec, level: Level) -> list[Violation]:
    """Every control of ``level`` that ``spec`` breaks, in the table's order."""
    if level == "privileged":
        return []
    found: list[Violation] = []
    if spec.privileged:
        found.append(Violation("privileged", ("spec.privileged=true",)))
    if spec.mounts:
        found.append(
            Violation(
                "hostPath volumes", tuple(f"spec.mounts[{i}]" for i in range(len(spec.mounts)))
            )
        )
    devices = [f"spec.devices[{i}]" for i in range(len(spec.devices))]
    devices += [f"spec.deviceCgroupRules[{i}]" for i in range(len(spec.device_cgroup_rules))]
    if devices:
        found.append(Violation("host devices", tuple(devices)))
    added = [
        f"spec.capAdd[{i}]"
        for i, cap in enumerate(spec.cap_add)
        if _capability(cap) not in BASELINE_CAPABILITIES
    ]
    added += [
        f"spec.capabilities[{i}]"
        for i, cap in enumerate(spec.capabilities or ())
        if _capability(cap) not in BASELINE_CAPABILITIES
    ]
    if added:
        found.append(Violation("capabilities", tuple(added)))
    if level == "restricted":
        if spec.image.os == "linux":
            found.append(
                Violation(
                    "allowPrivilegeEscalation != false, seccompProfile",
                    ("spec.image.os=linux: a Linux container cannot be restricted here",),
                )
            )
        elif _is_administrator(spec.user):
            found.append(
                Violation("runAsNonRoot != true", ("spec.user must name a non-administrator",))
            )
    return found


class PodSecurityError(PermanentError):
    """A WindowsContainer breaks the Pod Security level its namespace enforces."""

    reason = "PodSecurityViolation"


def check_pod_security(spec: WindowsContainerSpec, *, level: Level, namespace: str) -> None:
    """Raise :class:`PodSecurityError` naming every broken control, if there is one."""
    broken = violations(spec, level)
    if broken:
        raise PodSecurityError(
            f'violates PodSecurity "{level}:latest" (namespace {namespace}, label '
            f"{ENFORCE_LABEL}): " + ", ".join(map(str, broken))
        )
