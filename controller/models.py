"""Typed models of what the spec generator reads.

The container and image members are Docker's own inspect objects, decoded directly from the
JSON the Engine API writes (PascalCase names as Docker spells them, unknown fields ignored,
``null`` accepted wherever Docker writes it). The remaining members of :class:`Request` carry
what the engine does not show in an inspect: node facts, resolved layer folders, endpoint
driver data and the resolved dependencies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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

# Limits on what a request (or an inspect) may hold: far above anything Docker produces (an
# inspect nests a handful of levels, Windows caps a whole environment block at 32,767
# characters, swarm secrets at 500 KiB and configs at 1,000 KiB), low enough that hostile input
# costs bounded time and memory. Past one, the document is refused with a RequestDecodeError.
#: Bytes of one request document (``winspec generate``).
MAX_REQUEST_BYTES = 64 * 1024 * 1024
#: Levels of nested arrays and objects in one document.
MAX_NESTING_DEPTH = 100
#: Characters of any one string (a name, a path, an environment entry, a credential spec).
MAX_STRING_LENGTH = 1024 * 1024
#: Entries of any one list or map (environment, arguments, mounts, devices, labels, ...).
MAX_ITEMS = 10_000
#: Bytes of one secret or config payload.
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024

Str = Annotated[str, msgspec.Meta(max_length=MAX_STRING_LENGTH)]
StrList = Annotated[list[Str], msgspec.Meta(max_length=MAX_ITEMS)]
StrMap = Annotated[dict[Str, Str], msgspec.Meta(max_length=MAX_ITEMS)]
AnyList = Annotated[list[Any], msgspec.Meta(max_length=MAX_ITEMS)]
Payload = Annotated[bytes, msgspec.Meta(max_length=MAX_PAYLOAD_BYTES)]


class ContainerConfig(msgspec.Struct, rename="pascal", kw_only=True):
    """``Config`` of a container inspect (and the parts of an image's we read)."""

    hostname: Str = ""
    domainname: Str = ""
    user: Str = ""
    env: StrList | None = None
    tty: bool = False
    working_dir: Str = ""
    args_escaped: bool = False
    labels: StrMap | None = None
    image: Str = ""


class DeviceMapping(msgspec.Struct, rename="pascal", kw_only=True):
    """One ``HostConfig.Devices`` entry."""

    path_on_host: Str = ""
    path_in_container: Str = ""
    cgroup_permissions: Str = ""


class HostConfig(msgspec.Struct, rename="pascal", kw_only=True):
    """``HostConfig`` of a container inspect: the fields the generator and S20 read."""

    isolation: Str = ""
    network_mode: Str = ""
    dns_search: StrList | None = None
    security_opt: StrList | None = None
    devices: Annotated[list[DeviceMapping], msgspec.Meta(max_length=MAX_ITEMS)] | None = None
    console_size: tuple[int, int] | None = None
    readonly_rootfs: bool = False
    privileged: bool = False
    cap_add: StrList | None = None
    cap_drop: StrList | None = None
    capabilities: StrList | None = None
    device_cgroup_rules: StrList | None = None
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
    blkio_weight_device: AnyList | None = None
    blkio_device_read_bps: AnyList | None = None
    blkio_device_write_bps: AnyList | None = None
    blkio_device_read_iops: AnyList | None = msgspec.field(default=None, name="BlkioDeviceReadIOps")
    blkio_device_write_iops: AnyList | None = msgspec.field(
        default=None, name="BlkioDeviceWriteIOps"
    )
    cgroup_parent: Str = ""
    cpu_period: Int64 = 0
    cpuset_cpus: Str = ""
    cpuset_mems: Str = ""
    kernel_memory: Int64 = 0
    memory_reservation: Int64 = 0
    memory_swap: Int64 = 0
    memory_swappiness: Int64 | None = None
    oom_kill_disable: bool | None = None
    pids_limit: Int64 | None = None
    ulimits: AnyList | None = None


class ContainerState(msgspec.Struct, rename="pascal", kw_only=True):
    """``State`` of a container inspect."""

    started_at: Str = GO_ZERO_TIME


class EndpointSettings(msgspec.Struct, kw_only=True):
    """One network of ``NetworkSettings.Networks``."""

    endpoint_id: Str = msgspec.field(default="", name="EndpointID")
    network_id: Str = msgspec.field(default="", name="NetworkID")


class NetworkSettings(msgspec.Struct, rename="pascal", kw_only=True):
    """``NetworkSettings`` of a container inspect."""

    networks: (
        Annotated[dict[Str, EndpointSettings | None], msgspec.Meta(max_length=MAX_ITEMS)] | None
    ) = None


class MountPoint(msgspec.Struct, rename="pascal", kw_only=True):
    """One ``Mounts`` entry of a container inspect (a volume or bind)."""

    type: Str = ""
    name: Str = ""
    source: Str = ""
    destination: Str = ""
    rw: bool = msgspec.field(default=True, name="RW")


class GraphDriver(msgspec.Struct, rename="pascal", kw_only=True):
    """``GraphDriver`` of a container or image inspect."""

    name: Str = ""
    data: StrMap | None = None


class Container(msgspec.Struct, rename="pascal", kw_only=True):
    """A container as ``GET /containers/{id}/json`` shows it."""

    id: Str
    name: Str = ""
    path: Str = ""
    args: StrList | None = None
    image: Str = ""
    config: ContainerConfig = msgspec.field(default_factory=ContainerConfig)
    host_config: HostConfig = msgspec.field(default_factory=HostConfig)
    state: ContainerState = msgspec.field(default_factory=ContainerState)
    network_settings: NetworkSettings | None = None
    mounts: Annotated[list[MountPoint], msgspec.Meta(max_length=MAX_ITEMS)] | None = None
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

    type: Str = ""
    layers: StrList | None = None


class Image(msgspec.Struct, rename="pascal", kw_only=True):
    """An image as ``GET /images/{id}/json`` shows it."""

    id: Str = ""
    os: Str = ""
    config: ImageConfig | None = None
    root_fs: RootFS | None = msgspec.field(default=None, name="RootFS")
    graph_driver: GraphDriver | None = None


class NodeFacts(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """Facts about the Windows node that will run the container."""

    windows_build: int = 17763
    cpu_count: Int64 = 1
    default_isolation: Str = "process"
    lcow_supported: bool = False
    dns_search: StrList | None = None
    daemon_root: Str = "C:\\ProgramData\\docker"


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """The node facts given in settings (``None``, empty: not given). Docker mode's win over
    what the engine says; cluster mode's stand in for what a Node object does not say."""

    windows_build: int | None = None
    cpu_count: int | None = None
    default_isolation: str | None = None
    lcow_supported: bool | None = None
    dns_search: tuple[str, ...] = ()
    daemon_root: str | None = None


class SecretRef(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """A swarm secret granted to the container, with its payload when resolved."""

    secret_id: Str
    secret_name: Str = ""
    target: Str
    data: Payload | None = None


class ConfigRef(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """A swarm config granted to the container, with its payload when resolved."""

    config_id: Str
    config_name: Str = ""
    target: Str
    data: Payload | None = None


class ResolvedCredentialSpecs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Credential specs already resolved by the caller, by scheme and value."""

    file: StrMap = msgspec.field(default_factory=dict)
    registry: StrMap = msgspec.field(default_factory=dict)
    config: StrMap = msgspec.field(default_factory=dict)


class Request(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """Everything the spec generator needs for one container (the request document)."""

    container: Container
    image: Image
    node: NodeFacts = msgspec.field(default_factory=NodeFacts)
    # S12: required and non-empty in the document, as the JSON Schema says (a request built in
    # code is checked by the generator).
    layer_folders: Annotated[list[Str], msgspec.Meta(min_length=1, max_length=MAX_ITEMS)]
    volume_path: Str | None = None
    endpoints: Annotated[dict[Str, dict[str, Any]], msgspec.Meta(max_length=MAX_ITEMS)] = (
        msgspec.field(default_factory=dict)
    )
    shared_endpoints: StrList = msgspec.field(default_factory=list)
    network_shared_container_id: Str | None = None
    swarm_managed: bool | None = None
    secrets: Annotated[list[SecretRef], msgspec.Meta(max_length=MAX_ITEMS)] = msgspec.field(
        default_factory=list
    )
    configs: Annotated[list[ConfigRef], msgspec.Meta(max_length=MAX_ITEMS)] = msgspec.field(
        default_factory=list
    )
    credential_specs: ResolvedCredentialSpecs = msgspec.field(
        default_factory=ResolvedCredentialSpecs
    )
    bundle_dir: Str | None = None

    @property
    def is_swarm_managed(self) -> bool:
        """Whether swarm manages the container (explicitly, or by its task label)."""
        if self.swarm_managed is not None:
            return self.swarm_managed
        return self.container.swarm_task_id is not None


_request_decoder = msgspec.json.Decoder(Request)
# A JSON string (valid JSON: every string is closed), and every byte but the four brackets.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_BRACKET_RUN = re.compile(rb"[\[{]+|[\]}]+")
_CONTAINER_ID = re.compile(r"^[0-9a-f]{64}\Z")
_SHOWN_CHARS = 80


def shown(value: str) -> str:
    """``repr(value)``, cut short: an error message never repeats a megabyte of input."""
    if len(value) <= _SHOWN_CHARS:
        return repr(value)
    return repr(value[:_SHOWN_CHARS]) + f"... ({len(value)} characters)"


def nesting_depth(data: bytes) -> int:
    """How deeply arrays and objects nest in ``data``, a *valid* JSON document."""
    if data.count(b"[") + data.count(b"{") <= MAX_NESTING_DEPTH:
        return 0  # the common case: too few brackets (strings included) to nest too deeply
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for run in _BRACKET_RUN.finditer(brackets):
        if run[0][0] in b"[{":
            depth += len(run[0])
            deepest = max(deepest, depth)
        else:
            depth -= len(run[0])
    return deepest


def _too_deep() -> RequestDecodeError:
    return RequestDecodeError(
        f"invalid request: arrays and objects nested deeper than {MAX_NESTING_DEPTH} levels"
    )


def decode_request(data: bytes | str) -> Request:
    """Decode a request document; a malformed one raises :class:`RequestDecodeError`.

    ``docker inspect`` prints a one-element array; pasted as ``container`` or ``image`` it is
    accepted and unwrapped. Every message names the member and the form expected there. The
    limits above apply: a document over :data:`MAX_REQUEST_BYTES`, nested deeper than
    :data:`MAX_NESTING_DEPTH`, or with a string or list over its limit is refused.
    """
    raw_bytes = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if not raw_bytes.strip():
        raise RequestDecodeError(
            "invalid request: the document is empty; expected one JSON object "
            "(`winspec schema` prints its JSON Schema)"
        )
    if len(raw_bytes) > MAX_REQUEST_BYTES:
        raise RequestDecodeError(
            f"invalid request: larger than {MAX_REQUEST_BYTES} bytes ({len(raw_bytes)} bytes)"
        )
    try:
        request = _decode_request(raw_bytes)
    except RecursionError as exc:  # msgspec's own recursion limit, far past ours
        raise _too_deep() from exc
    if nesting_depth(raw_bytes) > MAX_NESTING_DEPTH:
        raise _too_deep()
    return request


def _syntax_error(exc: msgspec.DecodeError, data: bytes) -> RequestDecodeError:
    """A JSON syntax error; a document cut short also says where it ends (msgspec does not)."""
    message = str(exc)
    if "truncated" in message:
        end = data.rstrip()
        line = end.count(b"\n") + 1
        column = len(end) - (end.rfind(b"\n") + 1)
        message += (
            f": the document ends at line {line}, column {column} (byte {len(end)}) "
            "inside an unfinished value"
        )
    return RequestDecodeError(f"invalid request: {message}")


def _decode_request(data: bytes) -> Request:
    try:
        return _request_decoder.decode(data)
    except msgspec.ValidationError as exc:
        first_error = exc
    except msgspec.DecodeError as exc:
        raise _syntax_error(exc, data) from exc
    try:
        # A typed decode can fail on the type before it reaches a syntax error (``[``).
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise _syntax_error(exc, data) from exc
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


def check_container_id(container_id: str) -> str:
    """A Docker container id (64 lower-case hex digits), refused otherwise.

    The id becomes part of host paths (``<daemon root>\\containers\\<id>``, LCOW's
    ``/tmp/gcs/<id>/binds``): nothing else may get that far.
    """
    if not _CONTAINER_ID.match(container_id):
        raise RequestDecodeError(
            f"invalid container id {shown(container_id)}: a Docker container id is 64 "
            "lower-case hex digits"
        )
    return container_id


def check_payload_id(payload_id: str, kind: str) -> str:
    """A secret or config id, refused unless it is safe as one file name and path component."""
    if not _PAYLOAD_ID.match(payload_id) or ".." in payload_id:
        raise RequestDecodeError(f"invalid {kind} id {shown(payload_id)}")
    return payload_id
