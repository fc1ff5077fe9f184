"""In-memory fakes of the core's ports, for unit tests; each implements the same Protocol."""

from __future__ import annotations

from controller.bundle import BundleContent
from controller.models import Request


class FakeResolver:
    """A :class:`~controller.ports.RequestResolver` over a dict; ``errors`` are raised instead."""

    def __init__(self, requests: dict[str, Request] | None = None) -> None:
        self.requests: dict[str, Request] = dict(requests or {})
        self.errors: dict[str, Exception] = {}
        self.calls: list[str] = []

    async def resolve(self, key: str) -> Request | None:
        """The request stored under ``key``, ``None`` when there is none."""
        self.calls.append(key)
        if key in self.errors:
            raise self.errors[key]
        return self.requests.get(key)


class FakeBundleWriter:
    """A :class:`~controller.ports.BundleWriter` keeping bundles in a dict."""

    def __init__(self) -> None:
        self.bundles: dict[str, BundleContent] = {}

    async def write(self, bundle_id: str, content: BundleContent) -> bool:
        """Store the bundle; ``False`` when the same content was already there."""
        old = self.bundles.get(bundle_id)
        if old is not None and old.digest == content.digest:
            return False
        self.bundles[bundle_id] = content
        return True

    async def remove(self, bundle_id: str) -> bool:
        """Drop the bundle; ``False`` when there was none."""
        return self.bundles.pop(bundle_id, None) is not None

    async def list_ids(self) -> list[str]:
        """The ids of every stored bundle."""
        return sorted(self.bundles)


class FakeStatusReporter:
    """A :class:`~controller.ports.StatusReporter` that records every report."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, bool, str]] = []
        self.details: list[dict[str, object]] = []

    async def report(
        self,
        key: str,
        *,
        ok: bool,
        message: str,
        stage: str = "done",
        reason: str = "",
        digest: str | None = None,
        permanent: bool = False,
    ) -> None:
        """Record the report (key, ok, message) and its details."""
        self.reports.append((key, ok, message))
        self.details.append(
            {"stage": stage, "reason": reason, "digest": digest, "permanent": permanent}
        )
