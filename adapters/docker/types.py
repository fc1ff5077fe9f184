"""Docker Engine API wire types: the parts of ``/info``, ``/tasks/{id}`` and ``/configs/{id}``
that winspec reads, decoded with msgspec.

Only what the resolver uses is declared; unknown fields are ignored, so newer engines decode
too. A body of the wrong shape (not an object, a field of the wrong type, config data that is
not base64) raises :class:`controller.errors.RequestDecodeError` naming what was malformed: bad
data from the engine is not something a retry fixes.

Container and image inspects are the generator's own inputs and are typed in
:mod:`controller.models`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from controller.errors import RequestDecodeError

T = TypeVar("T")


def decode(raw: bytes, typ: type[T], what: str) -> T:
    """``raw`` decoded as ``typ``; a malformed body raises :class:`RequestDecodeError`."""
    try:
        return msgspec.json.decode(raw, type=typ)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise RequestDecodeError(f"invalid {what} from the engine: {exc}") from exc
    except RecursionError as exc:  # nested deeper than the decoder goes, in an untyped field
        raise RequestDecodeError(f"invalid {what} from the engine: nested too deeply") from exc


# -- GET /info ----------------------------------------------------------------------------------


class SwarmInfo(msgspec.Struct, rename="pascal", kw_only=True):
    """``Swarm`` of ``GET /info``: this node's place in a swarm."""

    #: ``inactive``, ``pending``, ``active``, ``error`` or ``locked``.
    local_node_state: str = ""
    #: Whether this node is a manager (only managers answer ``/tasks`` and ``/configs``).
    control_available: bool = False


class Info(msgspec.Struct, rename="pascal", kw_only=True):
    """The parts of ``GET /info`` that become node facts."""

    os_type: str = msgspec.field(default="", name="OSType")
    ncpu: int = msgspec.field(default=0, name="NCPU")
    kernel_version: str = ""
    isolation: str = ""
    docker_root_dir: str = ""
    swarm: SwarmInfo | None = None

    @property
    def swarm_worker(self) -> bool:
        """Whether the node is an active swarm member that is not a manager."""
        swarm = self.swarm
        return (
            swarm is not None and swarm.local_node_state == "active" and not swarm.control_available
        )


# -- GET /tasks/{id} ----------------------------------------------------------------------------


class FileTarget(msgspec.Struct, rename="pascal", kw_only=True):
    """``File`` of a secret or config reference: where it is mounted in the container."""

    name: str = ""


class SecretReference(msgspec.Struct, rename="pascal", kw_only=True):
    """One entry of ``Spec.ContainerSpec.Secrets``."""

    file: FileTarget | None = None
    secret_id: str = msgspec.field(default="", name="SecretID")
    secret_name: str = ""


class ConfigReference(msgspec.Struct, rename="pascal", kw_only=True):
    """One entry of ``Spec.ContainerSpec.Configs`` (no ``File``: a runtime-only config)."""

    file: FileTarget | None = None
    runtime: dict[str, Any] | None = None
    config_id: str = msgspec.field(default="", name="ConfigID")
    config_name: str = ""


class ContainerSpec(msgspec.Struct, rename="pascal", kw_only=True):
    """``Spec.ContainerSpec`` of a task (only its secrets and configs)."""

    secrets: list[SecretReference] | None = None
    configs: list[ConfigReference] | None = None


class TaskSpec(msgspec.Struct, rename="pascal", kw_only=True):
    """``Spec`` of a task."""

    container_spec: ContainerSpec | None = None


class ContainerStatus(msgspec.Struct, rename="pascal", kw_only=True):
    """``Status.ContainerStatus`` of a task: set once the swarm has created its container."""

    container_id: str = msgspec.field(default="", name="ContainerID")


class TaskStatus(msgspec.Struct, rename="pascal", kw_only=True):
    """``Status`` of a task."""

    state: str = ""
    container_status: ContainerStatus | None = None


class Task(msgspec.Struct, rename="pascal", kw_only=True):
    """A swarm task as ``GET /tasks/{id}`` shows it (what the resolver reads).

    ``ServiceID``, ``NodeID``, ``Slot`` and the container id in ``Status`` are what prove that
    a container really runs this task (its labels alone prove nothing).
    """

    id: str = msgspec.field(default="", name="ID")
    service_id: str = msgspec.field(default="", name="ServiceID")
    node_id: str = msgspec.field(default="", name="NodeID")
    slot: int = 0
    status: TaskStatus = msgspec.field(default_factory=TaskStatus)
    spec: TaskSpec = msgspec.field(default_factory=TaskSpec)

    @property
    def container_id(self) -> str:
        """The id of the container the swarm created for this task; ``""`` until it has."""
        status = self.status.container_status
        return status.container_id if status else ""


# -- GET /configs/{id} --------------------------------------------------------------------------


class ConfigSpec(msgspec.Struct, rename="pascal", kw_only=True):
    """``Spec`` of a swarm config; ``Data`` is base64 on the wire, bytes here."""

    name: str = ""
    data: bytes | None = None


class Config(msgspec.Struct, rename="pascal", kw_only=True):
    """A swarm config as ``GET /configs/{id}`` shows it."""

    id: str = msgspec.field(default="", name="ID")
    spec: ConfigSpec = msgspec.field(default_factory=ConfigSpec)
