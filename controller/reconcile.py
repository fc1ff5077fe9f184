"""The reconciler every mode shares: from a key to a bundle on disk, through the ports.

It reads the current state of the key (the resolver), generates the spec, and writes the
bundle only if its content changed (the writer decides and says so); a key whose object is
gone has its bundle removed. It knows nothing of Docker or Kubernetes: the modes differ only
in the resolver, writer and status reporter they plug in. Retries are not its business: it
raises, and the loop (:mod:`controller.loop`) decides.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from controller.bundle import BundleContent, build_bundle, check_bundle_id, drift_of
from controller.errors import PermanentError, WinspecError, WithdrawError, reason_of
from controller.generate import generate
from controller.loop import Result
from controller.metrics import BUNDLE_REMOVED, BUNDLE_UNCHANGED, BUNDLE_WRITTEN, Metrics
from controller.ports import BundleWriter, RequestResolver, Stage, StatusReporter

_log = logging.getLogger(__name__)

#: The reason of a success worth an Event: the bundle on disk had drifted and was rewritten.
DRIFT_REPAIRED = "BundleDriftRepaired"


class BundleReconciler:
    """Reconciles one key: resolve, generate, write (or remove) its bundle, report."""

    def __init__(
        self,
        *,
        resolver: RequestResolver,
        writer: BundleWriter,
        metrics: Metrics,
        status: StatusReporter | None = None,
        check_key: Callable[[str], object] = check_bundle_id,
    ) -> None:
        self._resolver = resolver
        # Docker mode's keys are bundle ids; cluster mode's are <namespace>/<name>.
        self._check_key = check_key
        self._writer = writer
        self._status = status
        self._written = metrics.bundles_written.labels(result=BUNDLE_WRITTEN)
        self._unchanged = metrics.bundles_written.labels(result=BUNDLE_UNCHANGED)
        self._removed = metrics.bundles_written.labels(result=BUNDLE_REMOVED)
        self._write_seconds = metrics.bundle_write_seconds
        self._drift = metrics.bundle_drift

    async def reconcile(self, key: str) -> Result:
        """Bring the bundle of ``key`` in line with the current state of its object."""
        # An id that is not a container id or object name never becomes a path.
        self._check_key(key)
        progress = _Progress()
        try:
            message = await self._reconcile(key, progress)
        except Exception as exc:
            if isinstance(exc, PermanentError | WithdrawError):
                await self._remove_stale(key)
            if self._status is not None:
                await self._status.report(
                    key,
                    ok=False,
                    message=_user_message(exc),
                    stage=progress.stage,
                    reason=reason_of(exc),
                    digest=progress.digest,
                    permanent=isinstance(exc, PermanentError),
                )
            raise
        if message is None:
            return Result(gone=True)
        if self._status is not None:
            await self._status.report(
                key,
                ok=True,
                message=message,
                digest=progress.digest,
                reason=DRIFT_REPAIRED if progress.drift else "",
            )
        return Result()

    async def _reconcile(self, key: str, progress: _Progress) -> str | None:
        """Do the work; the status message, or ``None`` when the object is gone."""
        request = await self._resolver.resolve(key)
        progress.stage = "generate"
        if request is None:
            progress.stage = "remove"
            if await self._writer.remove(key):
                self._removed.inc()
                _log.info("bundle removed", extra={"key": key})
            return None

        generated = generate(request)
        for warning in generated.warnings:
            _log.warning("spec generated with a warning", extra={"key": key, "warning": warning})
        content = build_bundle(request, generated)
        progress.stage, progress.content = "write", content

        loop = asyncio.get_running_loop()
        started = loop.time()
        changed = await self._writer.write(key, content)
        self._write_seconds.observe(loop.time() - started)
        drift = progress.drift = drift_of(changed)
        if drift:
            for kind in sorted(drift):
                self._drift.labels(kind=kind).inc()
            kinds = ", ".join(sorted(drift))
            _log.warning(
                "bundle drift repaired: the bundle on disk differed from its content",
                extra={"key": key, "drift": kinds, "digest": content.digest},
            )
        if changed:
            self._written.inc()
            if _log.isEnabledFor(logging.INFO):
                _log.info("bundle written", extra={"key": key, "digest": content.digest})
            message = f"bundle rewritten: drift repaired ({kinds})" if drift else "bundle written"
        else:
            self._unchanged.inc()
            message = "bundle up to date"
        if generated.warnings:
            message += "; warnings: " + "; ".join(generated.warnings)
        progress.stage = "done"
        return message

    async def _remove_stale(self, key: str) -> None:
        """Remove the bundle of an object whose current state the rules refuse.

        A bundle written for an earlier state (before a ``docker update`` or a spec change that
        the rules refuse, or with a payload since revoked: :class:`WithdrawError`) no longer
        describes the object; a runtime must not start it from that. Any other transient
        failure leaves the bundle alone: the state is not known then. A
        removal that fails is logged; the refusal is what the loop reports.
        """
        try:
            removed = await self._writer.remove(key)
        except Exception as exc:
            _log.error(
                "stale bundle could not be removed",
                extra={"key": key, "error": _user_message(exc)},
            )
            return
        if removed:
            self._removed.inc()
            _log.warning("stale bundle removed: the current state is refused", extra={"key": key})


class _Progress:
    """How far one reconcile got, for the status of a failure."""

    __slots__ = ("content", "drift", "stage")

    def __init__(self) -> None:
        self.stage: Stage = "resolve"
        self.content: BundleContent | None = None
        self.drift: frozenset[str] = frozenset()

    @property
    def digest(self) -> str | None:
        """The content's digest, once it was built: hashed only when a status asks for it (a
        mode without one, or a reconcile that logs none, hashes nothing more than the writer)."""
        return self.content.digest if self.content is not None else None


def _user_message(exc: Exception) -> str:
    """What users see: our own errors' text; nothing of an unexpected one's internals."""
    if isinstance(exc, WinspecError):
        return str(exc) or type(exc).__name__
    return f"internal error ({type(exc).__name__}); see the controller's log"
