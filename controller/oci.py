"""The OCI runtime spec types winspec emits, in the field order of the Go reference types.

Fields follow ``github.com/opencontainers/runtime-spec/specs-go`` as Docker used it in 2019:
fields Go tags ``omitempty`` have defaults (and are omitted at their default); fields Go always
writes are required here, so they are always encoded. The order of fields is the Go order, so
the JSON is stable (S32) and reads like what dockerd would log.
"""

from __future__ import annotations

import msgspec

OCI_VERSION = "1.0.2"


class _Base(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Shared options: keyword construction, Go-like ``omitempty``, strict decoding."""


class Box(_Base, kw_only=True):
    """``process.consoleSize``."""

    height: int
    width: int


class User(_Base, kw_only=True):
    """``process.user``; Go always writes ``uid`` and ``gid``."""

    uid: int
    gid: int
    username: str = ""


class LinuxCapabilities(_Base, kw_only=True):
    """``process.capabilities`` (LCOW)."""

    bounding: list[str] = msgspec.field(default_factory=list)
    effective: list[str] = msgspec.field(default_factory=list)
    inheritable: list[str] = msgspec.field(default_factory=list)
    permitted: list[str] = msgspec.field(default_factory=list)
    ambient: list[str] = msgspec.field(default_factory=list)


class Process(_Base, kw_only=True):
    """``process``."""

    terminal: bool = False
    consoleSize: Box | None = None
    user: User
    args: list[str] = msgspec.field(default_factory=list)
    commandLine: str = ""
    env: list[str] = msgspec.field(default_factory=list)
    cwd: str
    capabilities: LinuxCapabilities | None = None


class Root(_Base, kw_only=True):
    """``root``; ``path`` is always written (the schema requires it)."""

    path: str
    readonly: bool = False


class Mount(_Base, kw_only=True):
    """One ``mounts`` entry."""

    destination: str
    type: str = ""
    source: str = ""
    options: list[str] = msgspec.field(default_factory=list)


class WindowsDevice(_Base, kw_only=True):
    """One ``windows.devices`` entry."""

    id: str
    idType: str


class WindowsMemoryResources(_Base, kw_only=True):
    """``windows.resources.memory``."""

    limit: int | None = None


class WindowsCPUResources(_Base, kw_only=True):
    """``windows.resources.cpu``: pointers in Go, so zeros are written when set (S18)."""

    count: int | None = None
    shares: int | None = None
    maximum: int | None = None


class WindowsStorageResources(_Base, kw_only=True):
    """``windows.resources.storage``."""

    iops: int | None = None
    bps: int | None = None


class WindowsResources(_Base, kw_only=True):
    """``windows.resources``."""

    memory: WindowsMemoryResources | None = None
    cpu: WindowsCPUResources | None = None
    storage: WindowsStorageResources | None = None


class WindowsHyperV(_Base, kw_only=True):
    """``windows.hyperv``: present (``{}``) means Hyper-V isolation."""

    utilityVMPath: str = ""


class WindowsNetwork(_Base, kw_only=True):
    """``windows.network``."""

    endpointList: list[str] = msgspec.field(default_factory=list)
    allowUnqualifiedDNSQuery: bool = False
    DNSSearchList: list[str] = msgspec.field(default_factory=list)
    networkSharedContainerName: str = ""


class Windows(_Base, kw_only=True):
    """``windows``. ``credentialSpec`` is a JSON *string* (S26, hcsshim reads it so)."""

    layerFolders: list[str]
    devices: list[WindowsDevice] = msgspec.field(default_factory=list)
    resources: WindowsResources | None = None
    credentialSpec: str = ""
    servicing: bool = False
    ignoreFlushesDuringBoot: bool = False
    hyperv: WindowsHyperV | None = None
    network: WindowsNetwork | None = None


class LinuxDeviceCgroup(_Base, kw_only=True):
    """One ``linux.resources.devices`` entry; Go always writes ``allow``."""

    allow: bool
    type: str = ""
    major: int | None = None
    minor: int | None = None
    access: str = ""


class LinuxResources(_Base, kw_only=True):
    """``linux.resources``."""

    devices: list[LinuxDeviceCgroup] = msgspec.field(default_factory=list)


class LinuxNamespace(_Base, kw_only=True):
    """One ``linux.namespaces`` entry."""

    type: str
    path: str = ""


class Linux(_Base, kw_only=True):
    """``linux`` (LCOW only)."""

    sysctl: dict[str, str] = msgspec.field(default_factory=dict)
    resources: LinuxResources | None = None
    namespaces: list[LinuxNamespace] = msgspec.field(default_factory=list)
    maskedPaths: list[str] = msgspec.field(default_factory=list)
    readonlyPaths: list[str] = msgspec.field(default_factory=list)


class Spec(_Base, kw_only=True):
    """The OCI runtime spec (``config.json``)."""

    ociVersion: str
    process: Process | None = None
    root: Root | None = None
    hostname: str = ""
    mounts: list[Mount] = msgspec.field(default_factory=list)
    linux: Linux | None = None
    windows: Windows | None = None
