"""Who may talk to the agent: bearer tokens checked with a ``TokenReview``, then an allow list.

Every ``/v1/`` request carries ``Authorization: Bearer <token>``, the controller's
service-account token. The agent asks the API server (``POST
/apis/authentication.k8s.io/v1/tokenreviews``, which its own account must be allowed to
``create``) whether the token is valid *for the agent's audience*: a token minted for the API
server or another service is refused, so a token stolen from elsewhere cannot be replayed here.
The server's answer lists the audiences it checked; one without the agent's audience (a server
that ignored the request's audiences) counts as not authenticated.

Answers are cached for a short time (bounded in size, least recently used out first; a refusal
for a shorter time than an acceptance, so a token that just became valid is not refused long).
Verdicts that let a request in and all others are kept apart, each bounded on its own, so a
flood of unknown tokens never evicts the controller's verdict. The caches are keyed by a SHA-256
of the token, so the maps hold no usable token. A failure to reach the API server is never
cached: it raises :class:`~controller.errors.TransientError`, which the server answers with 503.

Reviews of tokens not in the cache are budgeted per peer address (a token bucket: ``burst``
at once, then ``rate`` a second): a client that sends token after unknown token gets
:class:`ReviewBudgetError` (429 with ``Retry-After``) instead of costing the API server one
review each, and other clients keep their own budget.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

import msgspec

from adapters.kubernetes.client import KubeClient
from controller.errors import PermanentError, TransientError

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


@dataclass(frozen=True, slots=True)
class Review:
    """What the API server said about one token: authenticated, and as whom."""

    authenticated: bool
    username: str = ""


class TokenReviewer(Protocol):
    """Asks whether a token is valid for an audience (the API server's TokenReview)."""

    async def review(self, token: str, audience: str) -> Review:
        """The verdict; :class:`TransientError` when no verdict could be had."""
        ...


class _User(msgspec.Struct):
    username: str = ""


class _TokenReviewStatus(msgspec.Struct):
    authenticated: bool = False
    audiences: list[str] | None = None
    user: _User | None = None


class _TokenReview(msgspec.Struct):
    status: _TokenReviewStatus | None = None


class KubeTokenReviewer:
    """A :class:`TokenReviewer` on winspec's Kubernetes client (which it closes): the call is
    retried on connection errors, 429 and 5xx, and carries winspec's User-Agent."""

    def __init__(self, client: KubeClient) -> None:
        self._client = client

    async def review(self, token: str, audience: str) -> Review:
        """POST a TokenReview; the server's verdict."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }
        try:
            raw = await self._client.request(
                "POST", TOKEN_REVIEW_PATH, body=body, api="token_review"
            )
            answer = msgspec.json.decode(raw, type=_TokenReview)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise TransientError(f"TokenReview failed: invalid answer: {exc}") from None
        except (PermanentError, TransientError) as exc:
            # 403: the agent's own account may not create TokenReviews (see its RBAC).
            raise TransientError(f"TokenReview failed: {exc}") from None
        status = answer.status
        if status is None or not status.authenticated:
            return Review(authenticated=False)
        # An audience-unaware server echoes no audiences: not a verdict about this audience.
        if audience not in (status.audiences or []):
            return Review(authenticated=False)
        username = status.user.username if status.user is not None else ""
        return Review(authenticated=bool(username), username=username)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.close()


class ReviewBudgetError(Exception):
    """This peer has used its TokenReviews for now; ``retry_after`` seconds until the next."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many unknown tokens; retry in {retry_after:.1f}s")
        self.retry_after = retry_after


class ReviewBudget:
    """A token bucket per peer: ``burst`` reviews at once, refilled at ``rate`` a second.

    At most ``max_peers`` buckets are kept (least recently used out first; a peer forgotten
    starts again with a full bucket, as a new one does).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_peers: int = 4096,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._max = max_peers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, peer: str) -> float:
        """Spend one review of ``peer``'s: 0 when it had one, else the seconds until it has."""
        now = self._clock()
        tokens, then = self._buckets.pop(peer, (self._burst, now))
        tokens = min(self._burst, tokens + (now - then) * self._rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self._rate
        self._buckets[peer] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait


class Verdict:
    """The outcome of checking one request's credentials."""

    ALLOWED = "allowed"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"


class Authenticator:
    """Checks bearer tokens: TokenReview (cached), then the allowed identities."""

    def __init__(
        self,
        reviewer: TokenReviewer,
        *,
        audience: str,
        allowed: Collection[str],
        ttl: float = 60.0,
        negative_ttl: float = 5.0,
        max_entries: int = 1024,
        review_rate: float = 1.0,
        review_burst: int = 10,
        clock: Callable[[], float] = time.monotonic,
        on_review: Callable[[str], None] | None = None,
        on_cache: Callable[[bool], None] | None = None,
    ) -> None:
        """``on_review`` is told each TokenReview's outcome (authenticated, rejected, error),
        ``on_cache`` whether an answer came from the cache. ``max_entries`` bounds each of the
        two caches (verdicts that let a request in, all others); ``review_rate`` and
        ``review_burst`` are each peer's :class:`ReviewBudget`."""
        if not allowed:
            raise PermanentError("at least one allowed identity is needed")
        self._reviewer = reviewer
        self._audience = audience
        self._allowed = frozenset(allowed)
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max = max_entries
        self._clock = clock
        self._on_review = on_review or (lambda _: None)
        self._on_cache = on_cache or (lambda _: None)
        self._budget = ReviewBudget(review_rate, review_burst, clock=clock)
        # Verdicts that let a request in, apart from all others: unknown tokens cannot evict them.
        self._allowing: OrderedDict[bytes, tuple[float, Review]] = OrderedDict()
        self._refusing: OrderedDict[bytes, tuple[float, Review]] = OrderedDict()
        # Reviews in progress, so a burst of requests with one new token asks only once.
        self._pending: dict[bytes, asyncio.Future[Review]] = {}

    async def check(self, authorization: str | None, peer: str = "") -> tuple[str, str]:
        """The verdict on an ``Authorization`` header and the identity it proved (or "");
        :class:`ReviewBudgetError` when the token needs a review and ``peer`` (the
        client's address) has none left."""
        token = _bearer_token(authorization)
        if token is None:
            return Verdict.UNAUTHENTICATED, ""
        review = await self._review(token, peer)
        if not review.authenticated:
            return Verdict.UNAUTHENTICATED, ""
        if review.username not in self._allowed:
            return Verdict.FORBIDDEN, review.username
        return Verdict.ALLOWED, review.username

    async def probe(self) -> None:
        """Ask the API server about a token that cannot be valid: raises
        :class:`TransientError` unless the server is reachable and lets the agent ask."""
        await self._reviewer.review("winspec-agent-probe." + os.urandom(16).hex(), self._audience)

    async def _review(self, token: str, peer: str) -> Review:
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        for cache in (self._allowing, self._refusing):
            cached = cache.get(key)
            if cached is not None and cached[0] > now:
                cache.move_to_end(key)
                self._on_cache(True)
                return cached[1]
        self._on_cache(False)
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        wait = self._budget.take(peer)
        if wait > 0:
            raise ReviewBudgetError(wait)
        future: asyncio.Future[Review] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            review = await self._reviewer.review(token, self._audience)
        except BaseException as exc:
            self._on_review("error")
            future.set_exception(
                exc
                if isinstance(exc, TransientError)
                else TransientError("token review interrupted")
            )
            future.exception()  # retrieved here: waiters, if any, get it too
            raise
        finally:
            del self._pending[key]
        future.set_result(review)
        self._on_review("authenticated" if review.authenticated else "rejected")
        ttl = self._ttl if review.authenticated else self._negative_ttl
        allowing = review.authenticated and review.username in self._allowed
        cache, other = (
            (self._allowing, self._refusing) if allowing else (self._refusing, self._allowing)
        )
        other.pop(key, None)
        cache[key] = (self._clock() + ttl, review)
        cache.move_to_end(key)
        while len(cache) > self._max:
            cache.popitem(last=False)
        return review


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    # A JWT or an opaque token: printable ASCII, no spaces; anything else is not worth a review.
    if scheme.lower() != "bearer" or not token or len(token) > 16384:
        return None
    if not token.isascii() or not token.isprintable() or " " in token:
        return None
    return token
