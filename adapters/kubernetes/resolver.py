"""Cluster mode's request resolver: a WindowsContainer key in, the generator's request out.

The resource itself comes from the source's cache (listed and watched, never fetched per
reconcile). What it refers to is fetched when it is reconciled, so the bundle always carries
the current data:

- The namespace's Pod Security level (its ``pod-security.kubernetes.io/enforce`` label, from
  the source's watch of namespaces), checked before anything is fetched: a spec the level
  forbids is a permanent :class:`~controller.podsecurity.PodSecurityError`.
- Secret and ConfigMap keys, by reference in the resource's namespace. A missing object or
  key is a :class:`DependencyMissingError` (transient: retried with backoff, and re-queued at
  once by the source's watch when the object appears or changes). One missing for longer than
  the grace period (a GMSACredentialSpec too) is a :class:`DependencyWithdrawnError`: still
  retried, but the bundle holding the revoked payload is removed meanwhile. The grace period
  lets a delete-and-recreate rotation pass without the bundle flapping; its end is scheduled,
  so a bundle is withdrawn within the period (plus one reconcile) of the first miss seen.
- GMSACredentialSpecs (``windows.k8s.io/v1``, cluster-scoped, the JSON under ``credspec``), by
  name, and only after a SubjectAccessReview says the resource's service account may ``use``
  it: what the windows-gmsa admission webhook checks for a pod. Denied is a permanent
  :class:`CredentialSpecDeniedError`; nothing is written.
- Node facts, from the Node object named by ``spec.nodeName`` (Windows build from the
  ``node.kubernetes.io/windows-build`` label or ``status.nodeInfo.kernelVersion``, CPUs from
  ``status.capacity.cpu``, LCOW and default isolation from winspec's annotations), settings
  as fallbacks. A node that does not exist yet is retried, not an error. Cached briefly: one
  GET per node, not per reconcile.
- The node's bundle root (where the bundle will be on that node, as the node names it), from
  ``bundle_root``: the local ``--bundle-root`` when bundles are written here, the root the
  node's agent reports with ``--delivery agent``. The payload mounts point into
  ``<root>/<namespace>/<name>/`` (unless ``spec.bundleDir`` says otherwise); without a root
  they would point at Docker's own container directory, where nothing is written.

No data fetched here ever reaches a message, a log line or a metric: errors name objects and
keys only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import quote

import msgspec

from adapters.kubernetes.client import KubeClient
from adapters.kubernetes.payloads import PayloadCache
from controller.cluster import (
    CONFIG_MAP,
    NODE_LABEL,
    SECRET,
    ConfigMapKeyRef,
    Dependencies,
    InvalidObjectError,
    Ref,
    SecretKeyRef,
    WindowsContainer,
    credential_spec_names,
    to_request,
)
from controller.errors import (
    NotFoundError,
    PermanentError,
    RequestDecodeError,
    TransientError,
    WithdrawError,
)
from controller.models import NodeFacts, NodeSettings, Request
from controller.podsecurity import Level, check_pod_security, namespace_level

#: Node annotations (or labels) winspec reads; documented in docs/cluster-mode.md.
LCOW_ANNOTATION = "winspec.io/lcow"
ISOLATION_ANNOTATION = "winspec.io/default-isolation"
WINDOWS_BUILD_LABEL = "node.kubernetes.io/windows-build"
NODE_CACHE_SECONDS = 30.0

_T = TypeVar("_T")


class DependencyMissingError(TransientError):
    """A referenced Secret, ConfigMap, key, GMSACredentialSpec or Node does not exist (yet)."""

    reason = "DependencyMissing"


class DependencyWithdrawnError(WithdrawError):
    """A referenced Secret, ConfigMap, key or GMSACredentialSpec has been missing for longer
    than the grace period: the bundle with its old payload is withdrawn until it is back."""

    reason = "DependencyMissing"


class CredentialSpecDeniedError(PermanentError):
    """The resource's service account may not ``use`` the GMSACredentialSpec it names."""

    reason = "CredentialSpecUseDenied"


class _Secret(msgspec.Struct):
    data: dict[str, str] | None = None


class _ConfigMap(msgspec.Struct, rename="camel"):
    data: dict[str, str] | None = None
    binary_data: dict[str, str] | None = None


class _GMSA(msgspec.Struct):
    # Raw: kept as the JSON it is (msgspec takes no Raw in a union, so "absent" is "null").
    credspec: msgspec.Raw = msgspec.Raw(b"null")


class _APIResource(msgspec.Struct):
    name: str = ""


class _APIResourceList(msgspec.Struct):
    resources: list[_APIResource] = msgspec.field(default_factory=list)


#: Where GMSACredentialSpecs are served (windows-gmsa's CRD), and what to say when they are not.
GMSA_GROUP_VERSION = "windows.k8s.io/v1"
GMSA_PLURAL = "gmsacredentialspecs"
GMSA_NOT_SERVED = (
    "the API server does not serve windows.k8s.io/v1 gmsacredentialspecs: the "
    "GMSACredentialSpec CRD of kubernetes-sigs/windows-gmsa is not installed (apply it, e.g. "
    "examples/cluster/gmsa-crd.yaml, a copy of it)"
)


class _SARStatus(msgspec.Struct):
    allowed: bool = False
    denied: bool = False
    reason: str = ""


class _SAR(msgspec.Struct):
    status: _SARStatus = msgspec.field(default_factory=_SARStatus)


class _NodeInfo(msgspec.Struct, rename="camel"):
    kernel_version: str = ""


class _NodeStatus(msgspec.Struct, rename="camel"):
    capacity: dict[str, str] = msgspec.field(default_factory=dict)
    node_info: _NodeInfo = msgspec.field(default_factory=_NodeInfo)


class _NodeMeta(msgspec.Struct):
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    annotations: dict[str, str] = msgspec.field(default_factory=dict)


class _Node(msgspec.Struct):
    metadata: _NodeMeta = msgspec.field(default_factory=_NodeMeta)
    status: _NodeStatus = msgspec.field(default_factory=_NodeStatus)


def _decode(body: bytes, kind: type[msgspec.Struct], what: str) -> msgspec.Struct:
    try:
        return msgspec.json.decode(body, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RequestDecodeError(f"invalid {what}: {exc}") from exc


def _build(version: str) -> int | None:
    """The build number of "10.0.17763" or "10.0.17763.1234"."""
    parts = version.strip().split(".")
    if len(parts) >= 3 and parts[2].isdigit():
        return int(parts[2])
    return None


def _cpus(quantity: str) -> int | None:
    """A CPU quantity ("4", "3500m") as whole CPUs (at least 1)."""
    try:
        if quantity.endswith("m"):
            return max(int(quantity[:-1]) // 1000, 1)
        return max(int(quantity), 1)
    except ValueError:
        return None


def node_facts(node: _Node, defaults: NodeSettings) -> NodeFacts:
    """Node facts from a Node object; settings, then built-in defaults, for what it lacks."""
    meta = node.metadata
    marks = {**meta.labels, **meta.annotations}
    build = _build(meta.labels.get(WINDOWS_BUILD_LABEL, "")) or _build(
        node.status.node_info.kernel_version
    )
    facts = NodeFacts()
    isolation = marks.get(ISOLATION_ANNOTATION, "").lower()
    lcow = marks.get(LCOW_ANNOTATION, "").lower()
    return NodeFacts(
        windows_build=build or defaults.windows_build or facts.windows_build,
        cpu_count=_cpus(node.status.capacity.get("cpu", "")) or defaults.cpu_count or 1,
        default_isolation=isolation
        if isolation in ("process", "hyperv")
        else defaults.default_isolation or facts.default_isolation,
        lcow_supported=lcow == "true"
        if lcow in ("true", "false")
        else bool(defaults.lcow_supported) or facts.lcow_supported,
        dns_search=list(defaults.dns_search) or None,
        daemon_root=defaults.daemon_root or facts.daemon_root,
    )


#: The ``kind`` label values of ``winspec_dependency_fetch_seconds`` in cluster mode (the
#: resources themselves come from the source's cache: no fetch to time).
DEPENDENCY_KINDS = ("secret", "config", "credential_spec", "node")


class KubernetesResolver:
    """A :class:`~controller.ports.RequestResolver` over the source's cache and the API."""

    def __init__(
        self,
        client: KubeClient,
        *,
        cache: Mapping[str, WindowsContainer | RequestDecodeError],
        node_defaults: NodeSettings | None = None,
        observe: Callable[[str, float], None] | None = None,
        node_name: str | None = None,
        bundle_root: Callable[[str], Awaitable[str]],
        namespaces: Callable[[str], Awaitable[Mapping[str, str] | None]],
        pod_security_default: Level = "privileged",
        grace_period: float = 30.0,
        enqueue_after: Callable[[str, float], None] | None = None,
        payloads: PayloadCache[Any] | None = None,
    ) -> None:
        """``bundle_root`` gives a node's bundle root, as that node names it (a Windows path on
        a Windows node): the directory its bundles ``<namespace>/<name>/`` are written below.
        ``payloads`` keeps the Secrets and ConfigMaps read, for as long as the source's watches
        report no change of them (without it, each resolve reads them again)."""
        self._client = client
        self._payloads = payloads
        self._bundle_root = bundle_root
        #: A namespace's labels (None when it has not been seen in time).
        self._namespaces = namespaces
        self._pod_security_default: Level = pod_security_default
        self._grace = grace_period
        self._enqueue_after = enqueue_after
        #: key -> when (monotonic) a dependency of it was first seen missing, this time.
        self._missing_since: dict[str, float] = {}
        self._node_name = node_name
        self._cache = cache
        self._defaults = node_defaults or NodeSettings()
        self._observe = observe
        self._nodes: dict[str, tuple[float, NodeFacts]] = {}
        #: The generation each key was last resolved at (read by the status writer).
        self.resolved_generation: dict[str, int] = {}

    async def resolve(self, key: str) -> Request | None:
        """The request for ``key``; None when it is gone or being deleted."""
        entry = self._cache.get(key)
        if entry is None:
            self.resolved_generation.pop(key, None)  # gone: nothing to report any more
            self._missing_since.pop(key, None)
            return None
        if isinstance(entry, InvalidObjectError):
            if entry.metadata.deletion_timestamp is not None:
                return None  # being deleted: its bundle goes, whatever its spec
            self.resolved_generation[key] = entry.metadata.generation
            raise entry.again()
        if isinstance(entry, RequestDecodeError):
            raise RequestDecodeError(str(entry))
        wc = entry
        if wc.metadata.deletion_timestamp is not None:
            return None
        self.resolved_generation[key] = wc.metadata.generation
        if self._node_name is not None and wc.spec.node_name != self._node_name:
            # Labelled for this node but scheduled to another: its label is wrong.
            raise PermanentError(
                f"labelled {NODE_LABEL}={self._node_name} but spec.nodeName is "
                f"{wc.spec.node_name}; the label must name spec.nodeName"
            )
        ns = wc.metadata.namespace
        labels = await self._namespaces(ns)
        if labels is None:
            raise DependencyMissingError(
                f"Namespace {ns} not seen (its Pod Security label is needed); retrying"
            )
        try:
            check_pod_security(
                wc.spec, level=namespace_level(labels, self._pod_security_default), namespace=ns
            )
        except PermanentError:
            self._missing_since.pop(key, None)  # a later miss has its grace period again
            raise
        try:
            deps = await self._dependencies(wc)
        except DependencyMissingError as exc:
            raise self._missing(key, exc) from exc
        self._missing_since.pop(key, None)
        node = await self._node(wc.spec.node_name)
        root = None if wc.spec.bundle_dir else await self._bundle_root(wc.spec.node_name)
        return to_request(wc, node=node, deps=deps, bundle_root=root)

    def _missing(self, key: str, exc: DependencyMissingError) -> TransientError:
        """What a missing dependency means now: within the grace period, a retry (and the end
        of the period scheduled); past it, the bundle's withdrawal."""
        now = asyncio.get_running_loop().time()
        since = self._missing_since.get(key)
        if since is None:
            since = self._missing_since[key] = now
            if self._grace > 0 and self._enqueue_after is not None:
                self._enqueue_after(key, self._grace)
        if now - since >= self._grace:
            return DependencyWithdrawnError(
                f"{exc}: missing for {self._grace:g}s or more, so the bundle is withdrawn "
                "until it is back"
            )
        return DependencyMissingError(
            f"{exc}; retrying (the bundle is withdrawn if it is still missing after "
            f"{self._grace:g}s)"
        )

    async def _dependencies(self, wc: WindowsContainer) -> Dependencies:
        """The Secret and ConfigMap keys and the credential specs ``wc`` refers to."""
        deps = Dependencies()
        ns = wc.metadata.namespace
        secrets: dict[str, dict[str, str]] = {}
        for sref in wc.spec.secrets:
            if sref.secret_name not in secrets:
                secrets[sref.secret_name] = await self._secret(ns, sref.secret_name)
            deps.secrets[(sref.secret_name, sref.key)] = _secret_value(ns, sref, secrets)
        configs: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
        for cref in wc.spec.configs:
            if cref.config_map_name not in configs:
                configs[cref.config_map_name] = await self._config_map(ns, cref.config_map_name)
            deps.configs[(cref.config_map_name, cref.key)] = _config_value(ns, cref, configs)
        for name in credential_spec_names(wc.spec):
            deps.credential_specs[name] = await self._credential_spec(wc, name)
        return deps

    async def _get(self, path: str, *, kind: str, missing: str) -> bytes:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return await self._client.request("GET", path, api=f"{kind}_get")
        except NotFoundError as exc:
            raise DependencyMissingError(missing) from exc
        finally:
            if self._observe is not None:
                self._observe(kind, loop.time() - started)

    async def _secret(self, ns: str, name: str) -> dict[str, str]:
        async def read() -> dict[str, str]:
            path = f"/api/v1/namespaces/{quote(ns, safe='')}/secrets/{quote(name, safe='')}"
            body = await self._get(path, kind="secret", missing=f"Secret {ns}/{name} not found")
            secret = _decode(body, _Secret, f"Secret {ns}/{name}")
            assert isinstance(secret, _Secret)
            return secret.data or {}

        data: dict[str, str] = await self._kept((SECRET, ns, name), read)
        return data

    async def _config_map(self, ns: str, name: str) -> tuple[dict[str, str], dict[str, str]]:
        async def read() -> tuple[dict[str, str], dict[str, str]]:
            path = f"/api/v1/namespaces/{quote(ns, safe='')}/configmaps/{quote(name, safe='')}"
            body = await self._get(path, kind="config", missing=f"ConfigMap {ns}/{name} not found")
            cm = _decode(body, _ConfigMap, f"ConfigMap {ns}/{name}")
            assert isinstance(cm, _ConfigMap)
            return cm.data or {}, cm.binary_data or {}

        data: tuple[dict[str, str], dict[str, str]] = await self._kept((CONFIG_MAP, ns, name), read)
        return data

    async def _kept(self, ref: Ref, read: Callable[[], Awaitable[_T]]) -> _T:
        """``read()``'s answer for the object ``ref``, from the payload cache while the watch
        has reported no change of it."""
        if self._payloads is None:
            return await read()
        kept = self._payloads.get(ref)
        if kept is not None:
            return cast(_T, kept)
        self._payloads.begin(ref)
        value: _T | None = None
        try:
            value = await read()
        finally:
            self._payloads.end(ref, value)
        return value

    async def _credential_spec(self, wc: WindowsContainer, name: str) -> str:
        ns, account = wc.metadata.namespace, wc.spec.service_account_name
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:{ns}:{account}",
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}"],
                # The resource's namespace, as the windows-gmsa webhook asks for a pod's: a Role
                # and RoleBinding there can grant `use` (or a ClusterRole and a binding).
                "resourceAttributes": {
                    "namespace": ns,
                    "group": "windows.k8s.io",
                    "resource": "gmsacredentialspecs",
                    "verb": "use",
                    "name": name,
                },
            },
        }
        answer = await self._client.request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            body=review,
            api="subjectaccessreview",
        )
        sar = _decode(answer, _SAR, "SubjectAccessReview")
        assert isinstance(sar, _SAR)
        if not sar.status.allowed:
            await self._check_credential_specs_served(name)
            raise CredentialSpecDeniedError(
                f"service account {ns}/{account} may not use GMSACredentialSpec {name} "
                "(grant it the verb use on that gmsacredentialspecs resource)"
            )
        try:
            body = await self._get(
                f"/apis/{GMSA_GROUP_VERSION}/{GMSA_PLURAL}/{quote(name, safe='')}",
                kind="credential_spec",
                missing=f"GMSACredentialSpec {name} not found",
            )
        except DependencyMissingError:
            await self._check_credential_specs_served(name)
            raise
        gmsa = _decode(body, _GMSA, f"GMSACredentialSpec {name}")
        assert isinstance(gmsa, _GMSA)
        if bytes(gmsa.credspec).strip() in (b"", b"null"):
            raise PermanentError(f"GMSACredentialSpec {name} has no credspec")
        # Compact JSON text, as a credential spec file holds it.
        return msgspec.json.encode(msgspec.json.decode(gmsa.credspec)).decode()

    async def _check_credential_specs_served(self, name: str) -> None:
        """Raise :class:`DependencyMissingError` saying so when the server does not serve
        GMSACredentialSpecs at all (their CRD is not installed): asked only after a credential
        spec was denied or not found, where that is the likelier cause to name."""
        try:
            body = await self._client.request("GET", f"/apis/{GMSA_GROUP_VERSION}", api="discovery")
        except NotFoundError:
            served = False
        else:
            listed = _decode(body, _APIResourceList, f"discovery of {GMSA_GROUP_VERSION}")
            assert isinstance(listed, _APIResourceList)
            served = any(r.name == GMSA_PLURAL for r in listed.resources)
        if not served:
            raise DependencyMissingError(f"GMSACredentialSpec {name}: {GMSA_NOT_SERVED}")

    async def _node(self, name: str) -> NodeFacts:
        loop = asyncio.get_running_loop()
        cached = self._nodes.get(name)
        if cached is not None and loop.time() - cached[0] < NODE_CACHE_SECONDS:
            return cached[1]
        body = await self._get(
            f"/api/v1/nodes/{quote(name, safe='')}",
            kind="node",
            missing=f"Node {name} not found (yet); retrying",
        )
        node = _decode(body, _Node, f"Node {name}")
        assert isinstance(node, _Node)
        facts = node_facts(node, self._defaults)
        self._nodes[name] = (loop.time(), facts)
        return facts


def _secret_value(ns: str, ref: SecretKeyRef, secrets: Mapping[str, Mapping[str, str]]) -> bytes:
    encoded = secrets[ref.secret_name].get(ref.key)
    if encoded is None:
        raise DependencyMissingError(f"Secret {ns}/{ref.secret_name} has no key {ref.key}")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestDecodeError(
            f"Secret {ns}/{ref.secret_name} key {ref.key} is not base64"
        ) from exc


_ConfigData = tuple[Mapping[str, str], Mapping[str, str]]


def _config_value(ns: str, ref: ConfigMapKeyRef, configs: Mapping[str, _ConfigData]) -> bytes:
    data, binary = configs[ref.config_map_name]
    if ref.key in data:
        return data[ref.key].encode()
    if ref.key in binary:
        try:
            return base64.b64decode(binary[ref.key], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RequestDecodeError(
                f"ConfigMap {ns}/{ref.config_map_name} key {ref.key} is not base64"
            ) from exc
    raise DependencyMissingError(f"ConfigMap {ns}/{ref.config_map_name} has no key {ref.key}")
