"""The metric definitions: names, pre-set series, the injected registry."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from controller.bundle import DRIFT_KINDS
from controller.metrics import (
    ABANDON_REASONS,
    BUNDLE_RESULTS,
    DEPENDENCY_KINDS,
    RECONCILE_RESULTS,
    RESOURCE_STATES,
    WATCH_RESTART_REASONS,
    Metrics,
)


def test_known_label_values_start_at_zero() -> None:
    """Every series with a known label set is exported at 0 before anything happens."""
    registry = CollectorRegistry()
    Metrics(registry, controller="c")
    get = registry.get_sample_value
    for result in RECONCILE_RESULTS:
        assert get("controller_runtime_reconcile_total", {"controller": "c", "result": result}) == 0
    for name in (
        "controller_runtime_reconcile_errors_total",
        "controller_runtime_terminal_reconcile_errors_total",
        "controller_runtime_reconcile_panics_total",
        "controller_runtime_reconcile_time_seconds_count",
        "controller_runtime_max_concurrent_reconciles",
        "controller_runtime_active_workers",
    ):
        assert get(name, {"controller": "c"}) == 0, name
    for name in (
        "workqueue_depth",
        "workqueue_adds_total",
        "workqueue_queue_duration_seconds_count",
        "workqueue_work_duration_seconds_count",
        "workqueue_unfinished_work_seconds",
        "workqueue_longest_running_processor_seconds",
        "workqueue_retries_total",
    ):
        assert get(name, {"name": "c"}) == 0, name
    for result in BUNDLE_RESULTS:
        assert get("winspec_bundles_written_total", {"result": result}) == 0
    for kind in DRIFT_KINDS:
        assert get("winspec_bundle_drift_total", {"kind": kind}) == 0
    for state in RESOURCE_STATES:
        assert get("winspec_resources", {"controller": "c", "state": state}) == 0
    assert get("winspec_bundle_write_seconds_count") == 0


def test_declared_sources_apis_and_leases_start_at_zero() -> None:
    """Adapters declare their own label values, which are then exported at 0."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, controller="c")
    metrics.declare_source("docker", event_types=("container", "secret"))
    metrics.declare_api("docker")
    metrics.declare_lease("winspec-leader")
    metrics.declare_dependency_kinds(["secret", "node"])
    metrics.declare_node("n1")
    metrics.declare_abandon_reasons()
    get = registry.get_sample_value
    assert get("winspec_events_received_total", {"source": "docker", "type": "secret"}) == 0
    for reason in WATCH_RESTART_REASONS:
        assert get("winspec_watch_restarts_total", {"source": "docker", "reason": reason}) == 0
    assert get("winspec_last_sync_timestamp_seconds", {"source": "docker"}) == 0
    assert get("winspec_api_retries_total", {"api": "docker"}) == 0
    assert get("leader_election_master_status", {"name": "winspec-leader"}) == 0
    assert get("winspec_dependency_fetch_seconds_count", {"kind": "node"}) == 0
    assert get("winspec_delivery_failures_total", {"node": "n1"}) == 0

    for reason in ABANDON_REASONS:
        assert get("winspec_bundle_removals_abandoned_total", {"reason": reason}) == 0


def test_label_values_of_one_mode_are_only_exported_once_declared() -> None:
    """Dependency kinds and nodes have no series (not even zeros) until a mode declares them."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, controller="c")
    get = registry.get_sample_value
    for kind in DEPENDENCY_KINDS:
        assert get("winspec_dependency_fetch_seconds_count", {"kind": kind}) is None, kind
    metrics.declare_dependency_kinds(["container"])
    assert get("winspec_dependency_fetch_seconds_count", {"kind": "container"}) == 0
    assert get("winspec_dependency_fetch_seconds_count", {"kind": "node"}) is None
    families = {f.name: f for f in registry.collect()}
    assert families["winspec_delivery_failures"].samples == []


def test_nothing_is_registered_on_the_global_registry() -> None:
    """Metrics use only the registry they are given; two registries never clash."""
    before = set(REGISTRY._names_to_collectors)
    Metrics(CollectorRegistry(), controller="c")
    Metrics(CollectorRegistry(), controller="c")
    assert set(REGISTRY._names_to_collectors) == before


def test_a_second_metrics_on_one_registry_is_refused() -> None:
    """Registering the same metrics twice on one registry fails loudly."""
    registry = CollectorRegistry()
    Metrics(registry, controller="a")
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(registry, controller="b")


def test_queue_metrics_are_shared_per_name() -> None:
    """Asking twice for one queue's series gives the same children."""
    metrics = Metrics(CollectorRegistry(), controller="c")
    assert metrics.queue_metrics("x") is metrics.queue_metrics("x")
    assert metrics.queue_metrics("x") is not metrics.queue_metrics("y")


def test_agents_missing_exports_what_it_is_given_per_node_when_scraped() -> None:
    """winspec_delivery_agent_missing: no series until reported, then 1/0 per node, read anew."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, controller="c")
    families = {f.name: f for f in registry.collect()}
    assert families["winspec_delivery_agent_missing"].samples == []
    nodes = {"win-1": True, "win-2": False}
    metrics.agents_missing.report(lambda: nodes)
    get = registry.get_sample_value
    assert get("winspec_delivery_agent_missing", {"node": "win-1"}) == 1
    assert get("winspec_delivery_agent_missing", {"node": "win-2"}) == 0
    nodes["win-1"] = False
    del nodes["win-2"]
    assert get("winspec_delivery_agent_missing", {"node": "win-1"}) == 0
    assert get("winspec_delivery_agent_missing", {"node": "win-2"}) is None
