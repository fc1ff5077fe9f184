"""The node agent's Prometheus metrics (``winspec_agent_*``), on a registry the caller passes.

Every label value is pre-set, so rates and absence alerts have a series from the start. Labels
carry only the fixed sets below: never an id, an identity, a token or a path.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controller.bundle import DRIFT_KINDS

#: What a request asked for (``other``: any path outside the bundle API).
OPERATIONS = ("put", "delete", "list", "node", "other")
#: How a request ended.
RESULTS = (
    "ok",
    "bad_request",  # malformed body or id, MAC mismatch, wrong content type
    "unauthenticated",  # 401: no token, or one the API server did not accept for our audience
    "forbidden",  # 403: a valid token of an identity not allowed
    "too_large",  # 413
    "timeout",  # 408: the body did not arrive within --body-timeout
    "replayed",  # 409: an upload replayed, or older than the newest one of its bundle
    "throttled",  # 429: this peer's TokenReview budget is used up
    "not_found",  # 404: no such route
    "unavailable",  # 503: the API server or the bundle root could not be used
    "error",  # 500: anything unexpected
)
#: What a bundle request did on disk.
BUNDLE_RESULTS = ("written", "unchanged", "removed", "absent")
#: The outcome of one TokenReview call.
REVIEW_RESULTS = ("authenticated", "rejected", "error")
#: Why a connection was closed at once, or ended early.
CONNECTION_REFUSALS = (
    "peer_limit",  # its peer had --max-connections-per-peer open
    "limit",  # --max-connections open, none of a peer with more to give way
    "evicted",  # closed to make room for a peer with fewer connections
    "no_descriptor",  # accept failed: the process is out of file descriptors
)

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class AgentMetrics:
    """The agent's series."""

    requests: Counter
    request_seconds: Histogram
    bundles: Counter
    received_bytes: Counter
    token_reviews: Counter
    token_cache: Counter
    ready: Gauge
    connections: Gauge
    connections_refused: Counter
    bundle_drift: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> AgentMetrics:
        """Create every series on ``registry`` with its label values pre-set."""
        requests = Counter(
            "winspec_agent_requests_total",
            "Requests to the agent, by operation and result",
            ["operation", "result"],
            registry=registry,
        )
        seconds = Histogram(
            "winspec_agent_request_duration_seconds",
            "Time to answer a request, by operation",
            ["operation"],
            buckets=_BUCKETS,
            registry=registry,
        )
        bundles = Counter(
            "winspec_agent_bundles_total",
            "Bundle writes and removals, by what they did on disk",
            ["result"],
            registry=registry,
        )
        received = Counter(
            "winspec_agent_received_bytes_total",
            "Bytes of accepted bundle uploads",
            registry=registry,
        )
        reviews = Counter(
            "winspec_agent_token_reviews_total",
            "TokenReview calls to the API server, by outcome",
            ["result"],
            registry=registry,
        )
        cache = Counter(
            "winspec_agent_token_cache_total",
            "Token checks answered from the cache (hit) or by a TokenReview (miss)",
            ["result"],
            registry=registry,
        )
        ready = Gauge(
            "winspec_agent_ready",
            "1 when the agent can write bundles and check tokens, else 0",
            registry=registry,
        )
        for op in OPERATIONS:
            seconds.labels(op)
            for result in RESULTS:
                requests.labels(op, result)
        for result in BUNDLE_RESULTS:
            bundles.labels(result)
        for result in REVIEW_RESULTS:
            reviews.labels(result)
        connections = Gauge(
            "winspec_agent_connections",
            "Connections open (TLS handshakes in progress included)",
            registry=registry,
        )
        refused = Counter(
            "winspec_agent_connections_refused_total",
            "Connections closed at once or made to give way, by reason",
            ["reason"],
            registry=registry,
        )
        for result in ("hit", "miss"):
            cache.labels(result)
        for reason in CONNECTION_REFUSALS:
            refused.labels(reason)
        drift = Counter(
            "winspec_agent_bundle_drift_total",
            "Bundles found on disk differing from their content on an upload of it, and "
            "rewritten, by kind: modified, missing, extra",
            ["kind"],
            registry=registry,
        )
        for kind in DRIFT_KINDS:
            drift.labels(kind)
        return cls(
            requests, seconds, bundles, received, reviews, cache, ready, connections, refused, drift
        )
