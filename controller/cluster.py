"""Cluster mode's resource: the ``winspec.io/v1alpha1`` ``WindowsContainer``, typed, and its
translation into the generator's :class:`~controller.models.Request`.

The models mirror ``manifests/base/crd.yaml`` field for field (a test compares them both ways),
so the CRD's schema and these types cannot drift apart. Objects come from the API server, which
has already validated, defaulted and pruned them; the models still decode defensively (unknown
fields ignored, wrong types a :class:`~controller.errors.RequestDecodeError`) because the
server's copy of the CRD may be older or newer than this code.

Everything here is pure: the adapters fetch the referenced Secrets, ConfigMaps and
GMSACredentialSpecs and hand their contents in as :class:`Dependencies`.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, TypeVar

import msgspec

from controller.errors import PermanentError, RequestDecodeError, SpecError
from controller.models import (
    ConfigRef,
    Container,
    ContainerConfig,
    DeviceMapping,
    HostConfig,
    Image,
    ImageConfig,
    Int64,
    MountPoint,
    NodeFacts,
    Request,
    ResolvedCredentialSpecs,
    SecretRef,
)
from controller.winpath import host_join

GROUP = "winspec.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "WindowsContainer"
PLURAL = "windowscontainers"
#: Added before a bundle is first written, removed once it is deleted.
FINALIZER = "winspec.io/bundle"
#: Set by the resource's creator to spec.nodeName; ``--node-name`` selects on it.
NODE_LABEL = "winspec.io/node-name"

#: Condition types winspec writes (each ``True``/``False`` with a reason and a message).
SPEC_GENERATED = "SpecGenerated"
BUNDLE_WRITTEN = "BundleWritten"
READY = "Ready"

_CREDENTIAL_SPEC_OPTION = "credentialspec"
_CONFIG_SCHEME = "config://"


class ImageSpec(msgspec.Struct, rename="camel", kw_only=True):
    """What the image contributes: its OS and ``Config.ArgsEscaped``."""

    os: Literal["windows", "linux"] = "windows"
    args_escaped: bool = False


class EnvVar(msgspec.Struct, rename="camel", kw_only=True):
    """One environment variable."""

    name: str
    value: str = ""


class Resources(msgspec.Struct, rename="camel", kw_only=True):
    """Windows resource limits, as Docker's ``HostConfig`` has them."""

    cpu_count: Int64 = 0
    cpu_shares: Int64 = 0
    cpu_percent: Int64 = 0
    nano_cpus: Int64 = msgspec.field(default=0, name="nanoCPUs")
    memory: Int64 = 0
    io_maximum_bandwidth: Int64 = 0
    io_maximum_iops: Int64 = msgspec.field(default=0, name="ioMaximumIOps")


class Mount(msgspec.Struct, rename="camel", kw_only=True):
    """A bind or volume mount."""

    type: Literal["bind", "volume"] = "bind"
    name: str = ""
    source: str
    destination: str
    read_only: bool = False


class Device(msgspec.Struct, rename="camel", kw_only=True):
    """A device assigned to the container."""

    path_on_host: str
    path_in_container: str = ""
    cgroup_permissions: str = ""


class SecretKeyRef(msgspec.Struct, rename="camel", kw_only=True):
    """One key of a Secret in the resource's namespace, given to the container as a file."""

    secret_name: str
    key: str
    target: str


class ConfigMapKeyRef(msgspec.Struct, rename="camel", kw_only=True):
    """One key of a ConfigMap in the resource's namespace, given to the container as a file."""

    config_map_name: str
    key: str
    target: str


class WindowsContainerSpec(msgspec.Struct, rename="camel", kw_only=True):
    """``spec`` of a WindowsContainer: the generator's request, with references for data.

    Arrays are tuples: an absent one is the shared empty tuple, not a new list per object
    (a tenth of the memory of 10,000 cached resources), and nothing may change them anyway.
    """

    node_name: str
    service_account_name: str = "default"
    image: ImageSpec = msgspec.field(default_factory=ImageSpec)
    layer_folders: tuple[str, ...]
    volume_path: str | None = None
    bundle_dir: str | None = None
    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    working_dir: str = ""
    user: str = ""
    hostname: str = ""
    domainname: str = ""
    tty: bool = False
    isolation: Literal["default", "process", "hyperv"] = "default"
    resources: Resources = msgspec.field(default_factory=Resources)
    mounts: tuple[Mount, ...] = ()
    security_options: tuple[str, ...] = ()
    devices: tuple[Device, ...] = ()
    privileged: bool = False
    read_only_root_filesystem: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    capabilities: tuple[str, ...] | None = None
    device_cgroup_rules: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    secrets: tuple[SecretKeyRef, ...] = ()
    configs: tuple[ConfigMapKeyRef, ...] = ()
    gmsa_credential_spec_name: str | None = None


class Condition(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """A status condition (metav1.Condition's fields)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str | None = None


class WindowsContainerStatus(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """``status`` of a WindowsContainer, written by winspec only."""

    observed_generation: int | None = None
    digest: str | None = None
    conditions: list[Condition] = msgspec.field(default_factory=list)


class ObjectMeta(msgspec.Struct, rename="camel", kw_only=True):
    """The parts of ``metadata`` winspec reads."""

    name: str
    namespace: str = ""
    uid: str = ""
    generation: int = 0
    resource_version: str = ""
    deletion_timestamp: str | None = None
    finalizers: tuple[str, ...] = ()
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class WindowsContainer(msgspec.Struct, rename="camel", kw_only=True):
    """A ``winspec.io/v1alpha1`` ``WindowsContainer`` object."""

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: ObjectMeta
    spec: WindowsContainerSpec
    status: WindowsContainerStatus = msgspec.field(default_factory=WindowsContainerStatus)

    @property
    def key(self) -> str:
        """The work queue key: ``<namespace>/<name>``."""
        return f"{self.metadata.namespace}/{self.metadata.name}"


class ObjectHead(msgspec.Struct, rename="camel", kw_only=True):
    """A WindowsContainer's metadata and status alone, decoded leniently: what is needed to
    report on an object whose spec these models do not decode."""

    metadata: ObjectMeta
    status: WindowsContainerStatus = msgspec.field(default_factory=WindowsContainerStatus)


class InvalidObjectError(RequestDecodeError):
    """A WindowsContainer the server holds whose spec these models refuse (its CRD was changed
    under it, or is not this version's): permanent until the object is updated. Its metadata
    and status, decoded on their own, are kept so status and an Event can still name it."""

    reason = "InvalidSpec"

    def __init__(self, message: str, head: ObjectHead) -> None:
        super().__init__(message)
        self.head = head

    @property
    def metadata(self) -> ObjectMeta:
        """The object's metadata."""
        return self.head.metadata

    @property
    def status(self) -> WindowsContainerStatus:
        """The object's status as stored (for de-duplicating conditions and Events)."""
        return self.head.status

    @property
    def key(self) -> str:
        """The work queue key: ``<namespace>/<name>``."""
        return f"{self.metadata.namespace}/{self.metadata.name}"

    def again(self) -> InvalidObjectError:
        """A new error with the same message and object (raising one instance over and over
        would keep growing its traceback)."""
        return InvalidObjectError(str(self), self.head)


def _field_error(exc: msgspec.MsgspecError) -> str:
    """msgspec's message, which names the field (``- at `$.spec.command```), without the value
    it may quote: only an enum mismatch quotes one, and a spec may hold anything."""
    message = str(exc)
    if message.startswith("Invalid enum value"):
        _, at, path = message.rpartition(" - at ")
        return "Invalid enum value" + (f" - at {path}" if at else "")
    return message


def decode_windows_container(obj: Any) -> WindowsContainer:
    """A WindowsContainer from its JSON form (bytes) or decoded JSON (a dict).

    What does not decode is a :class:`RequestDecodeError` naming the field, never its value;
    an :class:`InvalidObjectError` (with the metadata) when the metadata alone decodes.
    """
    try:
        return _convert(obj, WindowsContainer)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        message = f"invalid {KIND}: {_field_error(exc)}"
        head = _decode_head(obj)
        if head is None:
            raise RequestDecodeError(message) from exc
        raise InvalidObjectError(message, head) from exc


def _decode_head(obj: Any) -> ObjectHead | None:
    """The metadata (and the status, when it decodes) of an object; None without them."""
    try:
        return _convert(obj, ObjectHead)
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass
    try:
        return ObjectHead(metadata=_convert(obj, _MetadataOnly).metadata)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


_T = TypeVar("_T")


def _convert(obj: Any, typ: type[_T]) -> _T:
    """``obj`` (JSON bytes or text, or decoded JSON) as ``typ``."""
    if isinstance(obj, bytes | str):
        return msgspec.json.decode(obj, type=typ)
    return msgspec.convert(obj, typ)


class _MetadataOnly(msgspec.Struct):
    metadata: ObjectMeta


class Dependencies(msgspec.Struct, kw_only=True):
    """The referenced data, fetched by an adapter: by (object name, key) and by spec name."""

    secrets: dict[tuple[str, str], bytes] = msgspec.field(default_factory=dict)
    configs: dict[tuple[str, str], bytes] = msgspec.field(default_factory=dict)
    credential_specs: dict[str, str] = msgspec.field(default_factory=dict)


def credential_spec_names(spec: WindowsContainerSpec) -> list[str]:
    """The GMSACredentialSpecs ``spec`` refers to (field and ``config://`` options), in order.

    Lenient on purpose: a malformed option is the generator's to refuse with its rule message;
    here it simply refers to nothing.
    """
    names: list[str] = []
    for option in spec.security_options:
        key, sep, value = option.partition("=")
        if sep and key.casefold() == _CREDENTIAL_SPEC_OPTION:
            scheme, _, rest = value.partition("://")
            if scheme.casefold() == "config" and rest and rest not in names:
                names.append(rest)
    if spec.gmsa_credential_spec_name and spec.gmsa_credential_spec_name not in names:
        names.append(spec.gmsa_credential_spec_name)
    return names


def _refuse_host_credential_specs(options: list[str]) -> None:
    """Refuse ``file://`` and ``registry://`` credential specs, naming what to use instead:
    they would be read on the host winspec runs on, which in a cluster is not the node."""
    for option in options:
        key, sep, value = option.partition("=")
        scheme = value.partition("://")[0].casefold()
        if sep and key.casefold() == _CREDENTIAL_SPEC_OPTION and scheme in ("file", "registry"):
            raise SpecError(
                f"spec.securityOptions: credentialspec={scheme}:// is refused in cluster mode "
                "(it would be read on winspec's own host, not on the node); put the credential "
                "spec in a GMSACredentialSpec (windows.k8s.io/v1) and name it with "
                "spec.gmsaCredentialSpecName or credentialspec=config://<name>"
            )


def container_id(uid: str) -> str:
    """A Docker-style container id (64 hex digits) for an object, stable over its life."""
    return hashlib.sha256(f"winspec.io/{uid}".encode()).hexdigest()


def _payload_id(kind: str, name: str, key: str) -> str:
    """A file name for one referenced key: readable, and unique even for keys with dots."""
    digest = hashlib.sha256(f"{name}\0{key}".encode()).hexdigest()[:16]
    return f"{kind}-{digest}"


def secret_payload_id(ref: SecretKeyRef) -> str:
    """The bundle's ``secrets/<id>`` file name of a Secret key reference."""
    return _payload_id("secret", ref.secret_name, ref.key)


def config_payload_id(ref: ConfigMapKeyRef) -> str:
    """The bundle's ``configs/<id>`` file name of a ConfigMap key reference."""
    return _payload_id("config", ref.config_map_name, ref.key)


def bundle_dir(wc: WindowsContainer, bundle_root: str | None) -> str | None:
    """Where the resource's bundle is on its node, so the secrets and configs mounts point into
    it: ``spec.bundleDir`` when set, else ``<bundle root>\\<namespace>\\<name>`` (joined with
    the root's own separator), where cluster mode's writers and the node agent put it. ``None``
    (no root known): the generator's default, Docker's ``<daemonRoot>\\containers\\<id>``.
    """
    if wc.spec.bundle_dir:
        return wc.spec.bundle_dir
    if not bundle_root:
        return None
    return host_join(bundle_root, wc.metadata.namespace, wc.metadata.name)


def to_request(
    wc: WindowsContainer,
    *,
    node: NodeFacts,
    deps: Dependencies,
    bundle_root: str | None,
) -> Request:
    """The generator's request for a WindowsContainer, its references replaced by ``deps``.

    ``bundle_root`` is the node's bundle root as the node names it (the directory holding
    ``<namespace>/<name>/``): the payload mounts point into the bundle below it
    (:func:`bundle_dir`). Required, so that no caller gets Docker's default by omission.

    Raises :class:`PermanentError` for what the CRD cannot refuse by itself (it has no
    cross-field rules on Kubernetes 1.20): a credential spec named both ways.
    """
    s = wc.spec
    security = list(s.security_options)
    _refuse_host_credential_specs(security)
    if s.gmsa_credential_spec_name:
        if any(
            opt.partition("=")[0].casefold() == _CREDENTIAL_SPEC_OPTION and "=" in opt
            for opt in security
        ):
            raise PermanentError(
                "spec.gmsaCredentialSpecName and a credentialspec= security option are both "
                "set; use one of them"
            )
        security.append(f"{_CREDENTIAL_SPEC_OPTION}={_CONFIG_SCHEME}{s.gmsa_credential_spec_name}")
    argv = [*s.command, *s.args]
    container = Container(
        id=container_id(wc.metadata.uid or wc.key),
        name=f"/{wc.metadata.namespace}_{wc.metadata.name}",
        path=argv[0] if argv else "",
        args=argv[1:],
        config=ContainerConfig(
            hostname=s.hostname or wc.metadata.name[:63],
            domainname=s.domainname,
            user=s.user,
            env=[f"{e.name}={e.value}" for e in s.env] or None,
            tty=s.tty,
            working_dir=s.working_dir,
        ),
        host_config=HostConfig(
            isolation="" if s.isolation == "default" else s.isolation,
            dns_search=list(s.dns_search) or None,
            security_opt=security or None,
            devices=[
                DeviceMapping(
                    path_on_host=d.path_on_host,
                    path_in_container=d.path_in_container,
                    cgroup_permissions=d.cgroup_permissions,
                )
                for d in s.devices
            ]
            or None,
            readonly_rootfs=s.read_only_root_filesystem,
            privileged=s.privileged,
            cap_add=list(s.cap_add) or None,
            cap_drop=list(s.cap_drop) or None,
            capabilities=None if s.capabilities is None else list(s.capabilities),
            device_cgroup_rules=list(s.device_cgroup_rules) or None,
            cpu_shares=s.resources.cpu_shares,
            cpu_percent=s.resources.cpu_percent,
            cpu_count=s.resources.cpu_count,
            nano_cpus=s.resources.nano_cpus,
            memory=s.resources.memory,
            io_maximum_bandwidth=s.resources.io_maximum_bandwidth,
            io_maximum_iops=s.resources.io_maximum_iops,
        ),
        mounts=[
            MountPoint(
                type=m.type,
                name=m.name,
                source=m.source,
                destination=m.destination,
                rw=not m.read_only,
            )
            for m in s.mounts
        ]
        or None,
    )
    return Request(
        container=container,
        image=Image(os=s.image.os, config=ImageConfig(args_escaped=s.image.args_escaped)),
        node=node,
        layer_folders=list(s.layer_folders),
        volume_path=s.volume_path,
        # The orchestrator's config store (S25): GMSACredentialSpecs by name.
        swarm_managed=True,
        secrets=[
            SecretRef(
                secret_id=secret_payload_id(ref),
                secret_name=ref.secret_name,
                target=ref.target,
                data=deps.secrets.get((ref.secret_name, ref.key)),
            )
            for ref in s.secrets
        ],
        configs=[
            ConfigRef(
                config_id=config_payload_id(ref),
                config_name=ref.config_map_name,
                target=ref.target,
                data=deps.configs.get((ref.config_map_name, ref.key)),
            )
            for ref in s.configs
        ],
        credential_specs=ResolvedCredentialSpecs(config=dict(deps.credential_specs)),
        bundle_dir=bundle_dir(wc, bundle_root),
    )


# -- references: which objects a resource depends on, and back --------------------------------

SECRET = "Secret"
CONFIG_MAP = "ConfigMap"
GMSA_CREDENTIAL_SPEC = "GMSACredentialSpec"
NODE = "Node"

#: (kind, namespace, name) of an object a resource depends on; "" namespace: cluster-scoped.
Ref = tuple[str, str, str]


def references(wc: WindowsContainer) -> frozenset[Ref]:
    """Every Secret, ConfigMap and GMSACredentialSpec a resource refers to, and its Node."""
    ns = wc.metadata.namespace
    refs: set[Ref] = {(SECRET, ns, s.secret_name) for s in wc.spec.secrets}
    refs |= {(CONFIG_MAP, ns, c.config_map_name) for c in wc.spec.configs}
    refs |= {(GMSA_CREDENTIAL_SPEC, "", name) for name in credential_spec_names(wc.spec)}
    refs.add((NODE, "", wc.spec.node_name))
    return frozenset(refs)


class ReferenceIndex:
    """From a referenced object to the keys of the resources that refer to it (and back).

    A change of a Secret re-queues exactly the resources that use it, so a resource waiting
    for a missing Secret becomes Ready when the Secret appears, without polling.
    """

    def __init__(self) -> None:
        self._by_ref: dict[Ref, set[str]] = {}
        self._by_key: dict[str, frozenset[Ref]] = {}

    def record(self, key: str, refs: frozenset[Ref]) -> None:
        """Record what ``key`` refers to now (replacing what it referred to before)."""
        old = self._by_key.get(key, frozenset())
        if old == refs:
            return
        for ref in old - refs:
            keys = self._by_ref.get(ref)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_ref[ref]
        for ref in refs - old:
            self._by_ref.setdefault(ref, set()).add(key)
        if refs:
            self._by_key[key] = refs
        else:
            self._by_key.pop(key, None)

    def remove(self, key: str) -> None:
        """Forget ``key`` (its resource is gone)."""
        self.record(key, frozenset())

    def keys_for(self, ref: Ref) -> set[str]:
        """The keys of the resources that refer to ``ref``."""
        return set(self._by_ref.get(ref, ()))

    def keys_for_kind(self, kind: str) -> set[str]:
        """The keys of every resource that refers to any object of ``kind``."""
        return {key for ref, keys in self._by_ref.items() if ref[0] == kind for key in keys}
