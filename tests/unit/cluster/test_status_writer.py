"""The status reporter (adapters/kubernetes/status.py) against an in-process API server: what it
patches, when it writes nothing, how it meets 409 and 404, and when it records an Event.

The same reporter against the real kube-apiserver: tests/integration/test_cluster_mode.py and
test_cluster_invalid_objects.py.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from adapters.kubernetes.client import ConflictError, KubeClient
from adapters.kubernetes.status import StatusWriter
from controller.cluster import BUNDLE_WRITTEN, READY, SPEC_GENERATED, WindowsContainer
from controller.errors import RequestDecodeError
from tests.unit.cluster.apiserver import FakeAPIServer, wc_path, windows_container

DIGEST = "ab" * 32
OLD_TIME = "2020-01-01T00:00:00Z"


class Harness:
    """A StatusWriter over ``fake_api``, with the cache the source would keep."""

    def __init__(self, api: FakeAPIServer, client: KubeClient) -> None:
        self.api = api
        self.cache: dict[str, WindowsContainer | RequestDecodeError] = {}
        self.generations: dict[str, int] = {}
        self.remembered: list[bytes] = []
        self.writer = StatusWriter(
            client,
            cache=self.cache,
            generations=self.generations,
            remember=self.remembered.append,
            instance="test-instance",
        )

    def add(self, name: str, **metadata: Any) -> str:
        """Store a WindowsContainer and cache it; its key."""
        return self.add_object(windows_container("ns", name, **metadata))

    def add_object(self, obj: dict[str, Any]) -> str:
        """Store ``obj`` and cache it as decoded; its key."""
        key = self.api.add(obj)
        self.sync(key)
        return key

    def sync(self, key: str) -> None:
        """Cache the object as stored now (what the watch would deliver)."""
        self.cache[key] = self.api.decoded(key)

    def conditions(self, key: str) -> dict[str, dict[str, Any]]:
        """The stored object's conditions by type."""
        obj = self.api.get(key)
        assert obj is not None
        return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


@pytest.fixture
def h(fake_api: FakeAPIServer, kube_client: KubeClient) -> Harness:
    """A status writer over the in-process API server."""
    return Harness(fake_api, kube_client)


async def test_a_success_writes_true_conditions_the_digest_and_the_resolved_generation(
    h: Harness,
) -> None:
    """A success sets three True conditions, the digest and the generation that was resolved."""
    key = h.add("web", generation=4)
    h.generations[key] = 3
    await h.writer.report(key, ok=True, message="generated", digest=DIGEST)
    status = h.api.get(key)["status"]  # type: ignore[index]
    assert status["observedGeneration"] == 3
    assert status["digest"] == DIGEST
    conditions = h.conditions(key)
    assert {t: c["status"] for t, c in conditions.items()} == {
        SPEC_GENERATED: "True",
        BUNDLE_WRITTEN: "True",
        READY: "True",
    }
    assert all(c["observedGeneration"] == 3 for c in conditions.values())
    assert DIGEST[:12] in conditions[BUNDLE_WRITTEN]["message"]
    assert h.remembered, "the answer was not handed to the cache"


async def test_an_unchanged_outcome_writes_no_status(h: Harness) -> None:
    """Reporting the outcome the status already says sends no PATCH at all."""
    key = h.add("web")
    await h.writer.report(key, ok=True, message="generated", digest=DIGEST)
    h.sync(key)
    await h.writer.report(key, ok=True, message="generated", digest=DIGEST)
    assert len(h.api.requests("PATCH")) == 1


async def test_a_conflict_rereads_the_object_and_patches_its_current_version(
    h: Harness,
) -> None:
    """A 409 re-reads the object and patches its current version, keeping others' changes."""
    key = h.add("web")
    stored = h.api.get(key)
    assert stored is not None
    stored["metadata"]["resourceVersion"] = "7"  # changed by someone else since cached
    stored["metadata"]["labels"] = {"team": "a"}
    await h.writer.report(key, ok=True, message="generated", digest=DIGEST)
    calls = [(c.method, c.path) for c in h.api.calls]
    path = wc_path("ns", "web")
    assert calls == [("PATCH", path + "/status"), ("GET", path), ("PATCH", path + "/status")]
    assert h.api.calls[-1].body["metadata"]["resourceVersion"] == "7"
    assert h.api.get(key)["metadata"]["labels"] == {"team": "a"}  # type: ignore[index]
    assert h.conditions(key)[READY]["status"] == "True"


async def test_conflicts_past_the_retries_raise_for_the_reconcile_to_be_retried(
    h: Harness,
) -> None:
    """Five 409s in a row raise ConflictError (the work queue retries the reconcile)."""
    key = h.add("web")
    h.api.fail("PATCH", wc_path("ns", "web") + "/status", 409, times=5)
    with pytest.raises(ConflictError):
        await h.writer.report(key, ok=True, message="generated", digest=DIGEST)
    assert len(h.api.requests("PATCH")) == 5
    assert "status" not in h.api.get(key)  # type: ignore[operator]


async def test_a_failure_keeps_the_previous_digest_and_unchanged_transition_times(
    h: Harness,
) -> None:
    """A failure keeps the digest and a held condition's time; a flipped one gets a new time."""
    obj = windows_container("ns", "web")
    obj["status"] = {
        "digest": DIGEST,
        "conditions": [
            {"type": SPEC_GENERATED, "status": "True", "reason": "Generated",
             "message": "the spec was generated", "lastTransitionTime": OLD_TIME},
            {"type": READY, "status": "True", "reason": "BundleReady",
             "message": "the bundle is current", "lastTransitionTime": OLD_TIME},
        ],
    }  # fmt: skip
    key = h.add_object(obj)
    await h.writer.report(
        key, ok=False, message="cannot write: disk full", stage="write", reason="WriteFailed"
    )
    status = h.api.get(key)["status"]  # type: ignore[index]
    assert status["digest"] == DIGEST
    conditions = h.conditions(key)
    assert conditions[SPEC_GENERATED]["lastTransitionTime"] == OLD_TIME
    assert conditions[READY]["status"] == "False"
    assert conditions[READY]["lastTransitionTime"] != OLD_TIME
    assert conditions[READY]["message"] == "cannot write: disk full"
    assert conditions[BUNDLE_WRITTEN]["reason"] == "WriteFailed"


async def test_a_permanent_failure_gets_one_warning_event_not_one_per_reconcile(
    h: Harness,
) -> None:
    """A permanent failure gets one Warning Event, not one per reconcile; a new message, another."""
    key = h.add("web")
    refused = "S7: isolation hyperv needs a kernel"
    for _ in range(2):
        await h.writer.report(
            key, ok=False, message=refused, stage="generate", reason="SpecRefused", permanent=True
        )
        h.sync(key)
    assert len(h.api.events) == 1
    event = h.api.events[0]
    assert event["type"] == "Warning"
    assert event["reason"] == "SpecRefused"
    assert event["message"] == refused
    assert event["involvedObject"]["uid"] == "uid-web"
    assert event["reportingInstance"] == "test-instance"
    await h.writer.report(
        key, ok=False, message="S9: another rule", stage="generate", permanent=True
    )
    assert [e["message"] for e in h.api.events] == [refused, "S9: another rule"]


async def test_a_resource_whose_status_the_server_refuses_gets_its_event_once(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A spec that no longer decodes, its status refused (422), gets one Event and no raise."""
    obj = windows_container("ns", "broken")
    obj["spec"]["isolation"] = 42  # the CRD changed under it
    key = h.add_object(obj)
    assert not isinstance(h.cache[key], WindowsContainer)
    h.api.fail("PATCH", wc_path("ns", "broken") + "/status", 422, times=2)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            await h.writer.report(
                key, ok=False, message="invalid spec.isolation", stage="resolve",
                reason="InvalidSpec", permanent=True,
            )  # fmt: skip
    assert len(h.api.requests("PATCH")) == 2
    assert "status" not in h.api.get(key)  # type: ignore[operator]
    assert [e["reason"] for e in h.api.events] == ["InvalidSpec"]
    assert "refuses the object as it is stored" in caplog.text


async def test_a_resource_being_deleted_gets_a_status_only_for_a_failed_removal(
    h: Harness,
) -> None:
    """A deleting object gets status only for a failed removal, SpecGenerated left alone."""
    key = h.add("web", deletionTimestamp="2026-01-01T00:00:00Z", finalizers=["winspec.io/bundle"])
    await h.writer.report(key, ok=True, message="removed")
    assert h.api.calls == []
    await h.writer.report(
        key, ok=False, message="waiting for the agent", stage="remove", reason="AgentUnreachable"
    )
    conditions = h.conditions(key)
    assert set(conditions) == {BUNDLE_WRITTEN, READY}
    assert conditions[READY]["reason"] == "AgentUnreachable"


async def test_a_resource_deleted_meanwhile_gets_nothing(h: Harness) -> None:
    """A 404 on the status patch (the object went meanwhile) is no error and records no Event."""
    key = h.add("web")
    del h.api.objects[wc_path("ns", "web")]
    await h.writer.report(key, ok=False, message="refused", stage="generate", permanent=True)
    assert len(h.api.requests("PATCH")) == 1
    assert h.api.events == []


async def test_an_event_that_cannot_be_created_is_logged_not_raised(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused Event (403) is logged; the status is written all the same."""
    key = h.add("web")
    h.api.fail("POST", "/api/v1/namespaces/ns/events", 403)
    with caplog.at_level(logging.WARNING):
        await h.writer.report(key, ok=False, message="refused", stage="generate", permanent=True)
    assert h.conditions(key)[READY]["message"] == "refused"
    assert h.api.events == []
    assert "could not record an event" in caplog.text


async def test_a_resource_not_in_the_cache_gets_nothing(h: Harness) -> None:
    """A key the cache does not hold (deleted, or never seen) sends no request."""
    await h.writer.report("ns/unknown", ok=False, message="refused", permanent=True)
    assert h.api.calls == []
