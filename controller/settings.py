"""winspec's settings: one typed object, from defaults, a config file, the environment and
flags (later sources win). Every field is documented in docs/configuration.md."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

from controller.errors import PermanentError
from controller.models import NodeSettings
from controller.names import is_dns1123_label

ENV_PREFIX = "WINSPEC_"
# A node name that is also a valid label value (63 characters at most).
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")
#: Settings given as comma-separated lists in the environment.
_LIST_SETTINGS = ("dns_search", "namespace")
#: Settings whose value is an address URL, where ``tcp://HOST:PORT`` is a real value.
_URL_SETTINGS = frozenset({"docker_host", "swarm_host"})
#: The value of a Kubernetes service link variable ``<SERVICE>_PORT`` or
#: ``<SERVICE>_PORT_<N>_<PROTO>``: ``tcp://10.0.0.61:8443`` (udp, sctp; IPv6 in brackets).
_SERVICE_LINK = re.compile(r"^(?:tcp|udp|sctp)://(?:[0-9.]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$")
_LINK_SUFFIX = re.compile(r"_PORT(?:_[0-9]+_(?:TCP|UDP|SCTP))?$")


def _default_bundle_root() -> str:
    return (
        "C:\\ProgramData\\winspec\\bundles"
        if sys.platform == "win32"
        else "/var/lib/winspec/bundles"
    )


def _default_secrets_dir() -> str:
    return "C:\\ProgramData\\Docker\\secrets" if sys.platform == "win32" else "/run/secrets"


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything ``winspec run`` can be told."""

    source: Literal["docker", "kubernetes"] = "docker"
    docker_host: str | None = None
    #: A swarm manager's Engine API for tasks and configs (default: the node's own engine).
    swarm_host: str | None = None
    bundle_root: str = msgspec.field(default_factory=_default_bundle_root)
    secrets_dir: str = msgspec.field(default_factory=_default_secrets_dir)
    workers: int = 4
    resync_interval: float = 300.0
    idle_timeout: float = 600.0
    retry_attempts: int = 5
    api_timeout: float = 30.0
    listen: str = "0.0.0.0:8080"
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_timeout: float = 30.0
    windows_build: int | None = None
    cpu_count: int | None = None
    default_isolation: Literal["process", "hyperv"] | None = None
    lcow: bool | None = None
    dns_search: list[str] = msgspec.field(default_factory=list)
    daemon_root: str | None = None
    # Cluster mode (--source kubernetes).
    #: kubeconfig file (default: KUBECONFIG, else ~/.kube/config, else in-cluster).
    kubeconfig: str | None = None
    #: Where the in-cluster service account's ``token`` and ``ca.crt`` are read when no
    #: kubeconfig is found (the directory Kubernetes mounts into every pod).
    service_account_dir: str = "/var/run/secrets/kubernetes.io/serviceaccount"
    #: Namespaces to watch (default: all).
    namespace: list[str] = msgspec.field(default_factory=list)
    #: Label selector of the WindowsContainers to reconcile (default: all).
    selector: str | None = None
    #: Server-side timeout of each watch, in seconds.
    watch_timeout: int = 300
    #: The first list of each collection may be served from the API server's watch cache
    #: (resourceVersion=0, as client-go's reflectors ask); False: from etcd, page by page.
    list_from_cache: bool = True
    #: Reconcile only resources labelled winspec.io/node-name=<this> (one instance per node;
    #: leader election is off then).
    node_name: str | None = None
    #: Only the holder of the Lease reconciles (several replicas, one active).
    leader_elect: bool = True
    leader_election_namespace: str = "winspec-system"
    leader_election_id: str = "winspec"
    #: Seconds a Lease is valid without renewal (renew deadline 2/3 of it, retry 2/15).
    lease_duration: float = 15.0
    #: The Pod Security level of a namespace without a pod-security.kubernetes.io/enforce
    #: label (Kubernetes' own default is privileged, unless its admission configuration says
    #: otherwise).
    pod_security_default: Literal["privileged", "baseline", "restricted"] = "privileged"
    #: Seconds a bundle keeps the payload of a Secret, ConfigMap or GMSACredentialSpec (or key)
    #: that went missing before the bundle is withdrawn (0: at once).
    dependency_grace_period: float = 30.0
    # Central delivery (--delivery agent): bundles go to the node agent on each resource's node.
    #: Where bundles go in cluster mode: "local" (--bundle-root) or "agent" (node agents).
    delivery: Literal["local", "agent"] = "local"
    #: The port the node agents serve HTTPS on (``winspec agent``'s default --listen port, and
    #: the shipped DaemonSet's container port ``https``).
    agent_port: int = 8443
    #: CA bundle (PEM) the agents' certificates are checked against (default: the system's).
    agent_ca_file: str | None = None
    #: The name the agents' certificates are checked for (default: the pod IP dialled). One
    #: certificate for every agent of a DaemonSet names a fixed service name, not each pod's IP.
    agent_server_name: str | None = None
    #: The projected service-account token (audience winspec-agent), re-read on every call
    #: (where the shipped controller Deployment mounts it).
    agent_token_file: str = "/var/run/secrets/winspec-agent/token"
    #: Label selector of the agent pods (the shipped agent DaemonSet's pod labels, and no other
    #: winspec pod's), and their namespace.
    agent_selector: str = "app.kubernetes.io/name=winspec,app.kubernetes.io/component=agent"
    agent_namespace: str = "winspec-system"
    #: Calls at once to one node's agent, and one delivery's deadline in seconds.
    agent_concurrency: int = 4
    agent_timeout: float = 60.0
    #: Seconds a deleted resource's bundle waits for its node's agent: once no call to that
    #: agent has succeeded for this long, the finalizer is released without the removal.
    agent_removal_grace: float = 600.0

    def __post_init__(self) -> None:
        # Every check that needs no adapter; docker_host is parsed by the Docker client's own
        # parser before anything connects (adapters.run), so its rules live in one place.
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.retry_attempts < 1:
            raise ValueError("retry_attempts must be at least 1")
        for name in ("resync_interval", "idle_timeout", "api_timeout", "shutdown_timeout"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds")
        split_listen(self.listen)
        if self.cpu_count is not None and self.cpu_count < 1:
            raise ValueError("cpu_count must be at least 1")
        if self.windows_build is not None and self.windows_build < 0:
            raise ValueError("windows_build must not be negative")
        for name in ("bundle_root", "secrets_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        if not (self.lease_duration >= 3 and math.isfinite(self.lease_duration)):
            raise ValueError("lease_duration must be at least 3 seconds")
        if not is_dns1123_label(self.leader_election_namespace):
            raise ValueError("leader_election_namespace is not a namespace name")
        if self.node_name is not None and not _NODE_NAME.match(self.node_name):
            raise ValueError(f"node_name {self.node_name!r} is not a node name")
        if not (self.dependency_grace_period >= 0 and math.isfinite(self.dependency_grace_period)):
            raise ValueError("dependency_grace_period must be a number of seconds, 0 or more")
        if self.watch_timeout < 1:
            raise ValueError("watch_timeout must be at least 1 second")
        if not 1 <= self.agent_port <= 65535:
            raise ValueError("agent_port must be from 1 to 65535")
        if self.agent_concurrency < 1:
            raise ValueError("agent_concurrency must be at least 1")
        if not (self.agent_timeout > 0 and math.isfinite(self.agent_timeout)):
            raise ValueError("agent_timeout must be a positive number of seconds")
        if not (self.agent_removal_grace >= 0 and math.isfinite(self.agent_removal_grace)):
            raise ValueError("agent_removal_grace must be a number of seconds, 0 or more")
        if not is_dns1123_label(self.agent_namespace):
            raise ValueError("agent_namespace is not a namespace name")
        if not self.agent_selector or not self.agent_token_file:
            raise ValueError("agent_selector and agent_token_file must not be empty")
        for ns in self.namespace:
            if not is_dns1123_label(ns):
                raise ValueError(f"namespace {ns!r} is not a namespace name")

    def node_settings(self) -> NodeSettings:
        """The node facts these settings give."""
        return NodeSettings(
            windows_build=self.windows_build,
            cpu_count=self.cpu_count,
            default_isolation=self.default_isolation,
            lcow_supported=self.lcow,
            dns_search=tuple(self.dns_search),
            daemon_root=self.daemon_root,
        )


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` into its parts; ``:PORT`` means every address, ``[ADDR]:PORT`` is IPv6.

    Raises ValueError (naming the setting) for anything else or a port outside 0..65535 (0:
    any free port).
    """
    host, sep, port = listen.rpartition(":")
    bad = ValueError(f"listen must be HOST:PORT with a port from 0 to 65535, got {listen!r}")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise bad
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]") and len(host) > 2):
            raise bad
        host = host[1:-1]
    elif ":" in host:
        raise bad  # an IPv6 address needs its brackets
    return host or "0.0.0.0", int(port)


FIELDS: tuple[str, ...] = Settings.__struct_fields__


def env_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings given as ``WINSPEC_<NAME>`` environment variables (``DOCKER_HOST`` too)."""
    out: dict[str, Any] = {}
    if env.get("DOCKER_HOST"):
        out["docker_host"] = env["DOCKER_HOST"]
    for name in FIELDS:
        value = env.get(ENV_PREFIX + name.upper())
        if value is None or value == "":
            continue
        out[name] = (
            [v.strip() for v in value.split(",") if v.strip()] if name in _LIST_SETTINGS else value
        )
    return out


def service_link_error(variable: str, value: object, flag: str) -> str | None:
    """Why the environment variable ``variable=value`` is a Kubernetes service link and not
    a setting, or ``None`` when it is not one.

    The kubelet gives every container ``<SERVICE>_PORT=tcp://<cluster IP>:<port>`` (and more)
    for each Service of its namespace unless the pod says ``enableServiceLinks: false``; a
    Service whose name starts with ``winspec-`` then writes into ``WINSPEC_*`` settings (the
    Service ``winspec-agent`` sets ``WINSPEC_AGENT_PORT``). Such a value is never a valid
    setting, so it is refused with its cause and the fix rather than as a malformed number.
    ``flag`` is the option that sets the same value explicitly.
    """
    if not isinstance(value, str) or not _SERVICE_LINK.match(value):
        return None
    service = _LINK_SUFFIX.sub("", variable).lower().replace("_", "-")
    return (
        f"{variable}={value!r} is a Kubernetes service link (the address of the Service "
        f"{service!r} in the pod's namespace), not a winspec setting: set "
        f"enableServiceLinks: false in the pod spec (the shipped manifests do), or give {flag} "
        "as a flag"
    )


#: Where a layer's values come from, for messages: a config file, the environment, flags.
Origin = Literal["file", "env", "flag"]
_FIELD_ERROR = re.compile(r" - at `\$\.(\w+)`$")


def setting_name(name: str, origin: Origin | None) -> str:
    """How a user wrote a setting: ``--bundle-root``, ``WINSPEC_BUNDLE_ROOT`` or a file key."""
    if origin == "flag":
        return "--" + name.replace("_", "-")
    if origin == "env":
        return ENV_PREFIX + name.upper()
    if origin == "file":
        return f"config file key {name}"
    return name


def expected_form(name: str) -> str:
    """The form a setting's value must have, in words (from its type in :class:`Settings`)."""
    info = msgspec.inspect.type_info(Settings)
    assert isinstance(info, msgspec.inspect.StructType)
    field = next(f for f in info.fields if f.name == name)
    kind = field.type
    if isinstance(kind, msgspec.inspect.UnionType):
        kind = next(t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType))
    if isinstance(kind, msgspec.inspect.BoolType):
        return "true or false"
    if isinstance(kind, msgspec.inspect.IntType):
        return "a whole number"
    if isinstance(kind, msgspec.inspect.FloatType):
        return "a number"
    if isinstance(kind, msgspec.inspect.LiteralType):
        return "one of " + ", ".join(str(v) for v in kind.values)
    if isinstance(kind, msgspec.inspect.ListType):
        return "a list of strings (comma-separated in the environment)"
    return "a string"


def load_settings(*layers: Mapping[str, Any], origins: Sequence[Origin | None] = ()) -> Settings:
    """Merge layers (later wins) into :class:`Settings`; bad values raise PermanentError.

    ``origins`` says where each layer came from, so a message names the flag, the
    ``WINSPEC_*`` variable or the config file key to fix, and the form expected there.
    """
    merged: dict[str, Any] = {}
    origin_of: dict[str, Origin | None] = {}
    for index, layer in enumerate(layers):
        origin = origins[index] if index < len(origins) else None
        for key, value in layer.items():
            if value is not None:
                merged[key] = value
                origin_of[key] = origin
    for key, origin in origin_of.items():
        if origin == "env" and key not in _URL_SETTINGS:
            link = service_link_error(
                setting_name(key, "env"), merged[key], setting_name(key, "flag")
            )
            if link is not None:
                raise PermanentError(f"invalid settings: {link}")
    try:
        return msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as exc:
        match = _FIELD_ERROR.search(str(exc))
        if match is None or match.group(1) not in FIELDS:
            if str(exc).startswith("Object contains unknown field"):
                raise PermanentError(
                    f"invalid settings: {exc} (known settings: {', '.join(FIELDS)})"
                ) from exc
            raise PermanentError(f"invalid settings: {exc}") from exc
        name = match.group(1)
        raise PermanentError(
            f"invalid settings: {setting_name(name, origin_of.get(name))} must be "
            f"{expected_form(name)}, got {merged[name]!r}"
        ) from exc
