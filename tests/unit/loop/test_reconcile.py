"""BundleReconciler over in-memory fakes of its ports, alone and inside the loop."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from controller.errors import PermanentError, SpecError, TransientError
from controller.loop import Controller, Result
from controller.metrics import Metrics
from controller.models import Container, Image, Request
from controller.reconcile import BundleReconciler
from controller.workqueue import ExponentialFailureRateLimiter, WorkQueue
from tests.fakes import FakeBundleWriter, FakeResolver, FakeStatusReporter
from tests.support.waiting import eventually

KEY = "0123456789abcdef" * 4


def _request(key: str = KEY, *, os_name: str = "windows", path: str = "cmd.exe") -> Request:
    return Request(
        container=Container(id=key, path=path),
        image=Image(os=os_name),
        layer_folders=["C:\\layers\\base"],
    )


class Setup:
    """A reconciler wired to fakes, on a fresh registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, controller="bundles")
        self.resolver = FakeResolver({KEY: _request()})
        self.writer = FakeBundleWriter()
        self.status = FakeStatusReporter()
        self.reconciler = BundleReconciler(
            resolver=self.resolver, writer=self.writer, metrics=self.metrics, status=self.status
        )

    def bundles(self, result: str) -> float | None:
        """``winspec_bundles_written_total`` for one result."""
        return self.registry.get_sample_value("winspec_bundles_written_total", {"result": result})


async def test_writes_the_bundle_then_finds_it_unchanged() -> None:
    """The first reconcile writes config.json; the same state again counts as unchanged."""
    s = Setup()
    assert await s.reconciler.reconcile(KEY) == Result()
    assert set(s.writer.bundles[KEY].files) == {"config.json", "links.json"}
    assert await s.reconciler.reconcile(KEY) == Result()
    assert s.bundles("written") == 1
    assert s.bundles("unchanged") == 1
    assert s.bundles("removed") == 0
    assert s.registry.get_sample_value("winspec_bundle_write_seconds_count") == 2
    assert s.status.reports == [(KEY, True, "bundle written"), (KEY, True, "bundle up to date")]


async def test_a_changed_request_rewrites_the_bundle() -> None:
    """When the resolved state changes, the new content is written."""
    s = Setup()
    await s.reconciler.reconcile(KEY)
    first = s.writer.bundles[KEY].digest
    s.resolver.requests[KEY] = _request(path="powershell.exe")
    await s.reconciler.reconcile(KEY)
    assert s.writer.bundles[KEY].digest != first
    assert s.bundles("written") == 2


async def test_a_gone_object_has_its_bundle_removed() -> None:
    """A gone object (resolver: None) has its bundle removed and counted, no status, Result gone."""
    s = Setup()
    await s.reconciler.reconcile(KEY)
    del s.resolver.requests[KEY]
    assert await s.reconciler.reconcile(KEY) == Result(gone=True)
    assert KEY not in s.writer.bundles
    assert s.bundles("removed") == 1
    assert len(s.status.reports) == 1


async def test_removing_a_bundle_that_is_not_there_counts_nothing() -> None:
    """A gone object without a bundle is a no-op, not a removal."""
    s = Setup()
    del s.resolver.requests[KEY]
    await s.reconciler.reconcile(KEY)
    assert s.bundles("removed") == 0


@pytest.mark.parametrize("key", ["../etc", "a/b", "", "UPPER", "x" * 300])
async def test_an_invalid_key_is_refused_as_permanent(key: str) -> None:
    """A key that is not a container id or object name raises PermanentError before any I/O."""
    s = Setup()
    with pytest.raises(PermanentError, match="invalid bundle id"):
        await s.reconciler.reconcile(key)
    assert s.resolver.calls == []
    assert s.writer.bundles == {}


async def test_a_spec_error_is_reported_and_raised() -> None:
    """Input the generator refuses raises SpecError and reports its text as the status."""
    s = Setup()
    s.resolver.requests[KEY] = _request(os_name="plan9")
    with pytest.raises(SpecError):
        await s.reconciler.reconcile(KEY)
    assert s.status.reports == [
        (KEY, False, 'Unsupported platform "plan9": image.Os must be "windows" or "linux"')
    ]
    assert s.writer.bundles == {}


async def test_a_transient_error_propagates_for_the_loop_to_retry() -> None:
    """A resolver's TransientError reaches the caller unchanged, after a failed status."""
    s = Setup()
    s.resolver.errors[KEY] = TransientError("docker unreachable")
    with pytest.raises(TransientError):
        await s.reconciler.reconcile(KEY)
    assert s.status.reports == [(KEY, False, "docker unreachable")]


async def test_an_unexpected_error_is_reported_without_its_details() -> None:
    """The status of an unexpected failure names its type, not its message."""
    s = Setup()
    s.resolver.errors[KEY] = RuntimeError("/home/alice/secret-path")
    with pytest.raises(RuntimeError):
        await s.reconciler.reconcile(KEY)
    [(_, ok, message)] = s.status.reports
    assert not ok
    assert "RuntimeError" in message
    assert "alice" not in message


async def test_works_without_a_status_reporter() -> None:
    """The status port is optional (Docker mode has none)."""
    s = Setup()
    reconciler = BundleReconciler(resolver=s.resolver, writer=s.writer, metrics=s.metrics)
    await reconciler.reconcile(KEY)
    assert KEY in s.writer.bundles


async def test_in_the_loop_an_invalid_key_is_terminal_and_a_valid_one_is_written() -> None:
    """Driven by the controller, a bad key is a terminal error and never retried."""
    s = Setup()
    queue = WorkQueue(
        "bundles",
        metrics=s.metrics.queue_metrics("bundles"),
        rate_limiter=ExponentialFailureRateLimiter(base_delay=0.001, max_delay=0.01),
    )
    controller = Controller(
        "bundles", queue=queue, reconciler=s.reconciler, workers=2, metrics=s.metrics
    )
    queue.add("../escape")
    queue.add(KEY)
    run = asyncio.create_task(controller.run())
    labels = {"controller": "bundles"}

    def total(result: str) -> float | None:
        return s.registry.get_sample_value(
            "controller_runtime_reconcile_total", {**labels, "result": result}
        )

    await eventually(lambda: total("success") == 1 and total("error") == 1)
    await asyncio.sleep(0.02)
    await controller.stop(1.0)
    await asyncio.wait_for(run, 1)
    assert (
        s.registry.get_sample_value("controller_runtime_terminal_reconcile_errors_total", labels)
        == 1
    )
    assert total("error") == 1
    assert KEY in s.writer.bundles
    assert queue.num_requeues("../escape") == 0


async def test_reports_say_where_a_reconcile_stopped_and_why() -> None:
    """Each report carries the stage reached, the reason, the digest and permanence."""
    s = Setup()
    await s.reconciler.reconcile(KEY)
    written = s.status.details[-1]
    assert written["stage"] == "done"
    assert written["digest"] == s.writer.bundles[KEY].digest

    s.resolver.errors[KEY] = TransientError("secret missing")
    with pytest.raises(TransientError):
        await s.reconciler.reconcile(KEY)
    assert s.status.details[-1] == {
        "stage": "resolve", "reason": "TransientError", "digest": None, "permanent": False
    }  # fmt: skip

    del s.resolver.errors[KEY]
    s.resolver.requests[KEY] = _request(os_name="plan9")
    with pytest.raises(SpecError):
        await s.reconciler.reconcile(KEY)
    assert s.status.details[-1] == {
        "stage": "generate", "reason": "SpecRefused", "digest": None, "permanent": True
    }  # fmt: skip


async def test_the_key_check_can_be_replaced() -> None:
    """A mode with other keys (cluster mode's <namespace>/<name>) passes its own check."""
    s = Setup()
    seen: list[str] = []
    reconciler = BundleReconciler(
        resolver=s.resolver, writer=s.writer, metrics=s.metrics, check_key=seen.append
    )
    s.resolver.requests["apps/web"] = _request()
    await reconciler.reconcile("apps/web")
    assert seen == ["apps/web"]
    assert "apps/web" in s.writer.bundles
