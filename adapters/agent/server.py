"""The agent's HTTP API: bundles in, bundles out, behind TLS and a bearer token.

Routes (every ``/v1/`` request authenticated first, see :mod:`adapters.agent.auth`):

* ``PUT /v1/bundles/<namespace>/<name>``: write the bundle in the body
  (:mod:`adapters.agentapi.wire`); 200 with the digest the agent keeps, ``changed`` false when
  the same content was already there (nothing rewritten).
* ``DELETE /v1/bundles/<namespace>/<name>``: remove it; 200, ``changed`` false when absent.
* ``GET /v1/bundles``: every bundle with its digest, for a resync.
* ``GET /v1/node``: the agent's bundle root, as the node names it (the controller generates
  each spec's payload mounts below it).
* ``/healthz``, ``/readyz``, ``/metrics`` (:mod:`adapters.http`), without a token: the
  kubelet's probes and Prometheus carry none, and none of them shows a bundle.

Refusals are JSON :class:`~adapters.agentapi.wire.ErrorBody`: 400 a malformed id or body, a MAC
that does not match or a DELETE without its ``Winspec-Issued`` header, 401 no token or one the
API server does not accept for the agent's audience, 403 a valid token of an identity not
allowed, 408 a body not received within the body timeout, 409 a replayed request or one older
than the newest accepted for its bundle (:class:`~adapters.agentapi.wire.ReplayGuard`), 413 a body
over the limit, 415 another content type, 429 a peer that sent more unknown tokens than its
TokenReview budget (with ``Retry-After``), 503 the API server or the bundle root unusable. A
refused request writes nothing.
Logs name the id, the identity and the reason; never a token or a byte of a payload.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry

from adapters.agent.auth import Authenticator, ReviewBudgetError, Verdict
from adapters.agent.metrics import AgentMetrics
from adapters.agent.store import AgentStore
from adapters.agentapi.wire import (
    API_PREFIX,
    BUNDLE_CONTENT_TYPE,
    ISSUED_HEADER,
    NODE_PATH,
    BundleEntry,
    BundleList,
    BundleState,
    ErrorBody,
    NodeInfo,
    Removal,
    ReplayError,
    ReplayGuard,
    decode_upload,
    parse_issued,
)
from adapters.http import build_app
from controller.bundle import drift_of, split_key
from controller.errors import PermanentError, TransientError
from controller.health import HealthState

log = logging.getLogger("winspec.agent")

STORE_KEY = web.AppKey("agent_store", AgentStore)
AUTH_KEY = web.AppKey("agent_auth", Authenticator)
METRICS_KEY = web.AppKey("agent_metrics", AgentMetrics)
LIMIT_KEY = web.AppKey("agent_max_request_bytes", int)
ROOT_KEY = web.AppKey("agent_bundle_root", str)
BODY_TIMEOUT_KEY = web.AppKey("agent_body_timeout", float)
REPLAY_KEY = web.AppKey("agent_replay_guard", ReplayGuard)
IDENTITY_KEY = "winspec_agent_identity"

READY_ROOT = "bundle-root"
READY_REVIEW = "token-review"

_CHUNK = 256 * 1024
_encoder = msgspec.json.Encoder()
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_agent_app(
    *,
    store: AgentStore,
    authenticator: Authenticator,
    registry: CollectorRegistry,
    health: HealthState,
    metrics: AgentMetrics,
    max_request_bytes: int,
    bundle_root: str,
    body_timeout: float,
    replay: ReplayGuard,
) -> web.Application:
    """The agent's application: the bundle API plus ``/metrics``, ``/healthz``, ``/readyz``.

    ``bundle_root`` is what ``GET /v1/node`` reports: the root as the node names it. A body
    must arrive whole within ``body_timeout`` seconds; ``replay`` admits uploads."""
    app = build_app(registry=registry, health=health)
    app[STORE_KEY] = store
    app[AUTH_KEY] = authenticator
    app[METRICS_KEY] = metrics
    app[LIMIT_KEY] = max_request_bytes
    app[ROOT_KEY] = bundle_root
    app[BODY_TIMEOUT_KEY] = body_timeout
    app[REPLAY_KEY] = replay
    app.middlewares.append(_guard)
    app.router.add_get(API_PREFIX, _list)
    app.router.add_get(NODE_PATH, _node)
    app.router.add_put(API_PREFIX + "/{id:.+}", _put)
    app.router.add_delete(API_PREFIX + "/{id:.+}", _delete)
    return app


def error(status: int, reason: str, message: str) -> web.Response:
    """A JSON refusal."""
    body = _encoder.encode(ErrorBody(reason=reason, message=message))
    return web.Response(status=status, body=body, content_type="application/json")


def _json(value: object) -> web.Response:
    return web.Response(body=_encoder.encode(value), content_type="application/json")


_RESULT_BY_STATUS = {
    400: "bad_request",
    415: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "not_found",
    408: "timeout",
    409: "replayed",
    413: "too_large",
    429: "throttled",
    503: "unavailable",
}
_UNCOUNTED = frozenset({"/metrics", "/healthz", "/readyz"})


def _operation(request: web.Request) -> str:
    if request.path == API_PREFIX and request.method == "GET":
        return "list"
    if request.path == NODE_PATH and request.method == "GET":
        return "node"
    if request.path.startswith(API_PREFIX + "/"):
        return {"PUT": "put", "DELETE": "delete"}.get(request.method, "other")
    return "other"


@web.middleware
async def _guard(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Authenticate every ``/v1/`` request before its handler; count and time every answer."""
    if request.path in _UNCOUNTED:
        return await handler(request)
    metrics = request.app[METRICS_KEY]
    operation = _operation(request)
    started = time.monotonic()
    status = 500
    try:
        response = await _authenticated(request, handler)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        if status < 400 or not request.path.startswith("/v1"):
            raise
        # No route or method: refused in the same JSON form as everything else.
        return error(status, exc.reason.replace(" ", ""), exc.reason)
    finally:
        result = "ok" if status < 400 else _RESULT_BY_STATUS.get(status, "error")
        metrics.requests.labels(operation, result).inc()
        metrics.request_seconds.labels(operation).observe(time.monotonic() - started)


async def _authenticated(request: web.Request, handler: _Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/") and request.path != "/v1":
        return await handler(request)
    try:
        verdict, identity = await request.app[AUTH_KEY].check(
            request.headers.get("Authorization"), request.remote or ""
        )
    except ReviewBudgetError as exc:
        log.info("request refused: too many unknown tokens", extra={"peer": request.remote})
        response = error(429, "TooManyTokenReviews", str(exc))
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response
    except TransientError as exc:
        log.warning("cannot check a token", extra={"error": str(exc)})
        return error(503, "TokenReviewUnavailable", "the token cannot be checked now; retry")
    if verdict == Verdict.UNAUTHENTICATED:
        log.info("request refused: no valid token", extra={"path": request.path})
        response = error(401, "Unauthenticated", "a valid bearer token for this agent is needed")
        response.headers["WWW-Authenticate"] = 'Bearer realm="winspec-agent"'
        return response
    if verdict == Verdict.FORBIDDEN:
        log.info(
            "request refused: identity not allowed",
            extra={"path": request.path, "identity": identity},
        )
        return error(403, "Forbidden", f"{identity} may not deliver bundles to this agent")
    request[IDENTITY_KEY] = identity
    return await handler(request)


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is longer than ``limit`` bytes (nothing more is kept)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


def _bundle_id(request: web.Request) -> str:
    bundle_id = request.match_info["id"]
    split_key(bundle_id)
    return bundle_id


async def _put(request: web.Request) -> web.Response:
    app = request.app
    try:
        bundle_id = _bundle_id(request)
    except PermanentError as exc:
        return error(400, "InvalidId", str(exc))
    if request.content_type != BUNDLE_CONTENT_TYPE:
        return error(415, "UnsupportedMediaType", f"the body must be {BUNDLE_CONTENT_TYPE}")
    limit = app[LIMIT_KEY]
    try:
        async with asyncio.timeout(app[BODY_TIMEOUT_KEY]):
            body = await _read_limited(request, limit)
    except TimeoutError:
        log.info("bundle refused: body too slow", extra={"bundle": bundle_id})
        response = error(
            408, "RequestTimeout", f"the body did not arrive within {app[BODY_TIMEOUT_KEY]:g}s"
        )
        response.force_close()
        return response
    if body is None:
        log.info("bundle refused: too large", extra={"bundle": bundle_id, "limit": limit})
        return error(413, "TooLarge", f"a bundle upload may be at most {limit} bytes")
    try:
        # Hashing megabytes takes milliseconds: not on the event loop.
        upload = await asyncio.to_thread(decode_upload, body, bundle_id)
        changed, digest = await app[STORE_KEY].put(
            bundle_id, upload.files, lambda: app[REPLAY_KEY].admit(bundle_id, upload.issued)
        )
    except ReplayError as exc:
        log.info("bundle refused: replayed", extra={"bundle": bundle_id, "error": str(exc)})
        return error(409, "Replayed", str(exc))
    except PermanentError as exc:
        log.info("bundle refused", extra={"bundle": bundle_id, "error": str(exc)})
        return error(400, "InvalidBundle", str(exc))
    except TransientError as exc:
        log.warning("bundle not written", extra={"bundle": bundle_id, "error": str(exc)})
        return error(503, "WriteFailed", str(exc))
    metrics = app[METRICS_KEY]
    metrics.bundles.labels("written" if changed else "unchanged").inc()
    metrics.received_bytes.inc(len(body))
    drift = drift_of(changed)
    for kind in drift:
        metrics.bundle_drift.labels(kind).inc()
    if drift:
        log.warning(
            "bundle drift repaired: the bundle on disk differed from its content",
            extra={"bundle": bundle_id, "drift": ", ".join(sorted(drift))},
        )
    log.info(
        "bundle written" if changed else "bundle unchanged",
        extra={"bundle": bundle_id, "identity": request.get(IDENTITY_KEY, "")},
    )
    return _json(
        BundleState(id=bundle_id, digest=digest, changed=bool(changed), drift=sorted(drift))
    )


async def _delete(request: web.Request) -> web.Response:
    app = request.app
    try:
        bundle_id = _bundle_id(request)
    except PermanentError as exc:
        return error(400, "InvalidId", str(exc))
    try:
        issued = parse_issued(request.headers.get(ISSUED_HEADER))
        removed = await app[STORE_KEY].delete(
            bundle_id, lambda: app[REPLAY_KEY].admit(bundle_id, issued)
        )
    except ReplayError as exc:
        log.info("removal refused: replayed", extra={"bundle": bundle_id, "error": str(exc)})
        return error(409, "Replayed", str(exc))
    except PermanentError as exc:
        return error(400, "InvalidIssued", str(exc))
    except TransientError as exc:
        log.warning("bundle not removed", extra={"bundle": bundle_id, "error": str(exc)})
        return error(503, "RemoveFailed", str(exc))
    app[METRICS_KEY].bundles.labels("removed" if removed else "absent").inc()
    if removed:
        log.info("bundle removed", extra={"bundle": bundle_id})
    return _json(Removal(id=bundle_id, changed=removed))


async def _list(request: web.Request) -> web.Response:
    try:
        found = await request.app[STORE_KEY].list_bundles()
    except TransientError as exc:
        return error(503, "ListFailed", str(exc))
    return _json(BundleList(bundles=[BundleEntry(id=i, digest=d) for i, d in found]))


async def _node(request: web.Request) -> web.Response:
    return _json(NodeInfo(bundle_root=request.app[ROOT_KEY]))


async def watch_readiness(
    store: AgentStore,
    authenticator: Authenticator,
    health: HealthState,
    metrics: AgentMetrics,
    *,
    interval: float = 30.0,
    retry: float = 2.0,
) -> None:
    """Keep ``/readyz`` true: the bundle root usable and TokenReview answering. Runs until
    cancelled; checks every ``interval`` seconds while ready, every ``retry`` while not."""
    health.register(READY_ROOT)
    health.register(READY_REVIEW)
    last_error: dict[str, str | None] = {}
    while True:
        for name, check in ((READY_ROOT, store.check_root), (READY_REVIEW, authenticator.probe)):
            try:
                await check()
            except TransientError as exc:
                # Logged when it starts or changes, not every few seconds while it lasts.
                if last_error.get(name) != str(exc):
                    log.warning("not ready", extra={"condition": name, "error": str(exc)})
                last_error[name] = str(exc)
                health.set_ready(name, False)
            else:
                if last_error.get(name):
                    log.info("ready again", extra={"condition": name})
                last_error[name] = None
                health.set_ready(name, True)
        ready = health.is_ready()
        metrics.ready.set(1 if ready else 0)
        await asyncio.sleep(interval if ready else retry)
