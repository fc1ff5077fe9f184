"""Typed models of what the spec generator reads.

The container and image members are Docker's own inspect objects, decoded directly from the
JSON the Engine API writes (PascalCase names as Docker spells them, unknown fields ignored,
``null`` accepted wherever Docker writes it). The remaining members of :class:`Request` carry
what the engine does not show in an inspect: node facts, resolved layer folders, endpoint
driver data and the resolved dependencies.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from controller.errors import RequestDecodeError

GO_ZERO_TIME = "0001-01-01T00:00:00Z"
# Swarm object ids (25 base-36 characters) and anything else safe as one file name.
_PAYLOAD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}\Z")
SWARM_TASK_LABEL = "com.docker.swarm.task.id"

# Docker's Go types: a number outside them is a JSON decode error for Docker, and so for us.
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
UInt16 = Annotated[int, msgspec.Meta(ge=0, le=2**16 - 1)]


class ContainerConfig(msgspec.Struct, rename="pascal", kw_only=True):
    """``Config`` of a container inspect (and the parts of an image's we read)."""

    hostname: str = ""
    domainname: str = ""
    user: str = ""
    env: list[str] | None = None
    tty: bool = False
    working_dir: str = ""
    args_escaped: bool = False
    labels: dict[str, str] | None = None
    image: str = ""


class DeviceMapping(msgspec.Struct, rename="pascal", kw_only=True):
    """One ``HostConfig.Devices`` entry."""

    path_on_host: str = ""
    path_in_container: str = ""
    cgroup_permissions: str = ""


class HostConfig(msgspec.Struct, rename="pascal", kw_only=True):
    """``HostConfig`` of a container inspect: the fields the generator and S20 read."""

    isolation: str = ""
    network_mode: str = ""
    dns_search: list[str] | None = None
    security_opt: list[str] | None = None
    devices: list[DeviceMapping] | None = None
    console_size: tuple[int, int] | None = None
    readonly_rootfs: bool = False
    privileged: bool = False
    cap_add: list[str] | None = None
    cap_drop: list[str] | None = None
    capabilities: list[str] | None = None
    device_cgroup_rules: list[str] | None = None
    # Windows resources.
    cpu_shares: Int64 = 0
    cpu_percent: Int64 = 0
    cpu_count: Int64 = 0
    nano_cpus: Int64 = 0
    memory: Int64 = 0
    io_maximum_bandwidth: int = msgspec.field(default=0, name="IOMaximumBandwidth")
    io_maximum_iops: int = msgspec.field(default=0, name="IOMaximumIOps")
    # Linux-only options, refused for Windows containers (S20).
    blkio_weight: UInt16 = 0
    blkio_weight_device: list[Any] | None = None
    blkio_device_read_bps: list[Any] | None = None
    blkio_device_write_bps: list[Any] | None = None
    blkio_device_read_iops: list[Any] | None = msgspec.field(
        default=None, name="BlkioDeviceReadIOps"
    )
    blkio_device_write_iops: list[Any] | None = msgspec.field(
        default=None, name="BlkioDeviceWriteIOps"
    )
    cgroup_parent: str = ""
    cpu_period: Int64 = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    kernel_memory: Int64 = 0
    memory_reservation: Int64 = 0
    memory_swap: Int64 = 0
    memory_swappiness: Int64 | None = None
    oom_kill_disable: bool | None = None
    pids_limit: Int64 | None = None
    ulimits: list[Any] | None = None


class ContainerState(msgspec.Struct, rename="pascal", kw_only=True):
    """``State`` of a container inspect."""

    started_at: str = GO_ZERO_TIME


class EndpointSettings(msgspec.Struct, kw_only=True):
    """One network of ``NetworkSettings.Networks``."""

    endpoint_id: str = msgspec.field(default="", name="EndpointID")
    network_id: str = msgspec.field(default="", name="NetworkID")


class NetworkSettings(msgspec.Struct, rename="pascal", kw_only=True):
    """``NetworkSettings`` of a container inspect."""

    networks: dict[str, EndpointSettings | None] | None = None


class MountPoint(msgspec.Struct, rename="pascal", kw_only=True):
    """One ``Mounts`` entry of a container inspect (a volume or bind)."""

    type: str = ""
    name: str = ""
    source: str = ""
    destination: str = ""
    rw: bool = msgspec.field(default=True, name="RW")


class GraphDriver(msgspec.Struct, rename="pascal", kw_only=True):
    """``GraphDriver`` of a container or image inspect."""

    name: str = ""
    data: dict[str, str] | None = None


class Container(msgspec.Struct, rename="pascal", kw_only=True):
    """A container as ``GET /containers/{id}/json`` shows it."""

    id: str
    name: str = ""
    path: str = ""
    args: list[str] | None = None
    image: str = ""
    config: ContainerConfig = msgspec.field(default_factory=ContainerConfig)
    host_config: HostConfig = msgspec.field(default_factory=HostConfig)
    state: ContainerState = msgspec.field(default_factory=ContainerState)
    network_settings: NetworkSettings | None = None
    mounts: list[MountPoint] | None = None
    graph_driver: GraphDriver | None = None

    @property
    def swarm_task_id(self) -> str | None:
        """The swarm task this container runs, when swarm manages it."""
        labels = self.config.labels or {}
        return labels.get(SWARM_TASK_LABEL) or None


class ImageConfig(msgspec.Struct, rename="pascal", kw_only=True):
    """``Config`` of an image inspect (only what the generator reads)."""

    args_escaped: bool = False


class RootFS(msgspec.Struct, rename="pascal", kw_only=True):
    """``RootFS`` of an image inspect."""

    type: str = ""
    layers: list[str] | None = None


class Image(msgspec.Struct, rename="pascal", kw_only=True):
    """An image as ``GET /images/{id}/json`` shows it."""

    id: str = ""
    os: str = ""
    config: ImageConfig | None = None
    root_fs: RootFS | None = msgspec.field(default=None, name="RootFS")
    graph_driver: GraphDriver | None = None


class NodeFacts(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """Facts about the Windows node that will run the container."""

    windows_build: int = 17763
    cpu_count: Int64 = 1
    default_isolation: str = "process"
    lcow_supported: bool = False
    dns_search: list[str] | None = None
    daemon_root: str = "C:\\ProgramData\\docker"


class SecretRef(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """A swarm secret granted to the container, with its payload when resolved."""

    secret_id: str
    secret_name: str = ""
    target: str
    data: bytes | None = None


class ConfigRef(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """A swarm config granted to the container, with its payload when resolved."""

    config_id: str
    config_name: str = ""
    target: str
    data: bytes | None = None


class ResolvedCredentialSpecs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Credential specs already resolved by the caller, by scheme and value."""

    file: dict[str, str] = msgspec.field(default_factory=dict)
    registry: dict[str, str] = msgspec.field(default_factory=dict)
    config: dict[str, str] = msgspec.field(default_factory=dict)


class Request(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """Everything the spec generator needs for one container (the request document)."""

    container: Container
    image: Image
    node: NodeFacts = msgspec.field(default_factory=NodeFacts)
    # S12: required and non-empty in the document, as the JSON Schema says (a request built in
    # code is checked by the generator).
    layer_folders: Annotated[list[str], msgspec.Meta(min_length=1)]
    volume_path: str | None = None
    endpoints: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    shared_endpoints: list[str] = msgspec.field(default_factory=list)
    network_shared_container_id: str | None = None
    swarm_managed: bool | None = None
    secrets: list[SecretRef] = msgspec.field(default_factory=list)
    configs: list[ConfigRef] = msgspec.field(default_factory=list)
    credential_specs: ResolvedCredentialSpecs = msgspec.field(
        default_factory=ResolvedCredentialSpecs
    )
    bundle_dir: str | None = None

    @property
    def is_swarm_managed(self) -> bool:
        """Whether swarm manages the container (explicitly, or by its task label)."""
        if self.swarm_managed is not None:
            return self.swarm_managed
        return self.container.swarm_task_id is not None


_request_decoder = msgspec.json.Decoder(Request)


def decode_request(data: bytes | str) -> Request:
    """Decode a request document; a malformed one raises :class:`RequestDecodeError`.

    ``docker inspect`` prints a one-element array; pasted as ``container`` or ``image`` it is
    accepted and unwrapped. Every message names the member and the form expected there.
    """
    if not data.strip():
        raise RequestDecodeError(
            "invalid request: the document is empty; expected one JSON object "
            "(`winspec schema` prints its JSON Schema)"
        )
    try:
        return _request_decoder.decode(data)
    except msgspec.ValidationError as exc:
        first_error = exc
    except msgspec.DecodeError as exc:
        raise RequestDecodeError(f"invalid request: {exc}") from exc
    try:
        # A typed decode can fail on the type before it reaches a syntax error (``[``).
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise RequestDecodeError(f"invalid request: {exc}") from exc
    unwrapped = False
    if isinstance(raw, dict):
        for member in ("container", "image"):
            value = raw.get(member)
            if isinstance(value, list):
                if len(value) != 1:
                    raise RequestDecodeError(
                        f"invalid request: expected an inspect object or the one-element array "
                        f"`docker inspect` prints, got an array of {len(value)} elements "
                        f"- at `$.{member}`"
                    ) from first_error
                raw[member] = value[0]
                unwrapped = True
    if not unwrapped:
        raise RequestDecodeError(f"invalid request: {first_error}") from first_error
    try:
        return msgspec.convert(raw, Request)
    except msgspec.ValidationError as exc:
        raise RequestDecodeError(f"invalid request: {exc}") from exc


def decode_container(data: bytes | str) -> Container:
    """Decode a ``GET /containers/{id}/json`` body."""
    try:
        return msgspec.json.decode(data, type=Container)
    except msgspec.DecodeError as exc:
        raise RequestDecodeError(f"invalid container inspect: {exc}") from exc


def decode_image(data: bytes | str) -> Image:
    """Decode a ``GET /images/{id}/json`` body."""
    try:
        return msgspec.json.decode(data, type=Image)
    except msgspec.DecodeError as exc:
        raise RequestDecodeError(f"invalid image inspect: {exc}") from exc


def check_payload_id(payload_id: str, kind: str) -> str:
    """A secret or config id, refused unless it is safe as one file name and path component."""
    if not _PAYLOAD_ID.match(payload_id) or ".." in payload_id:
        raise RequestDecodeError(f"invalid {kind} id {payload_id!r}")
    return payload_id
