"""Leader election on a ``coordination.k8s.io/v1`` Lease, client-go's algorithm.

kubernetes-asyncio ships a leader elector, but it falls short for a controller that must stop
at once when it loses the lease: its calls have no time limit of their own (one hung renew
outlives the renew deadline), it decides expiry from the timestamps in the record (clock skew
between replicas moves the failover), and it writes naive local times. This one follows
client-go's leaderelection instead:

- a candidate takes the Lease only when it has seen the same record unchanged for a whole
  ``lease_duration`` on its *own* monotonic clock, timed from when the change was observed
  (never trusting another replica's clock);
- writes carry the resourceVersion they read (a 409 means someone else won this round);
- the leader renews every ``retry_period``; when no renew has succeeded for ``renew_deadline``
  (shorter than the lease, so it gives up before anyone may take over), it has lost. Every
  request is cut off at that deadline (and at a retry period while campaigning), so a hung
  connection cannot stretch it;
- a Lease that names another holder while this replica leads is lost at once (someone took
  it over, or overwrote it): never two leaders until the renew deadline runs out;
- on a clean stop the leader releases the Lease (empty holder), so another replica takes over
  without waiting for it to expire; a 409 there (a renew cancelled in flight that landed after
  the read) is read again and retried.

The mode runs the controller only while :meth:`LeaderElector.run` says it leads and stops
reconciling the moment it does not.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
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


class _Outcome(enum.Enum):
    OURS = "ours"  # acquired or renewed
    HELD = "held"  # another identity holds it (unexpired, or at all while we lead)
    ERROR = "error"  # no answer that settles it: try again


#: Reads and writes a release makes when the Lease keeps changing under it (409s).
_CONFLICT_REREADS = 3
#: A holder's leaseDurationSeconds beyond this (or missing, or not positive) is not believed.
_MAX_LEASE_SECONDS = 3600


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
            started = loop.time()
            if await self._attempt(started + self._s.retry_period) is _Outcome.OURS:
                break
            await asyncio.sleep(self._s.retry_period)
        log.info("became the leader", extra={"lease": self._s.name, "identity": self._s.identity})
        self._set(True)
        # The deadline counts from when the last successful renew was *sent*: the server
        # wrote its renewTime no earlier, so this replica gives up no later than it should.
        renewed_at = started
        try:
            while True:
                deadline = renewed_at + self._s.renew_deadline
                await asyncio.sleep(min(self._s.retry_period, max(deadline - loop.time(), 0)))
                started = loop.time()
                if started >= deadline:
                    log.error(
                        "lost the lease: no renew within the renew deadline; stopping",
                        extra={"lease": self._s.name},
                    )
                    return
                outcome = await self._attempt(deadline)
                if outcome is _Outcome.OURS:
                    renewed_at = started
                elif outcome is _Outcome.HELD:
                    log.error(
                        "lost the lease: another replica holds it; stopping",
                        extra={"lease": self._s.name, "holder": self._holder()},
                    )
                    return
        finally:
            self._set(False)

    async def release(self) -> None:
        """Give the Lease up (a clean stop): the next candidate need not wait for expiry.

        A 409 means the Lease changed since it was read (typically a renew cancelled in flight
        that landed late): it is read again, so one conflict never leaves the Lease held."""
        if self._observed is None or self._observed.holder_identity != self._s.identity:
            return
        try:
            async with asyncio.timeout(self._s.renew_deadline):
                for _ in range(_CONFLICT_REREADS):
                    lease = await self._get()
                    if lease is None or lease.spec.holder_identity != self._s.identity:
                        return
                    lease.spec.holder_identity = ""
                    lease.spec.lease_duration_seconds = 1
                    try:
                        await self._put(lease)
                    except ConflictError:
                        continue
                    log.info("released the lease", extra={"lease": self._s.name})
                    return
                log.warning("could not release the lease: it kept changing")
        except (TimeoutError, WinspecError, msgspec.DecodeError) as exc:
            log.warning("could not release the lease", extra={"error": str(exc)})

    def _set(self, leading: bool) -> None:
        if leading:
            self.leading.set()
        else:
            self.leading.clear()
        if self._on_change is not None:
            self._on_change(leading)

    def _holder(self) -> str:
        return (self._observed.holder_identity or "") if self._observed is not None else ""

    async def _attempt(self, deadline: float) -> _Outcome:
        """One try to acquire or renew, cut off at ``deadline`` (loop time)."""
        try:
            async with asyncio.timeout_at(deadline):
                return await self._try_acquire_or_renew()
        except (TimeoutError, ConflictError):
            return _Outcome.ERROR
        except (WinspecError, msgspec.DecodeError) as exc:
            log.warning("leader election attempt failed", extra={"error": str(exc)})
            return _Outcome.ERROR

    async def _try_acquire_or_renew(self) -> _Outcome:
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
            return _Outcome.OURS
        if self._observed != lease.spec:
            # Timed from when the answer arrived, on this process's clock.
            self._observe(lease.spec, loop.time())
        holder = lease.spec.holder_identity or ""
        if holder and holder != me:
            if self.leading.is_set():
                return _Outcome.HELD  # taken from us: lost now, whatever its timing says
            if loop.time() < self._observed_at + self._duration_of(lease.spec):
                return _Outcome.HELD  # someone else holds it, and we have not seen it expire
        if holder != me:
            lease.spec.lease_transitions = (lease.spec.lease_transitions or 0) + 1
            lease.spec.acquire_time = now
        lease.spec.holder_identity = me
        lease.spec.lease_duration_seconds = int(self._s.lease_duration)
        lease.spec.renew_time = now
        await self._put(lease)
        self._observe(lease.spec, loop.time())
        return _Outcome.OURS

    def _duration_of(self, spec: _LeaseSpec) -> float:
        """The holder's promised duration; ours when its record has none that makes sense."""
        value = spec.lease_duration_seconds
        if value is not None and 0 < value <= _MAX_LEASE_SECONDS:
            return float(value)
        return self._s.lease_duration

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
