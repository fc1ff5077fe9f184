"""The central controller's bundle writer: each bundle goes to the node agent on its node.

:class:`RemoteBundleWriter` implements :class:`~controller.ports.BundleWriter` for keys
``<namespace>/<name>``. The node is the resource's ``spec.nodeName`` (from the source's cache);
the agent on it is found by :class:`AgentLocator`: the agent pod on that node, listed through
the API (the agents' label selector and ``fieldSelector=spec.nodeName=<node>``, a running pod
with a ``podIP``) and reached at ``https://<podIP>:<port>``, the port the pod declares as its
container port named ``https``, else the agent port setting. Once its list+watch of the agent
pods (:meth:`AgentLocator.watcher`) has listed them, the locator follows them: a pod deleted
or recreated changes the node's address as soon as the watch says so (no call goes to a pod
that is gone), and a node's agent appearing or moving re-queues that node's resources
(``on_found``). Until then (or without the watch) the address is listed per node, cached, and
forgotten when a call to it fails. :meth:`RemoteBundleWriter.agents_missing` says, per node
that resources are on, whether the watch finds no agent there (``winspec_delivery_agent_missing``).

Deletion never wedges: a removal that fails because the node's agent cannot be reached is
retried until no call to that agent has succeeded for ``removal_grace`` (the resource is
re-queued for that moment); then, or at once when the Node object no longer exists, the removal
is given up (:class:`~adapters.kubernetes.bundles.BundleAbandonedError`) and the finalizer is
released without it. While it waits, the error says what for and until when.

Isolation: every node has its own semaphore (``per_node`` calls at once) and every call its own
deadline (``node_timeout``, over the client's own retries), so one slow or dead node holds at
most its own resources; they fail with a :class:`~controller.errors.TransientError` naming the
node, and the work queue retries them with backoff while the other nodes' bundles flow.

The agents' certificates are checked against a CA bundle; every call carries the controller's
service-account token, read from its projected file on every attempt (the kubelet rotates it).

Paths: each spec is generated for the node it goes to. :meth:`RemoteBundleWriter.bundle_root`
asks the node's agent where it keeps bundles (``GET /v1/node``, the root as the node names it),
once per agent address, so the payload mounts point into the directory the agent writes.

Status: the digest a node holds is the one its agent answers (its own writer's keyed digest),
never one computed here: :class:`NodeDigestStatus` puts that digest in ``status.digest``, so the
status says which digest the node in ``spec.nodeName`` has.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import aiohttp
import msgspec

from adapters.agentapi.client import AgentClient, ClientPolicy
from adapters.kubernetes.bundles import BundleAbandonedError
from adapters.kubernetes.client import KubeClient
from adapters.kubernetes.reflector import Reflector, WatchSettings
from adapters.kubernetes.status import KeptDigestStatus
from controller.bundle import DRIFT_KINDS, BundleContent, WriteOutcome
from controller.cluster import WindowsContainer
from controller.errors import PermanentError, RequestDecodeError, TransientError
from controller.metrics import ABANDON_AGENT_UNREACHABLE, ABANDON_NODE_DELETED
from controller.ports import SourceHooks, StatusReporter
from controller.winpath import is_absolute

log = logging.getLogger(__name__)
_T = TypeVar("_T")
#: The agent pod's container port of this name, when declared, wins over the port setting.
AGENT_PORT_NAME = "https"


class _PodStatus(msgspec.Struct, kw_only=True):
    phase: str = ""
    pod_ip: str = msgspec.field(name="podIP", default="")


class _PodMeta(msgspec.Struct, kw_only=True):
    name: str = ""
    deletion_timestamp: str | None = msgspec.field(name="deletionTimestamp", default=None)


class _Port(msgspec.Struct, rename="camel", kw_only=True):
    name: str = ""
    container_port: int = 0


class _Container(msgspec.Struct, kw_only=True):
    ports: list[_Port] = msgspec.field(default_factory=list)


class _PodSpec(msgspec.Struct, rename="camel", kw_only=True):
    node_name: str = ""
    containers: list[_Container] = msgspec.field(default_factory=list)

    def port(self, name: str) -> int | None:
        """The container port called ``name`` (None: no container declares it)."""
        for container in self.containers:
            for port in container.ports:
                if port.name == name and 0 < port.container_port < 65536:
                    return port.container_port
        return None


class _Pod(msgspec.Struct, kw_only=True):
    metadata: _PodMeta = msgspec.field(default_factory=_PodMeta)
    spec: _PodSpec = msgspec.field(default_factory=_PodSpec)
    status: _PodStatus = msgspec.field(default_factory=_PodStatus)


class _PodList(msgspec.Struct, kw_only=True):
    items: list[_Pod] = msgspec.field(default_factory=list)


_pod_decoder = msgspec.json.Decoder(_Pod)


def _decode_pod(raw: msgspec.Raw) -> _Pod | None:
    """One pod of the watch (None: it does not decode, and is left out)."""
    try:
        return _pod_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _serving(pod: _Pod) -> bool:
    """A running agent pod with an address, on a node, not being deleted."""
    return bool(
        pod.status.phase == "Running"
        and pod.status.pod_ip
        and pod.spec.node_name
        and pod.metadata.deletion_timestamp is None
    )


@dataclass(frozen=True, slots=True)
class AgentEndpoint:
    """Where the agents run: their pods' namespace and labels, and the port they serve on."""

    namespace: str
    selector: str
    port: int


class AgentLocator:
    """The agent's address for a node, from its pod: followed by a watch once
    :meth:`watcher` runs, else listed and cached until :meth:`forget`."""

    def __init__(
        self,
        client: KubeClient,
        endpoint: AgentEndpoint,
        *,
        on_found: Callable[[str], None] | None = None,
    ) -> None:
        """``on_found(node)`` is called when the watch finds a node's agent at a new address
        (not for the first list: everything is reconciled after start anyway)."""
        self._client = client
        self._endpoint = endpoint
        self._on_found = on_found
        self._cache: dict[str, str] = {}
        #: node -> pod name -> pod, from the watch; None until it has listed.
        self._pods: dict[str, dict[str, _Pod]] | None = None
        #: Whether the watch has listed and works: the cache is then what it says, else
        #: (before, or while it fails) each node's pod is listed when needed.
        self._following = False

    def known(self) -> dict[str, str]:
        """Every node whose agent was found: node to base URL."""
        return dict(self._cache)

    def serving_nodes(self) -> set[str] | None:
        """The nodes with a running agent pod, as the watch last saw them (kept while it
        fails: its last word); None until it has listed."""
        if self._pods is None:
            return None
        return {node for node, pods in self._pods.items() if any(map(_serving, pods.values()))}

    def forget(self, node: str) -> None:
        """Drop the cached address (a call to it failed; the pod may have moved). A working
        watch keeps the addresses itself."""
        if not self._following:
            self._cache.pop(node, None)

    def watcher(self, settings: WatchSettings, hooks: SourceHooks | None = None) -> Reflector:
        """A list+watch of the agent pods keeping the addresses current (run it)."""
        e = self._endpoint
        outer = hooks or SourceHooks()

        def ready(ok: bool) -> None:
            if not ok:
                self._following = False  # failing: pods are listed per node meanwhile
            if outer.on_ready is not None:
                outer.on_ready(ok)

        return Reflector(
            self._client,
            path=f"/api/v1/namespaces/{quote(e.namespace, safe='')}/pods",
            what="agent pods",
            on_list=self._listed,
            on_event=self._changed,
            settings=settings,
            hooks=SourceHooks(on_event=outer.on_event, on_restart=outer.on_restart, on_ready=ready),
            label_selector=e.selector,
            decode=_decode_pod,
        )

    def _listed(self, pods: list[_Pod | None]) -> None:
        first = self._pods is None
        self._pods = {}
        for pod in pods:
            if pod is not None and pod.spec.node_name:
                self._pods.setdefault(pod.spec.node_name, {})[pod.metadata.name] = pod
        self._resume(notify=not first)

    def _resume(self, *, notify: bool) -> None:
        """Follow the watch (again): every node's address from the watched pods."""
        assert self._pods is not None
        self._following = True
        for node in sorted(set(self._cache) | set(self._pods)):
            self._follow(node, notify=notify)

    def _changed(self, event_type: str, raw: msgspec.Raw) -> None:
        pod = _decode_pod(raw)
        if pod is None or not pod.spec.node_name or self._pods is None:
            return
        node = pod.spec.node_name
        on_node = self._pods.setdefault(node, {})
        if event_type == "DELETED":
            on_node.pop(pod.metadata.name, None)
        else:
            on_node[pod.metadata.name] = pod
        if not on_node:
            del self._pods[node]
        if self._following:
            self._follow(node, notify=True)
        else:
            self._resume(notify=True)  # the watch works again (resumed where it stopped)

    def _follow(self, node: str, *, notify: bool) -> None:
        """Set the node's address from the watched pods; tell of a new one."""
        assert self._pods is not None
        serving = sorted(
            (p for p in self._pods.get(node, {}).values() if _serving(p)),
            key=lambda p: p.metadata.name,
        )
        url = self._url(serving[0]) if serving else None
        if url == self._cache.get(node):
            return
        if url is None:
            del self._cache[node]
            log.info("node has no running agent pod", extra={"node": node})
            return
        self._cache[node] = url
        log.info("agent pod found", extra={"node": node, "pod": serving[0].metadata.name})
        if notify and self._on_found is not None:
            self._on_found(node)

    async def _running(self, node: str | None) -> list[_Pod]:
        """The running agent pods (on ``node``, or everywhere), by name."""
        e = self._endpoint
        query = [("labelSelector", e.selector)]
        if node is not None:
            query.append(("fieldSelector", f"spec.nodeName={node}"))
        data = await self._client.request(
            "GET",
            f"/api/v1/namespaces/{quote(e.namespace, safe='')}/pods",
            query=query,
            api="agent_pod_list",
        )
        try:
            pods = msgspec.json.decode(data, type=_PodList).items
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise TransientError(f"unreadable agent pod list: {exc}") from None
        return sorted(filter(_serving, pods), key=lambda p: p.metadata.name)

    async def nodes(self) -> list[str]:
        """Every node with a running agent pod (its address cached)."""
        if self._following:
            return sorted(self._cache)
        found: dict[str, str] = {}
        for pod in await self._running(None):
            found.setdefault(pod.spec.node_name, self._url(pod))
        self._cache.update(found)
        return sorted(found)

    def _url(self, pod: _Pod) -> str:
        ip = pod.status.pod_ip
        host = f"[{ip}]" if ":" in ip else ip
        port = pod.spec.port(AGENT_PORT_NAME) or self._endpoint.port
        return f"https://{host}:{port}"

    async def base_url(self, node: str) -> str:
        """``https://<podIP>:<port>`` of the running agent pod on ``node``."""
        cached = self._cache.get(node)
        if cached is not None:
            return cached
        e = self._endpoint
        ready = [] if self._following else await self._running(node)
        if not ready:
            raise TransientError(
                f"node {node}: no running agent pod ({e.selector!r} in namespace {e.namespace})"
            )
        url = self._url(ready[0])
        self._cache[node] = url
        return url


def token_reader(path: Path) -> Callable[[], str]:
    """A callable reading the projected token file anew on every call (it is rotated)."""

    def read() -> str:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TransientError(f"cannot read the token file {path}: {exc.strerror}") from None
        if not token:
            raise TransientError(f"the token file {path} is empty")
        return token

    return read


def agent_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """A client context verifying agents against ``ca_file`` (else the system's CAs)."""
    # Agents are reached by pod IP: their certificates must name it (an IP SAN).
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """Per-node isolation and the client's retries."""

    #: Calls at once to one node's agent.
    per_node: int = 4
    #: Deadline of one delivery to one node, retries included, in seconds.
    node_timeout: float = 60.0
    #: How long a removal waits for a node whose agent cannot be reached, in seconds.
    removal_grace: float = 600.0
    client: ClientPolicy = field(default_factory=ClientPolicy)


class AgentUnreachableError(TransientError):
    """A removal waits for the node's agent (until the grace period ends)."""

    reason = "AgentUnreachable"


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RemoteBundleWriter:
    """A :class:`~controller.ports.BundleWriter` delivering to each resource's node agent."""

    def __init__(
        self,
        locator: AgentLocator,
        *,
        cache: Mapping[str, WindowsContainer | RequestDecodeError],
        token: Callable[[], str],
        ssl_context: ssl.SSLContext,
        policy: DeliveryPolicy | None = None,
        server_name: str | None = None,
        on_retry: Callable[[str], None] | None = None,
        on_delivery: Callable[[str, bool], None] | None = None,
        node_deleted: Callable[[str], bool] = lambda node: False,
        enqueue_after: Callable[[str, float], None] | None = None,
    ) -> None:
        """``on_retry`` is called with the API name (``agent_put``, ``agent_delete``,
        ``agent_list``, ``agent_node``) each time a call to an agent is retried;
        ``on_delivery`` with the node and whether it succeeded each time a call to a node's
        agent (retries included) ends, other than by cancellation; ``node_deleted(node)`` says
        whether a Node object is known to be gone; ``enqueue_after(key, seconds)`` brings a
        removal back when its grace period ends."""
        self._locator = locator
        self._node_deleted = node_deleted
        self._enqueue_after = enqueue_after
        #: node -> (monotonic, wall) time of the first failed call since the last success.
        self._unreachable: dict[str, tuple[float, float]] = {}
        self._on_retry = on_retry
        self._on_delivery = on_delivery
        self._server_name = server_name
        self._cache = cache
        self._token = token
        self._ssl = ssl_context
        self._policy = policy or DeliveryPolicy()
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._session: aiohttp.ClientSession | None = None
        #: key -> (node, digest the node's agent holds), for status and resync.
        self.delivered: dict[str, tuple[str, str]] = {}
        #: node -> (the agent's address, the bundle root it reported).
        self._roots: dict[str, tuple[str, str]] = {}

    @property
    def locator(self) -> AgentLocator:
        """Where the agents are found (its :meth:`AgentLocator.watcher` is run beside)."""
        return self._locator

    def _client(self, base_url: str) -> AgentClient:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return AgentClient(
            base_url,
            token=self._token,
            ssl_context=self._ssl,
            policy=self._policy.client,
            session=self._session,
            server_name=self._server_name,
            on_retry=self._on_retry,
        )

    def node_of(self, key: str) -> str | None:
        """The node of the resource at ``key`` (None: not in the cache)."""
        wc = self._cache.get(key)
        if isinstance(wc, WindowsContainer):
            return wc.spec.node_name
        delivered = self.delivered.get(key)
        return delivered[0] if delivered else None

    async def _on_node(
        self, node: str, what: str, call: Callable[[AgentClient], Awaitable[_T]]
    ) -> _T:
        """:meth:`_call_node`, its success or failure reported (not a cancellation)."""
        try:
            answer = await self._call_node(node, what, call)
        except Exception:
            if self._on_delivery is not None:
                self._on_delivery(node, False)
            raise
        if self._on_delivery is not None:
            self._on_delivery(node, True)
        return answer

    async def _call_node(
        self, node: str, what: str, call: Callable[[AgentClient], Awaitable[_T]]
    ) -> _T:
        """Run one agent call for ``node`` under its semaphore and deadline."""
        limit = self._limits.setdefault(node, asyncio.Semaphore(self._policy.per_node))
        try:
            async with asyncio.timeout(self._policy.node_timeout), limit:
                client = self._client(await self._locator.base_url(node))
                result = await call(client)
        except PermanentError:
            self._unreachable.pop(node, None)  # the agent answered
            raise
        except TimeoutError:
            self._failed(node)
            raise TransientError(
                f"node {node}: {what} took longer than {self._policy.node_timeout:g}s"
            ) from None
        except TransientError as exc:
            self._failed(node)
            text = str(exc).removeprefix(f"node {node}: ")
            raise TransientError(f"node {node}: {what} failed: {text}") from None
        self._unreachable.pop(node, None)
        return result

    def _failed(self, node: str) -> None:
        """A call to the node's agent failed: forget its address, note since when."""
        self._locator.forget(node)
        self._unreachable.setdefault(node, (asyncio.get_running_loop().time(), time.time()))

    async def bundle_root(self, node: str) -> str:
        """The bundle root the agent on ``node`` reports, as that node names it; asked again
        when the agent's address changes (a new pod)."""

        async def ask(client: AgentClient) -> str:
            known = self._roots.get(node)
            if known is not None and known[0] == client.base_url:
                return known[1]
            root = (await client.node_info()).bundle_root
            if not (is_absolute(root) and root.isprintable()):
                raise TransientError(f"the agent reports an unusable bundle root {root[:300]!r}")
            self._roots[node] = (client.base_url, root)
            return root

        return await self._on_node(node, "asking for its bundle root", ask)

    def agents_missing(self) -> dict[str, bool]:
        """Every node that resources are on, whether its agent is missing: the watch of
        agent pods finds no running one there. Nodes known to be deleted are left out; empty
        until that watch has listed."""
        serving = self._locator.serving_nodes()
        if serving is None:
            return {}
        nodes = {
            wc.spec.node_name for wc in self._cache.values() if isinstance(wc, WindowsContainer)
        }
        return {n: n not in serving for n in sorted(nodes) if n and not self._node_deleted(n)}

    async def write(self, bundle_id: str, content: BundleContent) -> bool | WriteOutcome:
        """Deliver the bundle to its node's agent; False when the agent had it already, intact
        (a :class:`WriteOutcome` when the agent repaired drift of it)."""
        node = self.node_of(bundle_id)
        if node is None:
            raise TransientError(f"{bundle_id}: its resource is not known yet (no node)")
        state = await self._on_node(
            node, f"delivering {bundle_id}", lambda c: c.put(bundle_id, content.files)
        )
        self.delivered[bundle_id] = (node, state.digest)
        drift = frozenset(state.drift) & frozenset(DRIFT_KINDS)
        return WriteOutcome(changed=state.changed, drift=drift) if drift else bool(state.changed)

    async def remove(self, bundle_id: str) -> bool:
        """Remove the bundle from its node's agent; False when it had none (or no node known)."""
        node = self.node_of(bundle_id)
        if node is None:
            return False
        try:
            removed = await self._delete_on(node, bundle_id)
        except TransientError as exc:
            raise self._waiting(bundle_id, node, str(exc)) from None
        self.delivered.pop(bundle_id, None)
        return bool(removed)

    def _waiting(self, key: str, node: str, error: str) -> TransientError:
        """What a failed removal is: given up (the Node is gone, or its agent unreachable for
        the grace period), or still waiting (re-queued for when the grace period ends)."""
        grace = self._policy.removal_grace
        now = asyncio.get_running_loop().time()
        since, since_wall = self._unreachable.get(node, (now, time.time()))
        remaining = since + grace - now
        if self._node_deleted(node):
            cause, why = ABANDON_NODE_DELETED, "the Node no longer exists"
        elif remaining <= 0:
            cause = ABANDON_AGENT_UNREACHABLE
            why = f"no agent there answered for {grace:g}s, the removal grace period"
        else:
            if self._enqueue_after is not None:
                self._enqueue_after(key, remaining)
            return AgentUnreachableError(
                f"deleting: waiting for the agent on node {node} to remove the bundle ({error}); "
                f"without an answer by {_utc(since_wall + grace)} (--agent-removal-grace "
                f"{grace:g}s), or once the Node is deleted, the finalizer is released and the "
                "bundle left on the node"
            )
        self.delivered.pop(key, None)
        return BundleAbandonedError(
            f"the bundle could not be removed from node {node}: {why} ({error})",
            node=node,
            cause=cause,
        )

    async def _delete_on(self, node: str, bundle_id: str) -> bool:
        return await self._on_node(node, f"removing {bundle_id}", lambda c: c.delete(bundle_id))

    async def list_ids(self) -> list[str]:
        """The ids delivered in this run (an agent's own list comes from :meth:`node_bundles`)."""
        return sorted(self.delivered)

    async def agent_nodes(self) -> list[str]:
        """Every node with a running agent, and every node delivered to in this run."""
        return sorted(set(await self._locator.nodes()) | {n for n, _ in self.delivered.values()})

    async def node_bundles(self, node: str) -> dict[str, str]:
        """Every bundle the agent on ``node`` holds: id to its digest."""
        return await self._on_node(node, "listing bundles", lambda c: c.list_bundles())

    async def resync(
        self,
        nodes: Iterable[str],
        enqueue: Callable[[str], None],
        owns: Callable[[str], bool] = lambda key: True,
    ) -> tuple[list[str], list[str]]:
        """Compare each node's bundles with the desired state: delete orphans (bundles of
        resources gone or moved to another node), enqueue keys missing or differing there.

        Only keys ``owns`` accepts are orphans (another instance may watch other namespaces).
        Returns (orphans deleted, keys enqueued). A node that fails is skipped (logged).
        """
        removed: list[str] = []
        queued: list[str] = []
        desired: dict[str, set[str]] = {}
        for key, wc in self._cache.items():
            if isinstance(wc, WindowsContainer) and wc.metadata.deletion_timestamp is None:
                desired.setdefault(wc.spec.node_name, set()).add(key)
        for node in sorted(set(nodes) | set(desired)):
            try:
                held = await self.node_bundles(node)
            except TransientError as exc:
                log.warning("resync skipped a node", extra={"node": node, "error": str(exc)})
                continue
            wanted = desired.get(node, set())
            for key in sorted(set(held) - wanted):
                if key in self._cache or not owns(key):
                    continue  # a resource still there (being deleted): its reconcile removes it
                try:
                    await self._delete_on(node, key)
                except (TransientError, PermanentError) as exc:
                    log.warning("orphan not removed", extra={"key": key, "error": str(exc)})
                    continue
                removed.append(key)
            for key in sorted(wanted):
                known = self.delivered.get(key)
                if key not in held or known is None or known != (node, held[key]):
                    enqueue(key)
                    queued.append(key)
        return removed, queued

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class NodeDigestStatus(KeptDigestStatus):
    """A :class:`~controller.ports.StatusReporter` reporting the digest the node's agent holds."""

    def __init__(self, inner: StatusReporter, writer: RemoteBundleWriter) -> None:
        super().__init__(inner, lambda key: (writer.delivered.get(key) or ("", None))[1])


__all__ = [
    "AgentEndpoint",
    "AgentLocator",
    "DeliveryPolicy",
    "NodeDigestStatus",
    "RemoteBundleWriter",
    "agent_ssl_context",
    "token_reader",
]
