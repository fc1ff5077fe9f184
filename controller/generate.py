"""The spec generator: a request in, the OCI runtime spec Docker's Windows daemon would write.

A pure function of its inputs (no I/O but what the injected credential spec reader does, no
clock, no randomness): the same request always gives byte-identical output (S32). Each step
names the rule it implements; the rules are described in ``controller/RULES.md``.
"""

from __future__ import annotations

import ntpath
import re
from typing import Any, Literal

import msgspec

from controller import oci
from controller.capabilities import tweak_capabilities
from controller.credspec import (
    INVALID_VALUE,
    CredentialSpecReader,
    check_file_path,
    credential_spec_base,
    parse_security_options,
)
from controller.errors import SpecError
from controller.escape import escape_args
from controller.models import (
    GO_ZERO_TIME,
    HostConfig,
    Request,
    check_container_id,
    check_payload_id,
)
from controller.provenance import Provenance
from controller.validation import NO_CPU_LIMITS, CpuSettings, validate_resources
from controller.winpath import clean, depth, has_drive_root, host_join

SECRET_MOUNT_DIR = "C:\\ProgramData\\Docker\\secrets"
INTERNAL_SECRETS_DIR = "C:\\ProgramData\\Docker\\internal\\secrets"
INTERNAL_CONFIGS_DIR = "C:\\ProgramData\\Docker\\internal\\configs"
CONFIG_ROOT = "C:\\"
LCOW_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RS5_BUILD = 17763
# \Z, not $: Go's $ is the end of the text, Python's also matches before a final "\n".
_CGROUP_RULE = re.compile(r"^([acb]) ([0-9]+|\*):([0-9]+|\*) ([rwm]{1,3})\Z")
_INT64_MAX = 2**63 - 1
_INT64_DIGITS = len(str(_INT64_MAX))
_UINT64_MAX = 2**64 - 1
_UINT16_MASK = 0xFFFF


class Link(msgspec.Struct, kw_only=True, frozen=True):
    """A link the runtime creates inside the container: ``target`` points at ``source`` (S5)."""

    kind: Literal["secret", "config"]
    target: str
    source: str


class Generated(msgspec.Struct, kw_only=True):
    """What the generator produced for one container.

    A Struct rather than a dataclass: one is built per spec and a Struct costs a third as much.
    """

    spec: oci.Spec
    links: list[Link]
    warnings: list[str] = msgspec.field(default_factory=list)


def generate(
    request: Request,
    *,
    reader: CredentialSpecReader | None = None,
    record: Provenance | None = None,
) -> Generated:
    """Generate the OCI runtime spec for a request; bad input raises :class:`SpecError`.

    ``record``, when given, is told which rules and request fields decided each spec field
    (``winspec explain``); the spec is the same with or without it.
    """
    c = request.container
    # The id becomes part of host paths (the default payload directory, LCOW's uvmpath).
    check_container_id(c.id)
    os_name = request.image.os
    # S2: the platform decides everything else.
    if os_name not in ("windows", "linux"):
        raise SpecError(f'Unsupported platform "{os_name}": image.Os must be "windows" or "linux"')
    lcow = os_name == "linux"
    if lcow and not request.node.lcow_supported:
        raise SpecError(
            "Linux containers on Windows are not supported: this is a linux image and "
            "node.lcowSupported is false"
        )
    if request.node.cpu_count < 1:
        raise SpecError("invalid node facts: cpuCount must be at least 1")

    hyperv = _is_hyperv(request, lcow=lcow)  # S3
    warnings: list[str] = []
    cpu = validate_resources(
        c.host_config, hyperv=hyperv, node_cpus=request.node.cpu_count, warnings=warnings
    )  # S20

    spec = _default_spec(lcow)  # S1
    links = _links(request)
    if record is not None:
        _note_base(record, lcow=lcow, hyperv=hyperv)
    spec.mounts.extend(_mounts(request, lcow=lcow, record=record))  # S5, S6
    spec.process = _process(request, lcow=lcow)  # S7–S11
    if record is not None:
        _note_process(record, lcow=lcow)
    spec.windows = oci.Windows(
        layerFolders=_layer_folders(request),  # S12
        network=_network(request),  # S15
        resources=_resources(request, cpu, hyperv=hyperv),  # S16–S19
        hyperv=oci.WindowsHyperV() if hyperv else None,  # S3: present means Hyper-V
    )

    if lcow:
        _linux_fields(request, spec)  # S4, S29–S31
        if record is not None:
            _note_linux(record)
    else:
        _windows_fields(request, spec, hyperv=hyperv, reader=reader)  # S4, S13, S14, S21–S28
        if record is not None:
            _note_windows(record, request, hyperv=hyperv)
    return Generated(spec=spec, links=links, warnings=warnings)


def _is_hyperv(request: Request, *, lcow: bool) -> bool:
    """S3: the isolation mode, from the container or the node default."""
    isolation = request.container.host_config.isolation.lower()
    if isolation in ("", "default"):
        isolation = request.node.default_isolation.lower()
        if isolation in ("", "default"):
            isolation = "process"
    if isolation not in ("process", "hyperv"):
        raise SpecError(
            f'invalid isolation "{request.container.host_config.isolation or isolation}": '
            "Windows supports 'default', 'process' and 'hyperv'"
        )
    if lcow:
        if request.container.host_config.isolation.lower() == "process":
            raise SpecError("process isolation is invalid for Linux containers on Windows")
        return True
    return isolation == "hyperv"


# moby's default Linux spec (S1), as immutable data: every spec gets fresh structs and lists
# built from it, so no two specs share anything mutable.
# (destination, type, source, options) of each default mount, in moby's order.
_LCOW_DEFAULT_MOUNTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
    ("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
    (
        "/dev/pts",
        "devpts",
        "devpts",
        ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"),
    ),
    ("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
    ("/sys/fs/cgroup", "cgroup", "cgroup", ("ro", "nosuid", "noexec", "nodev")),
    ("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
    ("/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777")),
)
_LCOW_MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
)
_LCOW_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
_LCOW_NAMESPACES: tuple[str, ...] = ("mount", "network", "uts", "pid", "ipc")


def _default_spec(lcow: bool) -> oci.Spec:
    """S1: the parts of Docker's default spec for the image's OS that no later rule builds.

    ``process`` (S7–S11) and ``windows`` (S12–S19) are built whole by their rules, from the
    defaults up. Two members of moby's default Linux spec are left out because LCOW always
    replaces them: the capabilities (with the S30 result) and ``linux.resources`` with its
    default device cgroup list (with the S31 one, which has no default entries).
    """
    if not lcow:
        return oci.Spec(ociVersion=oci.OCI_VERSION, root=oci.Root(path=""))
    mounts = [
        oci.Mount(destination=destination, type=mount_type, source=source, options=list(options))
        for destination, mount_type, source, options in _LCOW_DEFAULT_MOUNTS
    ]
    linux = oci.Linux(
        maskedPaths=list(_LCOW_MASKED_PATHS),
        readonlyPaths=list(_LCOW_READONLY_PATHS),
        namespaces=[oci.LinuxNamespace(type=t) for t in _LCOW_NAMESPACES],
    )
    return oci.Spec(ociVersion=oci.OCI_VERSION, root=oci.Root(path=""), mounts=mounts, linux=linux)


def _payload_dir(request: Request, kind: str) -> str:
    """Host directory holding the secret or config payloads the internal mount points at."""
    c = request.container
    if request.bundle_dir:
        return host_join(request.bundle_dir, kind)
    return host_join(request.node.daemon_root, "containers", c.id, kind)


def _mounts(request: Request, *, lcow: bool, record: Provenance | None) -> list[oci.Mount]:
    """S5, S6: volumes and binds by depth, then the secrets and configs mounts."""
    c = request.container
    if not (c.mounts or request.secrets or request.configs):
        return []  # the common case: nothing to mount
    # (source, destination, writable, where in the request: the index in Mounts, or -1 for the
    # secrets mount and -2 for the configs one)
    entries: list[tuple[str, str, bool, int]] = [
        (m.source, m.destination, m.rw, i) for i, m in enumerate(c.mounts or [])
    ]
    if len(entries) > 1:  # (sort would compute the key even for a single entry)
        entries.sort(key=lambda e: (depth(e[1]), e[1]))
    if request.secrets:
        entries.append((_payload_dir(request, "secrets"), INTERNAL_SECRETS_DIR, False, -1))
    if request.configs:
        entries.append((_payload_dir(request, "configs"), INTERNAL_CONFIGS_DIR, False, -2))
    if record is not None:
        _note_mounts(record, request, [e[3] for e in entries], lcow=lcow)
    # LCOW binds go through the utility VM: the same type and extra options for each.
    mount_type = "bind" if lcow else ""
    lcow_options = ("rbind", f"uvmpath=/tmp/gcs/{c.id}/binds") if lcow else ()
    return [
        oci.Mount(
            destination=destination,
            type=mount_type,
            source=source,
            options=[*lcow_options] if writable else ["ro", *lcow_options],
        )
        for source, destination, writable, _ in entries
    ]


def _links(request: Request) -> list[Link]:
    """S5: where each secret and config appears inside the container."""
    links: list[Link] = []
    for s in request.secrets:
        check_payload_id(s.secret_id, "secret")
        if not s.target:
            continue
        # Go's filepath.IsAbs (a drive with a root, or UNC) keeps the target; anything else
        # (also "\\x" and "C:x") goes under the secrets directory, joined as Go's Join does
        # (concatenate, then clean: ntpath.join would let "\\x" replace the directory).
        target = clean(s.target if _go_is_abs(s.target) else SECRET_MOUNT_DIR + "\\" + s.target)
        links.append(
            Link(kind="secret", target=target, source=INTERNAL_SECRETS_DIR + "\\" + s.secret_id)
        )
    for cf in request.configs:
        check_payload_id(cf.config_id, "config")
        if not cf.target:
            continue
        # moby resolves a config target inside the container: relative or rooted means on C:.
        # (ntpath.join returns a target with a drive and a root unchanged: skip it then.)
        target = cf.target
        if not has_drive_root(target):
            target = ntpath.join(CONFIG_ROOT, target)
        target = clean(target)
        links.append(
            Link(kind="config", target=target, source=INTERNAL_CONFIGS_DIR + "\\" + cf.config_id)
        )
    return links


def _go_is_abs(path: str) -> bool:
    """Go's ``filepath.IsAbs`` on Windows: UNC, or a drive followed by a separator."""
    if path[:2] in ("\\\\", "//"):
        return ntpath.splitdrive(path)[0] != ""
    return has_drive_root(path)


def _process(request: Request, *, lcow: bool) -> oci.Process:
    """S7–S11: command, working directory, environment, terminal and user."""
    c = request.container
    cfg = c.config
    args = c.args or []
    if lcow or not cfg.args_escaped:  # S8
        argv, command_line = [c.path, *args], ""
    else:
        argv, command_line = [], c.path + (" " + escape_args(args) if args else "")
    start: list[str] = []
    if lcow:  # S10
        start = [f"PATH={LCOW_PATH}", f"HOSTNAME={cfg.hostname}"]
        if cfg.tty:
            start.append("TERM=xterm")
    return oci.Process(
        terminal=cfg.tty,  # S11
        consoleSize=_console_size(c.host_config) if cfg.tty else None,
        user=oci.User(uid=0, gid=0, username=cfg.user),  # S1's root user, named by the image
        args=argv,
        commandLine=command_line,
        env=_apply_env(start, cfg.env or []),
        cwd=cfg.working_dir or ("/" if lcow else "C:\\"),  # S7
    )


def _console_size(hc: HostConfig) -> oci.Box:
    """S11: the console size of a container with a terminal (Go's uint, so no negatives)."""
    height, width = hc.console_size or (0, 0)
    if height < 0 or width < 0:
        raise SpecError("invalid ConsoleSize: height and width cannot be negative")
    if height > _UINT64_MAX or width > _UINT64_MAX:  # Go's uint: larger fails to decode
        raise SpecError("invalid ConsoleSize: height and width must be below 2^64")
    return oci.Box(height=height, width=width)


def _apply_env(start: list[str], overrides: list[str]) -> list[str]:
    """S10: Docker's ReplaceOrAppendEnvValues (only the starting keys are matched)."""
    if not start:
        # Windows starts empty: nothing to replace or unset, so every "KEY=value" is appended
        # and every bare "KEY" (an unset) is dropped.
        return [value for value in overrides if "=" in value]
    env: list[str | None] = list(start)
    index = {e.split("=", 1)[0]: i for i, e in enumerate(start)}
    for value in overrides:
        if "=" not in value:
            if value in index:
                env[index[value]] = None
            continue
        key = value.split("=", 1)[0]
        if key in index:
            env[index[key]] = value
        else:
            env.append(value)
    return [e for e in env if e is not None]


def _layer_folders(request: Request) -> list[str]:
    """S12: image layers topmost first, then the scratch layer; none is an error."""
    if not request.layer_folders:
        raise SpecError(
            f"container {request.container.id}: no layer folders: layerFolders must list the "
            "image's layer folders topmost first, then the container's read-write layer"
        )
    return list(request.layer_folders)


def _network(request: Request) -> oci.WindowsNetwork:
    """S15: endpoints, unqualified DNS queries, DNS search list, shared container."""
    c = request.container
    endpoints: list[str] = []
    gateway = ""
    allow_unqualified = False
    networks = (c.network_settings.networks if c.network_settings else None) or {}
    for name in sorted(networks):
        data = request.endpoints.get(name)
        if data is None:
            continue  # endpoint not found: skipped, as Docker does
        gw_info = data.get("GW_INFO")
        if gw_info is not None:
            if not isinstance(gw_info, dict):
                raise SpecError(f"endpoint data of network {name}: GW_INFO must be an object")
            gw = gw_info.get("hnsid")
            if gw is not None:
                gateway = _string(gw, name, "GW_INFO.hnsid")
        hnsid = data.get("hnsid")
        if hnsid is not None:
            endpoints.append(_string(hnsid, name, "hnsid"))
        if data.get("AllowUnqualifiedDNSQuery") is not None:
            allow_unqualified = True
    shared_name = ""
    mode = c.host_config.network_mode
    if mode.startswith("container:"):
        shared_name = request.network_shared_container_id or mode.split(":", 1)[1]
        endpoints.extend(request.shared_endpoints)
    if gateway:
        endpoints.append(gateway)
    dns = c.host_config.dns_search or request.node.dns_search or []
    return oci.WindowsNetwork(
        endpointList=endpoints,
        allowUnqualifiedDNSQuery=allow_unqualified,
        DNSSearchList=list(dns),
        networkSharedContainerName=shared_name,
    )


def _string(value: Any, network: str, key: str) -> str:
    """An endpoint data value that must be a string (the message is built only on error)."""
    if not isinstance(value, str):
        raise SpecError(f"endpoint data of network {network}: {key} must be a string")
    return value


def _resources(request: Request, cpu: CpuSettings, *, hyperv: bool) -> oci.WindowsResources | None:
    """S16–S19: CPU, memory and storage limits (uint16 arithmetic as Go does it)."""
    hc = request.container.host_config
    if cpu == NO_CPU_LIMITS and not (hc.memory or hc.io_maximum_bandwidth or hc.io_maximum_iops):
        return None  # the common case, no limit at all: nothing to check or write
    shares = cpu.shares & _UINT16_MASK
    maximum = (cpu.percent * 100) & _UINT16_MASK
    count = cpu.count
    nano = cpu.nano_cpus
    if nano > 0:  # S17
        if hyperv:
            count = nano // 1_000_000_000
            if nano % 1_000_000_000:
                count += 1
                maximum = max((nano // count // 100_000) & _UINT16_MASK, 1)
        else:
            maximum = max((nano // request.node.cpu_count // 100_000) & _UINT16_MASK, 1)
    resources = oci.WindowsResources()
    if maximum or shares or count:  # S18
        resources.cpu = oci.WindowsCPUResources(count=count, shares=shares, maximum=maximum)
    if hc.memory < 0 or hc.memory > _INT64_MAX:
        raise SpecError("invalid Memory: must be between 0 and 2^63-1")
    if hc.memory:  # S19
        resources.memory = oci.WindowsMemoryResources(limit=hc.memory)
    if hc.io_maximum_bandwidth < 0 or hc.io_maximum_iops < 0:
        raise SpecError("invalid IOMaximumBandwidth/IOMaximumIOps: cannot be negative")
    if hc.io_maximum_bandwidth > _UINT64_MAX or hc.io_maximum_iops > _UINT64_MAX:  # Go's uint64
        raise SpecError("invalid IOMaximumBandwidth/IOMaximumIOps: must be below 2^64")
    if hc.io_maximum_bandwidth or hc.io_maximum_iops:
        resources.storage = oci.WindowsStorageResources(
            iops=hc.io_maximum_iops, bps=hc.io_maximum_bandwidth
        )
    if resources.cpu is None and resources.memory is None and resources.storage is None:
        return None
    return resources


def _windows_fields(
    request: Request, spec: oci.Spec, *, hyperv: bool, reader: CredentialSpecReader | None
) -> None:
    """Windows images: hostname, root, first boot, credential spec, devices."""
    c = request.container
    assert spec.windows is not None and spec.root is not None
    cfg = c.config
    spec.hostname = cfg.hostname + ("." + cfg.domainname if cfg.domainname else "")  # S4
    # S13: Windows has no read-only root; an unmounted volume leaves the path to the runtime.
    if not hyperv and request.volume_path:
        path = request.volume_path
        spec.root.path = path if path.endswith("\\") else path + "\\"
    started = c.state.started_at
    spec.windows.ignoreFlushesDuringBoot = started in ("", GO_ZERO_TIME) or started.startswith(
        "0001-01-01T00:00:00"
    )  # S14
    if c.host_config.security_opt:
        spec.windows.credentialSpec = _credential_spec(request, reader)
    if c.host_config.devices:
        spec.windows.devices = _devices(request, hyperv=hyperv)


def _credential_spec(request: Request, reader: CredentialSpecReader | None) -> str:
    """S21–S26: the credential spec's JSON text; every option is checked, the last wins."""
    c = request.container
    resolved = request.credential_specs
    spec = ""
    for opt in parse_security_options(c.host_config.security_opt or []):
        if opt.scheme == "raw":
            spec = opt.value
        elif opt.scheme == "file":
            parts = check_file_path(opt.value, daemon_root=request.node.daemon_root)
            if opt.value in resolved.file:
                spec = resolved.file[opt.value]
            elif reader is not None:
                base = credential_spec_base(request.node.daemon_root)
                spec = reader.read_file(parts, base=base, container_id=c.id)
            else:
                raise SpecError(f"credential spec file://{opt.value} was not resolved")
        elif opt.scheme == "registry":
            if opt.value in resolved.registry:
                spec = resolved.registry[opt.value]
            elif reader is not None:
                spec = reader.read_registry(opt.value, container_id=c.id)
            else:
                raise SpecError(f"credential spec registry://{opt.value} was not resolved")
        else:  # config: only swarm-managed containers have a config store (S25)
            if not request.is_swarm_managed:
                raise SpecError(INVALID_VALUE)
            if opt.value not in resolved.config:
                raise SpecError(
                    f"error getting value from config store: config {opt.value} not found"
                )
            spec = resolved.config[opt.value]
    return spec


def _devices(request: Request, *, hyperv: bool) -> list[oci.WindowsDevice]:
    """S27, S28: device assignment (process isolation on RS5+ only)."""
    if hyperv:
        raise SpecError("device assignment is not supported for HyperV containers")
    if request.node.windows_build < RS5_BUILD:
        raise SpecError("device assignment requires Windows builds RS5 (17763+) or later")
    devices: list[oci.WindowsDevice] = []
    for mapping in request.container.host_config.devices or []:
        path = mapping.path_on_host
        if path.startswith("class/"):
            devices.append(oci.WindowsDevice(id=path[len("class/") :], idType="class"))
            continue
        id_type, sep, dev_id = path.partition("://")
        if sep and id_type:
            devices.append(oci.WindowsDevice(id=dev_id, idType=id_type))
            continue
        if "/" not in path:
            raise SpecError("invalid device assignment path")
        raise SpecError(
            f"invalid device assignment type: '{path.split('/', 1)[0]}' should be 'class'"
        )
    return devices


def _linux_fields(request: Request, spec: oci.Spec) -> None:
    """LCOW: hostname and domain sysctl (S4), root (S29), capabilities (S30), devices (S31)."""
    c = request.container
    hc = c.host_config
    assert spec.linux is not None and spec.process is not None
    spec.hostname = c.config.hostname
    if c.config.domainname:
        spec.linux.sysctl = {"kernel.domainname": c.config.domainname}
    spec.root = oci.Root(path="rootfs", readonly=hc.readonly_rootfs)
    caps = tweak_capabilities(
        adds=hc.cap_add, drops=hc.cap_drop, explicit=hc.capabilities, privileged=hc.privileged
    )
    spec.process.capabilities = oci.LinuxCapabilities(
        bounding=caps, effective=list(caps), inheritable=list(caps), permitted=list(caps)
    )
    spec.linux.resources = oci.LinuxResources(devices=_device_cgroup_rules(hc.device_cgroup_rules))


def _device_cgroup_rules(rules: list[str] | None) -> list[oci.LinuxDeviceCgroup]:
    """S31: ``DeviceCgroupRules`` as device cgroup entries (no rules: no list at all)."""
    out: list[oci.LinuxDeviceCgroup] = []
    for rule in rules or []:
        m = _CGROUP_RULE.match(rule)
        if m is None:
            raise SpecError(
                f"linux runtime spec devices: invalid device cgroup rule format: '{rule}'"
            )
        device_type, major, minor, access = m.groups()
        out.append(
            oci.LinuxDeviceCgroup(
                allow=True,
                type=device_type,
                major=_cgroup_number(major, "major", rule),
                minor=_cgroup_number(minor, "minor", rule),
                access=access,
            )
        )
    return out


def _cgroup_number(raw: str, what: str, rule: str) -> int:
    """A device major or minor number of a cgroup rule: ``*`` is -1; Go parses it as int64.

    Go's ParseInt takes any number of leading zeros; past them, more than 19 digits is out of
    int64's range whatever they are (and Python's int() refuses over 4,300 digits).
    """
    if raw == "*":
        return -1
    digits = raw.lstrip("0") or "0"
    if len(digits) > _INT64_DIGITS or int(digits) > _INT64_MAX:
        raise SpecError(
            f"linux runtime spec devices: invalid {what} value in device cgroup rule "
            f"format: '{rule}'"
        )
    return int(digits)


# Provenance (``winspec explain``): which rules and request fields decide each spec field. Each
# function below is called right after the step it describes, only when a recorder is given.
_ISOLATION = ("container.HostConfig.Isolation", "node.defaultIsolation", "image.Os")
_COMMAND = ("container.Path", "container.Args", "container.Config.ArgsEscaped", "image.Os")
_CPU = "container.HostConfig."


def _note_base(record: Provenance, *, lcow: bool, hyperv: bool) -> None:
    """S1–S3, S12, S15–S20: the default spec, isolation, layers, network and resources."""
    record.note("ociVersion", "S1")
    if lcow:
        record.note("linux", "S1 S2", "image.Os", "node.lcowSupported")
        for i in range(len(_LCOW_DEFAULT_MOUNTS)):
            record.note(f"mounts[{i}]", "S1 S2", "image.Os", "node.lcowSupported")
    record.note("windows.hyperv", "S3", *_ISOLATION)
    record.note("windows.layerFolders", "S12", "layerFolders")
    network = "windows.network."
    networks = "container.NetworkSettings.Networks"
    mode = "container.HostConfig.NetworkMode"
    record.note(
        "windows.network", "S15", networks, "endpoints", mode, "container.HostConfig.DnsSearch"
    )
    record.note(network + "endpointList", "S15", networks, "endpoints", mode, "sharedEndpoints")
    record.note(network + "allowUnqualifiedDNSQuery", "S15", networks, "endpoints")
    record.note(
        network + "DNSSearchList", "S15", "container.HostConfig.DnsSearch", "node.dnsSearch"
    )
    record.note(network + "networkSharedContainerName", "S15", mode, "networkSharedContainerId")
    cpu = "windows.resources.cpu"
    isolation = _ISOLATION if hyperv else ()
    record.note(cpu, "S16 S18 S20", *isolation)
    record.note(cpu + ".count", "S16 S17 S18 S20", _CPU + "CpuCount", _CPU + "NanoCpus", *isolation)
    record.note(cpu + ".shares", "S16 S18 S20", _CPU + "CpuShares")
    record.note(
        cpu + ".maximum",
        "S16 S17 S18 S20",
        _CPU + "CpuPercent",
        _CPU + "NanoCpus",
        "node.cpuCount",
        *isolation,
    )
    record.note("windows.resources.memory", "S19", _CPU + "Memory")
    record.note("windows.resources.storage.iops", "S19", _CPU + "IOMaximumIOps")
    record.note("windows.resources.storage.bps", "S19", _CPU + "IOMaximumBandwidth")


def _note_mounts(record: Provenance, request: Request, origins: list[int], *, lcow: bool) -> None:
    """S5, S6: each mount, from the container mount (or the secrets or configs) it comes from."""
    record.note("mounts", "S5 S6", "container.Mounts", "secrets", "configs")
    first = len(_LCOW_DEFAULT_MOUNTS) if lcow else 0
    payload = ("bundleDir", "node.daemonRoot", "container.Id")
    for offset, origin in enumerate(origins):
        path = f"mounts[{first + offset}]"
        if origin >= 0:
            mount = f"container.Mounts[{origin}]"
            record.note(path, "S5 S6", mount + ".Destination")
            record.note(path + ".source", "S6", mount + ".Source")
            record.note(path + ".options", "S6", mount + ".RW", "image.Os")
        else:
            record.note(path, "S5 S6", "secrets" if origin == -1 else "configs", *payload)
            record.note(path + ".options", "S6", "image.Os")
        record.note(path + ".type", "S6", "image.Os")


def _note_process(record: Provenance, *, lcow: bool) -> None:
    """S7–S11: the process."""
    record.note("process.terminal", "S11", "container.Config.Tty")
    record.note(
        "process.consoleSize", "S11", "container.Config.Tty", "container.HostConfig.ConsoleSize"
    )
    record.note("process.user", "S1 S2", "image.Os")
    record.note("process.user.username", "S11", "container.Config.User")
    record.note("process.args", "S8", *_COMMAND)
    record.note("process.commandLine", "S8 S9", *_COMMAND)
    env: tuple[str, ...]
    if lcow:
        env = (
            "container.Config.Env",
            "image.Os",
            "container.Config.Hostname",
            "container.Config.Tty",
        )
    else:
        env = ("container.Config.Env",)
    record.note("process.env", "S10", *env)
    record.note("process.cwd", "S7", "container.Config.WorkingDir", "image.Os")


def _note_windows(record: Provenance, request: Request, *, hyperv: bool) -> None:
    """S4, S13, S14, S21–S28: host name, root, first boot, credential spec and devices."""
    record.note("hostname", "S4", "container.Config.Hostname", "container.Config.Domainname")
    record.note("root.path", "S13", "volumePath", *_ISOLATION)
    record.note("windows.ignoreFlushesDuringBoot", "S14", "container.State.StartedAt")
    credential = "windows.credentialSpec"
    record.note(credential, "S21 S22 S26", "container.HostConfig.SecurityOpt")
    for opt in parse_security_options(request.container.host_config.security_opt or []):
        scheme_rule = {"file": "S23", "registry": "S24"}.get(opt.scheme, "S25")
        resolved = {"file": "file", "registry": "registry"}.get(opt.scheme, "config")
        record.note(credential, scheme_rule, f"credentialSpecs.{resolved}")
    devices = "container.HostConfig.Devices"
    record.note("windows.devices", "S27 S28", devices, "node.windowsBuild", *_ISOLATION)
    for i in range(len(request.container.host_config.devices or [])):
        record.note(f"windows.devices[{i}]", "S27 S28", f"{devices}[{i}].PathOnHost")


def _note_linux(record: Provenance) -> None:
    """S4, S29–S31: LCOW's host name and domain, root, capabilities and device cgroup rules."""
    hc = "container.HostConfig."
    record.note("hostname", "S4", "container.Config.Hostname")
    record.note("linux.sysctl", "S4", "container.Config.Domainname")
    record.note("root", "S29", hc + "ReadonlyRootfs", "image.Os")
    record.note(
        "process.capabilities",
        "S30",
        hc + "CapAdd",
        hc + "CapDrop",
        hc + "Capabilities",
        hc + "Privileged",
    )
    record.note("linux.resources", "S31", hc + "DeviceCgroupRules")


_encoder = msgspec.json.Encoder()


def encode_spec(spec: oci.Spec) -> bytes:
    """The ``config.json`` bytes of a spec (stable field order, S32)."""
    return _encoder.encode(spec)
