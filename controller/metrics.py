"""Every Prometheus metric winspec exports, created on a registry the caller passes in.

The names and labels of the loop and the work queue are controller-runtime's and client-go's,
so the dashboards and alerts written for Go controllers work unchanged; winspec's own metrics
carry the ``winspec_`` prefix. Nothing is registered on prometheus_client's global default
registry: a process (or a test) builds one :class:`Metrics` per registry and hands it to
whatever counts.

Label values are pre-set to 0 wherever the set of values is known, so a rate or an absence
alert has a series to work with before the first event; values only one mode uses are declared
by that mode, so the other does not export them as zeros. Labels never carry a secret, a
credential spec or a path with user data: only controller, queue, source, API, lease and node
names and the fixed value sets below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.bundle import DRIFT_KINDS

# controller_runtime_reconcile_total{result}
RESULT_SUCCESS = "success"
RESULT_ERROR = "error"
RESULT_REQUEUE = "requeue"
RESULT_REQUEUE_AFTER = "requeue_after"
RECONCILE_RESULTS = (RESULT_SUCCESS, RESULT_ERROR, RESULT_REQUEUE, RESULT_REQUEUE_AFTER)

# winspec_bundles_written_total{result}
BUNDLE_WRITTEN = "written"
BUNDLE_UNCHANGED = "unchanged"
BUNDLE_REMOVED = "removed"
BUNDLE_RESULTS = (BUNDLE_WRITTEN, BUNDLE_UNCHANGED, BUNDLE_REMOVED)

# winspec_bundle_removals_abandoned_total{reason}: bundles of deleted resources left on a node
# (central delivery), their finalizer released without the removal.
ABANDON_NODE_DELETED = "node_deleted"  # the Node object no longer exists
ABANDON_AGENT_UNREACHABLE = "agent_unreachable"  # no agent answered for the grace period
ABANDON_REASONS = (ABANDON_NODE_DELETED, ABANDON_AGENT_UNREACHABLE)

# winspec_dependency_fetch_seconds{kind}: what a resolver fetched to build one request. Each
# mode declares the kinds its resolver observes (Metrics.declare_dependency_kinds), so no mode
# exports another's kinds as zeros.
DEPENDENCY_KINDS = (
    "container",  # the container's inspect
    "image",  # the image's inspect (not observed when cached)
    "task",  # a swarm task's inspect
    "secret",  # reading a secret's payload
    "config",  # a mounted config's payload
    "credential_spec",  # config://, file:// and registry:// credential specs
    "layers",  # reading the layer chain (windowsfilter's layerchain.json)
    "endpoints",  # the inspect of the container whose network is shared (container:<name>)
    "node",  # a Node object's facts (cluster mode; cached briefly)
)

# winspec_resources{controller, state}: the keys a controller knows of, by their last outcome.
STATE_READY = "ready"  # the last reconcile succeeded: the bundle is in place and current
STATE_NOT_READY = "not_ready"  # the last reconcile failed (retried with backoff, or refused)
STATE_PENDING = "pending"  # queued and not reconciled yet (new, changed before its first pass)
RESOURCE_STATES = (STATE_READY, STATE_NOT_READY, STATE_PENDING)

# winspec_watch_restarts_total{reason}: why a source had to list and watch again.
WATCH_RESTART_REASONS = (
    "closed",  # the server ended the stream (timeout, restart)
    "error",  # connection lost or a malformed event
    "expired",  # the resume point is gone (410 Gone, Docker's 256-event window)
    "idle",  # the stream was silent for longer than the inactivity watchdog allows
)

# controller-runtime's reconcile time buckets (pkg/internal/controller/metrics).
_RECONCILE_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5),
    *(0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0),
    *(6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0),
)
# client-go's workqueue buckets: ExponentialBuckets(10e-9, 10, 12), 10 ns to 1000 s.
_QUEUE_BUCKETS = tuple(1e-8 * 10**i for i in range(12))
# Remote calls and atomic writes: milliseconds to tens of seconds.
_IO_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


#: winspec_delivery_agent_missing{node}: cluster mode's --delivery agent.
AGENT_MISSING = "winspec_delivery_agent_missing"


class AgentsMissing(Collector):
    """``winspec_delivery_agent_missing{node}``, read when scraped from what :meth:`report`
    was given: per node that bundles go to, 1 when no agent can be found there, else 0. No
    series until then (Docker mode, a standby replica), only the family."""

    def __init__(self) -> None:
        self._read: Callable[[], Mapping[str, bool]] | None = None

    def report(self, read: Callable[[], Mapping[str, bool]]) -> None:
        """Export ``read()`` (node to whether its agent is missing) from now on."""
        self._read = read

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The family, without reading anything."""
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The family with one sample per node ``read()`` names."""
        family = self._family()
        if self._read is not None:
            for node, missing in sorted(self._read().items()):
                family.add_metric([node], 1.0 if missing else 0.0)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            AGENT_MISSING,
            "1 for each node that resources are delivered to whose agent cannot be found (no "
            "running agent pod with an address there), 0 for those whose agent is found",
            labels=["node"],
        )


@dataclass(frozen=True, slots=True)
class QueueMetrics:
    """The ``workqueue_*`` series of one named queue (children already bound to its name)."""

    depth: Gauge
    adds: Counter
    queue_duration: Histogram
    work_duration: Histogram
    unfinished_work: Gauge
    longest_running_processor: Gauge
    retries: Counter


class Metrics:
    """Every metric of one controller process, registered on ``registry``.

    One instance per registry: creating a second on the same registry fails with prometheus'
    duplicate-name error, as it should.
    """

    def __init__(self, registry: CollectorRegistry, *, controller: str) -> None:
        self.controller = controller
        r = registry

        # controller-runtime: the loop.
        self.reconcile_total = Counter(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            ["controller", "result"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            ["controller"],
            registry=r,
        )
        self.terminal_reconcile_errors = Counter(
            "controller_runtime_terminal_reconcile_errors",
            "Total number of terminal reconciliation errors per controller",
            ["controller"],
            registry=r,
        )
        # A reconcile that raised something unexpected (a bug, in Go a recovered panic).
        self.reconcile_panics = Counter(
            "controller_runtime_reconcile_panics",
            "Total number of reconciliation panics per controller",
            ["controller"],
            registry=r,
        )
        self.reconcile_time = Histogram(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            ["controller"],
            buckets=_RECONCILE_BUCKETS,
            registry=r,
        )
        self.max_concurrent_reconciles = Gauge(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            ["controller"],
            registry=r,
        )
        self.active_workers = Gauge(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            ["controller"],
            registry=r,
        )
        self.resources = Gauge(
            "winspec_resources",
            "Objects (containers in Docker mode, WindowsContainers in cluster mode) a controller "
            "knows of, by the outcome of their last reconcile: ready, not_ready, pending",
            ["controller", "state"],
            registry=r,
        )
        for result in RECONCILE_RESULTS:
            self.reconcile_total.labels(controller=controller, result=result)
        for state in RESOURCE_STATES:
            self.resources.labels(controller=controller, state=state)
        self.reconcile_errors.labels(controller=controller)
        self.terminal_reconcile_errors.labels(controller=controller)
        self.reconcile_panics.labels(controller=controller)
        self.reconcile_time.labels(controller=controller)
        self.max_concurrent_reconciles.labels(controller=controller)
        self.active_workers.labels(controller=controller)

        # client-go: the work queue.
        self._workqueue_depth = Gauge(
            "workqueue_depth", "Current depth of workqueue", ["name"], registry=r
        )
        self._workqueue_adds = Counter(
            "workqueue_adds", "Total number of adds handled by workqueue", ["name"], registry=r
        )
        self._workqueue_queue_duration = Histogram(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            ["name"],
            buckets=_QUEUE_BUCKETS,
            registry=r,
        )
        self._workqueue_work_duration = Histogram(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes",
            ["name"],
            buckets=_QUEUE_BUCKETS,
            registry=r,
        )
        self._workqueue_unfinished_work = Gauge(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been "
            "observed by work_duration. Large values indicate stuck workers",
            ["name"],
            registry=r,
        )
        self._workqueue_longest_running = Gauge(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running",
            ["name"],
            registry=r,
        )
        self._workqueue_retries = Counter(
            "workqueue_retries",
            "Total number of retries (delayed and rate-limited adds) handled by workqueue",
            ["name"],
            registry=r,
        )
        self._queues: dict[str, QueueMetrics] = {}
        self.queue_metrics(controller)

        # client-go: leader election.
        self.leader_election_master_status = Gauge(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates "
            "backup, 1 indicates master. 'name' is the string used to identify the lease",
            ["name"],
            registry=r,
        )

        # winspec's own.
        self.events_received = Counter(
            "winspec_events_received",
            "Events received from a source, by source and the source's own event type",
            ["source", "type"],
            registry=r,
        )
        self.watch_restarts = Counter(
            "winspec_watch_restarts",
            "Times a source had to list and watch again, by source and reason "
            "(closed, error, expired, idle)",
            ["source", "reason"],
            registry=r,
        )
        self.last_sync_timestamp = Gauge(
            "winspec_last_sync_timestamp_seconds",
            "Unix time of the last complete list (initial, after a reconnect or a resync) "
            "of a source",
            ["source"],
            registry=r,
        )
        self.bundles_written = Counter(
            "winspec_bundles_written",
            "Bundle writes by result: written (content changed), unchanged, removed",
            ["result"],
            registry=r,
        )
        self.bundle_drift = Counter(
            "winspec_bundle_drift",
            "Bundles found on disk differing from the content their .digest names (edited or "
            "damaged on the node) and rewritten, by kind: modified, missing, extra",
            ["kind"],
            registry=r,
        )
        self.bundle_write_seconds = Histogram(
            "winspec_bundle_write_seconds",
            "Time to write one bundle atomically (or find it unchanged)",
            buckets=_IO_BUCKETS,
            registry=r,
        )
        self.dependency_fetch_seconds = Histogram(
            "winspec_dependency_fetch_seconds",
            "Time to fetch one dependency of a request, by kind",
            ["kind"],
            buckets=_IO_BUCKETS,
            registry=r,
        )
        self.api_retries = Counter(
            "winspec_api_retries",
            "Retries of single remote calls inside adapters, by API",
            ["api"],
            registry=r,
        )
        # Cluster mode's --delivery agent only: a family without series elsewhere.
        self.delivery_failures = Counter(
            "winspec_delivery_failures",
            "Bundle deliveries to a node's agent that failed (unreachable, too slow, refused), "
            "by node",
            ["node"],
            registry=r,
        )
        self.agents_missing = AgentsMissing()
        r.register(self.agents_missing)
        self.bundle_removals_abandoned = Counter(
            "winspec_bundle_removals_abandoned",
            "Bundles of deleted resources left on their node because it could not be reached "
            "(central delivery): the finalizer was released without the removal, by reason",
            ["reason"],
            registry=r,
        )
        for result in BUNDLE_RESULTS:
            self.bundles_written.labels(result=result)
        for kind in DRIFT_KINDS:
            self.bundle_drift.labels(kind=kind)

    def queue_metrics(self, name: str) -> QueueMetrics:
        """The ``workqueue_*`` series of the queue called ``name`` (created at 0 on first use)."""
        existing = self._queues.get(name)
        if existing is not None:
            return existing
        queue = QueueMetrics(
            depth=self._workqueue_depth.labels(name=name),
            adds=self._workqueue_adds.labels(name=name),
            queue_duration=self._workqueue_queue_duration.labels(name=name),
            work_duration=self._workqueue_work_duration.labels(name=name),
            unfinished_work=self._workqueue_unfinished_work.labels(name=name),
            longest_running_processor=self._workqueue_longest_running.labels(name=name),
            retries=self._workqueue_retries.labels(name=name),
        )
        self._queues[name] = queue
        return queue

    def declare_source(self, source: str, *, event_types: Iterable[str]) -> None:
        """Pre-set the series of a key source (its event types are the source's to name)."""
        for event_type in event_types:
            self.events_received.labels(source=source, type=event_type)
        for reason in WATCH_RESTART_REASONS:
            self.watch_restarts.labels(source=source, reason=reason)
        self.last_sync_timestamp.labels(source=source)

    def declare_dependency_kinds(self, kinds: Iterable[str]) -> None:
        """Pre-set the fetch histogram of each dependency kind a mode's resolver observes."""
        for kind in kinds:
            self.dependency_fetch_seconds.labels(kind=kind)

    def declare_node(self, node: str) -> None:
        """Pre-set the delivery failure counter of a node bundles are delivered to."""
        self.delivery_failures.labels(node=node)

    def declare_api(self, api: str) -> None:
        """Pre-set the retry counter of a remote API an adapter calls."""
        self.api_retries.labels(api=api)

    def declare_abandon_reasons(self) -> None:
        """Pre-set ``winspec_bundle_removals_abandoned_total`` (central delivery) to 0."""
        for reason in ABANDON_REASONS:
            self.bundle_removals_abandoned.labels(reason=reason)

    def declare_lease(self, name: str) -> None:
        """Pre-set the leader election gauge of a lease to 0 (backup)."""
        self.leader_election_master_status.labels(name=name)
