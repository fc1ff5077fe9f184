"""Leader election on a ``coordination.k8s.io/v1`` Lease, client-go's algorithm.

kubernetes-asyncio ships a leader elector, but it falls short for a controller that must stop
at once when it loses the lease: its calls have no time limit of their own (one hung renew
outlives the renew deadline), it decides expiry from the timestamps in the record (clock skew
between replicas moves the failover), and it writes naive local times. This one follows
client-go's leaderelection instead:

- a candidate takes the Lease only when it has seen the same record unchanged for a whole
  ``lease_duration`` on its *own* monotonic clock (never trusting another replica's clock);
- every attempt is bounded by ``retry_period``, and writes carry the resourceVersion they read
  (a 409 means someone else won this round);
- the leader renews every ``retry_period``; when no renew has succeeded for ``renew_deadline``
  (shorter than the lease, so it gives up before anyone may take over), it has lost;
- on a clean stop the leader releases the Lease (empty holder), so another replica takes over
  without waiting for it to expire.

The mode runs the controller only while :meth:`LeaderElector.run` says it leads and stops
reconciling the moment it does not.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import msgspec

from adapters.kubernetes.client import ConflictError, KubeClient
from controller.errors import NotFoundError, WinspecError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period."""

    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


class _LeaseSpec(msgspec.Struct, rename="camel", omit_defaults=True):
    holder_identity: str | None = None
    lease_duration_seconds: int | None = None
    acquire_time: str | None = None
    renew_time: str | None = None
    lease_transitions: int | None = None


class _LeaseMeta(msgspec.Struct, rename="camel"):
    resource_version: str = ""


class _Lease(msgspec.Struct):
    metadata: _LeaseMeta = msgspec.field(default_factory=_LeaseMeta)
    spec: _LeaseSpec = msgspec.field(default_factory=_LeaseSpec)


def _micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for one Lease; :meth:`run` returns when leadership, once held, is lost."""

    def __init__(
        self,
        client: KubeClient,
        settings: LeaseSettings,
        *,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        if not settings.retry_period < settings.renew_deadline < settings.lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        self._client = client
        self._s = settings
        self._on_change = on_change
        self.leading = asyncio.Event()
        self._observed: _LeaseSpec | None = None
        self._observed_at = 0.0
        self._path = (
            f"/apis/coordination.k8s.io/v1/namespaces/{quote(settings.namespace, safe='')}"
            f"/leases/{quote(settings.name, safe='')}"
        )

    async def run(self) -> None:
        """Acquire the Lease (waiting as long as it takes), then renew it; return as soon as
        it is lost (the caller stops reconciling at once)."""
        loop = asyncio.get_running_loop()
        while True:
            if await self._attempt():
                break
            await asyncio.sleep(self._s.retry_period)
        log.info("became the leader", extra={"lease": self._s.name, "identity": self._s.identity})
        self._set(True)
        last_renew = loop.time()
        try:
            while True:
                await asyncio.sleep(self._s.retry_period)
                if await self._attempt():
                    last_renew = loop.time()
                elif loop.time() - last_renew >= self._s.renew_deadline:
                    log.error("lost the lease; stopping", extra={"lease": self._s.name})
                    return
        finally:
            self._set(False)

    async def release(self) -> None:
        """Give the Lease up (a clean stop): the next candidate need not wait for expiry."""
        if self._observed is None or self._observed.holder_identity != self._s.identity:
            return
        try:
            lease = await self._get()
            if lease is None or lease.spec.holder_identity != self._s.identity:
                return
            lease.spec.holder_identity = ""
            lease.spec.lease_duration_seconds = 1
            await self._put(lease)
        except WinspecError as exc:
            log.warning("could not release the lease", extra={"error": str(exc)})

    def _set(self, leading: bool) -> None:
        if leading:
            self.leading.set()
        else:
            self.leading.clear()
        if self._on_change is not None:
            self._on_change(leading)

    async def _attempt(self) -> bool:
        """One bounded try to acquire or renew; whether this candidate holds the Lease now."""
        try:
            async with asyncio.timeout(self._s.retry_period):
                return await self._try_acquire_or_renew()
        except (TimeoutError, ConflictError):
            return False
        except WinspecError as exc:
            log.warning("leader election attempt failed", extra={"error": str(exc)})
            return False

    async def _try_acquire_or_renew(self) -> bool:
        loop = asyncio.get_running_loop()
        now = _micro_time()
        me = self._s.identity
        lease = await self._get()
        if lease is None:
            spec = _LeaseSpec(
                holder_identity=me,
                lease_duration_seconds=int(self._s.lease_duration),
                acquire_time=now,
                renew_time=now,
                lease_transitions=0,
            )
            await self._create(spec)
            self._observe(spec, loop.time())
            return True
        if self._observed != lease.spec:
            self._observe(lease.spec, loop.time())
        holder = lease.spec.holder_identity or ""
        if holder and holder != me:
            expires = self._observed_at + (lease.spec.lease_duration_seconds or 0)
            if loop.time() < expires:
                return False  # someone else holds it, and we have not seen it expire
        if holder != me:
            lease.spec.lease_transitions = (lease.spec.lease_transitions or 0) + 1
            lease.spec.acquire_time = now
        lease.spec.holder_identity = me
        lease.spec.lease_duration_seconds = int(self._s.lease_duration)
        lease.spec.renew_time = now
        await self._put(lease)
        self._observe(lease.spec, loop.time())
        return True

    def _observe(self, spec: _LeaseSpec, at: float) -> None:
        self._observed = msgspec.structs.replace(spec)
        self._observed_at = at

    async def _get(self) -> _Lease | None:
        try:
            body = await self._client.request("GET", self._path, api="lease_get")
        except NotFoundError:
            return None
        return msgspec.json.decode(body, type=_Lease)

    async def _create(self, spec: _LeaseSpec) -> None:
        collection = self._path.rsplit("/", 1)[0]
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self._s.name, "namespace": self._s.namespace},
            "spec": msgspec.to_builtins(spec),
        }
        await self._client.request("POST", collection, body=body, api="lease_create")

    async def _put(self, lease: _Lease) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self._s.name,
                "namespace": self._s.namespace,
                "resourceVersion": lease.metadata.resource_version,
            },
            "spec": msgspec.to_builtins(lease.spec),
        }
        await self._client.request("PUT", self._path, body=body, api="lease_update")
