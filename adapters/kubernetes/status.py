"""Cluster mode's status reporter: conditions, digest and observedGeneration, plus Events.

After every reconcile of a WindowsContainer the resource's status says what happened, in
three conditions (each ``True`` or ``False`` with a CamelCase reason and a message):

============== ======================================================================
SpecGenerated  the request was resolved and the generator accepted it (else the
               generator's exact rule message, or the missing dependency)
BundleWritten  the bundle on disk has the current content (``Written``/``UpToDate``)
Ready          both: the bundle at ``status.digest`` is the one for this generation
============== ======================================================================

A resource being deleted gets a status only when removing its bundle fails: ``BundleWritten``
and ``Ready`` ``False`` saying what the deletion waits for (``SpecGenerated`` is left as it was).

``observedGeneration`` is the generation that was resolved (not whatever the cache holds by
the time the status is written). ``status.digest`` is the digest of the bundle on disk: a
failure keeps the previous one, since the previous bundle stays. It is the digest its writer
keeps in ``.digest`` (:class:`KeptDigestStatus`): an HMAC under the bundle root's stored key
(the node agent's, with central delivery), so a restart over unchanged bundles writes no status
at all, and it tells nothing about the payloads it covers.

The status is written through the ``status`` subresource with a JSON merge patch that carries
the resourceVersion it was computed from; a 409 re-reads the object and tries again. A status
that would not change is not written at all (a no-op update costs no write). A permanent
failure also gets one core/v1 ``Warning`` Event, when its message first appears (not on every
reconcile that meets it again; an in-memory record covers failures whose status could not be
written). Messages are the errors' own texts, which name objects and keys but never carry
secret or credential spec content.

A resource whose spec does not decode (its CRD changed under it) is reported on through its
metadata and status, decoded on their own (:class:`~controller.cluster.InvalidObjectError`):
reason ``InvalidSpec``, the field named. A server that refuses to store any write to such an
object (Kubernetes 1.20 validates the whole object, spec included, on a status write) leaves the
Event as the only record; the refusal is logged, not retried.
"""

from __future__ import annotations

import datetime
import logging
import socket
from collections.abc import Callable, Mapping
from urllib.parse import quote

import msgspec

from adapters.kubernetes.client import (
    MERGE_PATCH,
    ConflictError,
    KubeClient,
    windows_container_path,
)
from controller.cluster import (
    API_VERSION,
    BUNDLE_WRITTEN,
    GROUP,
    KIND,
    READY,
    SPEC_GENERATED,
    Condition,
    InvalidObjectError,
    ObjectMeta,
    WindowsContainer,
    WindowsContainerStatus,
    decode_windows_container,
)
from controller.errors import NotFoundError, PermanentError, RequestDecodeError
from controller.ports import Stage, StatusReporter

log = logging.getLogger(__name__)

COMPONENT = "winspec"
_MAX_MESSAGE = 1024
_CONFLICT_RETRIES = 5
#: How many keys' last Events are remembered; past this the oldest is forgotten.
_MAX_EVENTED = 10_000


#: What status is written to: a decoded object, or the metadata and status of one that is not.
_Target = WindowsContainer | InvalidObjectError


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, ok: bool, reason: str, message: str) -> Condition:
    return Condition(
        type=kind, status="True" if ok else "False", reason=reason, message=message[:_MAX_MESSAGE]
    )


def desired_conditions(
    *, ok: bool, message: str, stage: Stage, reason: str, digest: str | None = None
) -> list[Condition]:
    """The three conditions for one reconcile's outcome (without times or generations).

    Success messages do not say whether this reconcile wrote or found the bundle up to date:
    a reconcile that changes nothing must not change the status either.
    """
    if ok:
        _, _, warnings = message.partition("; warnings: ")
        suffix = f"; warnings: {warnings}" if warnings else ""
        written = f"bundle {digest[:12]} is on disk" if digest else "bundle is on disk"
        return [
            _condition(SPEC_GENERATED, True, "Generated", "the spec was generated" + suffix),
            _condition(BUNDLE_WRITTEN, True, "Written", written),
            _condition(READY, True, "BundleReady", "the bundle is current" + suffix),
        ]
    if stage == "remove":
        # An object being deleted: what its deletion waits for (its spec is not at issue).
        return [
            _condition(BUNDLE_WRITTEN, False, reason, message),
            _condition(READY, False, reason, message),
        ]
    if stage in ("resolve", "generate"):
        return [
            _condition(SPEC_GENERATED, False, reason, message),
            _condition(BUNDLE_WRITTEN, False, "SpecNotGenerated", "no spec to write"),
            _condition(READY, False, reason, message),
        ]
    return [
        _condition(SPEC_GENERATED, True, "Generated", "the spec was generated"),
        _condition(BUNDLE_WRITTEN, False, reason, message),
        _condition(READY, False, reason, message),
    ]


def merge_status(
    current: WindowsContainerStatus,
    conditions: list[Condition],
    *,
    generation: int,
    digest: str | None,
) -> WindowsContainerStatus:
    """The new status: conditions keep their transition time while their status holds."""
    previous = {c.type: c for c in current.conditions}
    now = ""  # read once, when a condition changes: a restart's reconciles change none
    merged: list[Condition] = []
    for cond in conditions:
        old = previous.get(cond.type)
        if old is not None and old.status == cond.status:
            since = old.last_transition_time
        else:
            since = now = now or _now()
        merged.append(
            Condition(
                type=cond.type,
                status=cond.status,
                reason=cond.reason,
                message=cond.message,
                observed_generation=generation,
                last_transition_time=since,
            )
        )
    # Conditions others wrote (types winspec does not own) are kept as they are.
    owned = {c.type for c in conditions}
    merged += [c for c in current.conditions if c.type not in owned]
    return WindowsContainerStatus(
        observed_generation=generation,
        digest=digest if digest is not None else current.digest,
        conditions=merged,
    )


def _same(a: WindowsContainerStatus, b: WindowsContainerStatus) -> bool:
    """Equal but for transition times (which only change with a condition's status)."""

    def strip(s: WindowsContainerStatus) -> tuple[object, ...]:
        return (
            s.observed_generation,
            s.digest,
            tuple(
                (c.type, c.status, c.reason, c.message, c.observed_generation) for c in s.conditions
            ),
        )

    return strip(a) == strip(b)


class StatusWriter:
    """A :class:`~controller.ports.StatusReporter` writing WindowsContainer status."""

    def __init__(
        self,
        client: KubeClient,
        *,
        cache: Mapping[str, WindowsContainer | RequestDecodeError],
        generations: Mapping[str, int],
        remember: Callable[[bytes], None],
        instance: str | None = None,
    ) -> None:
        self._client = client
        self._cache = cache
        self._generations = generations
        self._remember = remember
        self._instance = instance or socket.gethostname()
        #: key -> (uid, message) of the last Event, so a failure whose status cannot be
        #: written still gets one Event, not one per reconcile (insertion-ordered: oldest first).
        self._evented: dict[str, tuple[str, str]] = {}

    async def report(
        self,
        key: str,
        *,
        ok: bool,
        message: str,
        stage: Stage = "done",
        reason: str = "",
        digest: str | None = None,
        permanent: bool = False,
    ) -> None:
        """Write the outcome into the resource's status (and an Event for a new permanent
        failure, or a success with a reason: drift repaired). A resource that is gone gets
        nothing; one being deleted only what its deletion waits for (a removal that failed).
        One whose spec does not decode is reported on through its metadata; when the server
        refuses any write to it as stored (its CRD now rejects it), the Event is all there is."""
        wc = self._cache.get(key)
        if not isinstance(wc, WindowsContainer | InvalidObjectError):
            return
        if wc.metadata.deletion_timestamp is not None and (ok or stage != "remove"):
            return
        generation = self._generations.get(key, wc.metadata.generation)
        conditions = desired_conditions(
            ok=ok, message=message, stage=stage, reason=reason or "Failed", digest=digest
        )
        ready_before = next((c for c in wc.status.conditions if c.type == READY), None)
        for attempt in range(_CONFLICT_RETRIES):
            status = merge_status(
                wc.status, conditions, generation=generation, digest=digest if ok else None
            )
            if _same(status, wc.status):
                break
            try:
                await self._patch(wc, status)
                break
            except NotFoundError:
                return  # deleted meanwhile
            except ConflictError:
                if attempt == _CONFLICT_RETRIES - 1:
                    raise
                wc = await self._reread(wc)
            except PermanentError:
                if not isinstance(wc, InvalidObjectError):
                    raise
                # Not the server's message: it may quote the stored spec's values.
                log.warning(
                    "status not written: the server refuses the object as it is stored",
                    extra={"key": key},
                )
                break
        if not permanent:
            # The failure is over (or another one stands): its return deserves an Event again.
            self._evented.pop(key, None)
            if ok and reason:
                # A success worth telling (drift of the bundle on disk repaired): each one.
                await self.event(wc.metadata, reason, message)
            return
        text = message[:_MAX_MESSAGE]
        seen = (wc.metadata.uid, text)
        if (ready_before is None or ready_before.message != text) and self._evented.get(
            key
        ) != seen:
            self._evented.pop(key, None)
            self._evented[key] = seen
            if len(self._evented) > _MAX_EVENTED:
                del self._evented[next(iter(self._evented))]
            await self.event(wc.metadata, reason or "Failed", message)

    def _path(self, wc: _Target) -> str:
        return windows_container_path(wc.metadata.namespace, wc.metadata.name)

    async def _patch(self, wc: _Target, status: WindowsContainerStatus) -> None:
        body = {
            "metadata": {"resourceVersion": wc.metadata.resource_version},
            "status": msgspec.to_builtins(status),
        }
        answer = await self._client.request(
            "PATCH",
            self._path(wc) + "/status",
            body=body,
            content_type=MERGE_PATCH,
            api="status_patch",
        )
        self._remember(answer)

    async def _reread(self, wc: _Target) -> _Target:
        body = await self._client.request("GET", self._path(wc), api="resource_get")
        self._remember(body)
        try:
            return decode_windows_container(body)
        except InvalidObjectError as exc:
            return exc

    async def event(self, meta: ObjectMeta, reason: str, message: str) -> None:
        """Record one core/v1 ``Warning`` Event about the object (best effort: logged when
        it cannot be created)."""
        now = _now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.name}.", "namespace": meta.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta.name,
                "namespace": meta.namespace,
                "uid": meta.uid,
                "resourceVersion": meta.resource_version,
            },
            "reason": reason,
            "message": message[:_MAX_MESSAGE],
            "type": "Warning",
            "source": {"component": COMPONENT},
            "reportingComponent": f"{GROUP}/{COMPONENT}",
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._client.request(
                "POST",
                f"/api/v1/namespaces/{quote(meta.namespace, safe='')}/events",
                body=event,
                api="event_create",
            )
        except Exception as exc:  # an Event is best effort; the status already says it
            log.warning(
                "could not record an event",
                extra={
                    "key": f"{meta.namespace}/{meta.name}",
                    "reason": reason,
                    "error": str(exc),
                },
            )


class KeptDigestStatus:
    """A :class:`~controller.ports.StatusReporter` reporting the digest the bundle's writer
    keeps (``kept(key)``: in ``.digest``, under a stored key) in place of the reconciler's,
    which is keyed per process and would change with every restart."""

    def __init__(self, inner: StatusReporter, kept: Callable[[str], str | None]) -> None:
        self._inner = inner
        self._kept = kept

    async def report(
        self,
        key: str,
        *,
        ok: bool,
        message: str,
        stage: Stage = "done",
        reason: str = "",
        digest: str | None = None,
        permanent: bool = False,
    ) -> None:
        """Pass the outcome on, with the kept digest (none after a failure: the previous
        one stays)."""
        await self._inner.report(
            key,
            ok=ok,
            message=message,
            stage=stage,
            reason=reason,
            digest=self._kept(key) if ok else None,
            permanent=permanent,
        )
