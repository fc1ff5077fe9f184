"""The agent's token checks: verdicts, the allow list and the review cache.

The reviewer here is a scripted stand-in that counts calls (the real TokenReview is exercised in
tests/integration/test_agent.py); the clock is a variable, so TTLs are checked exactly.
"""

from __future__ import annotations

import asyncio

import pytest

from adapters.agent.auth import Authenticator, Review, ReviewBudgetError, Verdict
from controller.errors import PermanentError, TransientError

ALLOWED = "system:serviceaccount:winspec:controller"


class Reviewer:
    """Answers from a table of token -> username ("" = not authenticated); counts calls."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users
        self.calls: list[tuple[str, str]] = []
        self.fail = False

    async def review(self, token: str, audience: str) -> Review:
        """The scripted verdict."""
        self.calls.append((token, audience))
        if self.fail:
            raise TransientError("API server unreachable")
        user = self.users.get(token, "")
        return Review(authenticated=bool(user), username=user)


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _auth(reviewer: Reviewer, clock: Clock, **kw: float) -> Authenticator:
    return Authenticator(
        reviewer,
        audience="winspec-agent",
        allowed=[ALLOWED],
        ttl=kw.get("ttl", 60.0),
        negative_ttl=kw.get("negative_ttl", 5.0),
        max_entries=int(kw.get("max_entries", 100)),
        clock=clock,
    )


@pytest.mark.parametrize(
    ("header", "verdict"),
    [
        (None, Verdict.UNAUTHENTICATED),
        ("", Verdict.UNAUTHENTICATED),
        ("Basic dXNlcjpwdw==", Verdict.UNAUTHENTICATED),
        ("Bearer", Verdict.UNAUTHENTICATED),
        ("Bearer unknown", Verdict.UNAUTHENTICATED),
        ("Bearer other-token", Verdict.FORBIDDEN),
        ("Bearer good-token", Verdict.ALLOWED),
        ("bearer good-token", Verdict.ALLOWED),
        ("Bearer good token", Verdict.UNAUTHENTICATED),
        ("Bearer g\u00f6od", Verdict.UNAUTHENTICATED),
    ],
)
async def test_verdicts(header: str | None, verdict: str) -> None:
    """Allowed identity → allowed; other valid identity → forbidden; anything else → 401."""
    reviewer = Reviewer({"good-token": ALLOWED, "other-token": "system:serviceaccount:x:y"})
    got, _ = await _auth(reviewer, Clock()).check(header)
    assert got == verdict


async def test_headers_that_are_no_bearer_token_cost_no_review() -> None:
    """A missing or malformed header is refused without asking the API server."""
    reviewer = Reviewer({})
    auth = _auth(reviewer, Clock())
    for header in (None, "Basic x", "Bearer a b", "Bearer " + "x" * 20000):
        assert (await auth.check(header))[0] == Verdict.UNAUTHENTICATED
    assert reviewer.calls == []


async def test_the_audience_is_sent_with_every_review() -> None:
    """Each review names the agent's audience."""
    reviewer = Reviewer({"good-token": ALLOWED})
    await _auth(reviewer, Clock()).check("Bearer good-token")
    assert reviewer.calls == [("good-token", "winspec-agent")]


async def test_an_accepted_token_is_reviewed_again_only_after_the_ttl() -> None:
    """Within the TTL the cached verdict is used; after it the API server is asked again."""
    reviewer, clock = Reviewer({"t": ALLOWED}), Clock()
    auth = _auth(reviewer, clock, ttl=60.0)
    for _ in range(3):
        assert (await auth.check("Bearer t"))[0] == Verdict.ALLOWED
    assert len(reviewer.calls) == 1
    clock.now += 61
    reviewer.users.clear()  # revoked meanwhile
    assert (await auth.check("Bearer t"))[0] == Verdict.UNAUTHENTICATED
    assert len(reviewer.calls) == 2


async def test_a_refusal_is_cached_for_the_shorter_ttl() -> None:
    """A refused token is asked about again after the negative TTL, not the full one."""
    reviewer, clock = Reviewer({}), Clock()
    auth = _auth(reviewer, clock, ttl=60.0, negative_ttl=5.0)
    await auth.check("Bearer new")
    await auth.check("Bearer new")
    assert len(reviewer.calls) == 1
    clock.now += 6
    reviewer.users["new"] = ALLOWED  # e.g. the account was just created
    assert (await auth.check("Bearer new"))[0] == Verdict.ALLOWED
    assert len(reviewer.calls) == 2


async def test_the_cache_is_bounded_least_recently_used_first() -> None:
    """With max_entries reached, the least recently used token's verdict is dropped."""
    reviewer = Reviewer({f"t{i}": ALLOWED for i in range(3)})
    auth = _auth(reviewer, Clock(), max_entries=2)
    await auth.check("Bearer t0")
    await auth.check("Bearer t1")
    await auth.check("Bearer t0")  # t0 now most recent
    await auth.check("Bearer t2")  # evicts t1
    reviewer.calls.clear()
    await auth.check("Bearer t0")
    await auth.check("Bearer t1")
    assert [token for token, _ in reviewer.calls] == ["t1"]


async def test_an_unreachable_api_server_is_never_cached() -> None:
    """A failed review raises TransientError; the next request asks again."""
    reviewer = Reviewer({"t": ALLOWED})
    auth = _auth(reviewer, Clock())
    reviewer.fail = True
    with pytest.raises(TransientError):
        await auth.check("Bearer t")
    reviewer.fail = False
    assert (await auth.check("Bearer t"))[0] == Verdict.ALLOWED
    assert len(reviewer.calls) == 2


def test_an_empty_allow_list_is_refused() -> None:
    """An authenticator that would allow nobody is a configuration error."""
    with pytest.raises(PermanentError):
        Authenticator(Reviewer({}), audience="a", allowed=[])


class SlowReviewer(Reviewer):
    """Answers only once ``release`` is set, so requests pile up behind one review."""

    def __init__(self, users: dict[str, str]) -> None:
        super().__init__(users)
        self.release = asyncio.Event()

    async def review(self, token: str, audience: str) -> Review:
        """The scripted verdict, after ``release``."""
        self.calls.append((token, audience))
        await self.release.wait()
        if self.fail:
            raise TransientError("API server unreachable")
        user = self.users.get(token, "")
        return Review(authenticated=bool(user), username=user)


async def test_a_burst_with_one_new_token_costs_one_review() -> None:
    """Concurrent requests carrying the same uncached token share one TokenReview."""
    reviewer = SlowReviewer({"t": ALLOWED})
    auth = _auth(reviewer, Clock())
    checks = [asyncio.create_task(auth.check("Bearer t")) for _ in range(5)]
    await asyncio.sleep(0)
    reviewer.release.set()
    verdicts = await asyncio.gather(*checks)
    assert [v for v, _ in verdicts] == [Verdict.ALLOWED] * 5
    assert len(reviewer.calls) == 1


async def test_a_failed_shared_review_fails_every_waiter_and_is_not_remembered() -> None:
    """When the one review fails, every request waiting on it gets TransientError; the next asks."""
    reviewer = SlowReviewer({"t": ALLOWED})
    reviewer.fail = True
    auth = _auth(reviewer, Clock())
    checks = [asyncio.create_task(auth.check("Bearer t")) for _ in range(3)]
    await asyncio.sleep(0)
    reviewer.release.set()
    results = await asyncio.gather(*checks, return_exceptions=True)
    assert all(isinstance(r, TransientError) for r in results)
    assert len(reviewer.calls) == 1
    reviewer.fail = False
    assert (await auth.check("Bearer t"))[0] == Verdict.ALLOWED


async def test_unknown_tokens_never_evict_the_controllers_verdict() -> None:
    """A flood of refused tokens fills only the refusals' cache; the allowed verdict stays."""
    reviewer, clock = Reviewer({"good": ALLOWED}), Clock()
    auth = Authenticator(
        reviewer, audience="a", allowed=[ALLOWED], max_entries=4, review_burst=100, clock=clock
    )
    assert (await auth.check("Bearer good", "controller"))[0] == Verdict.ALLOWED
    for i in range(50):
        await auth.check(f"Bearer junk-{i}", "attacker")
    reviewer.calls.clear()
    assert (await auth.check("Bearer good", "controller"))[0] == Verdict.ALLOWED
    assert reviewer.calls == []


async def test_each_peer_has_its_own_review_budget() -> None:
    """Past its burst a peer gets ReviewBudgetError until it refills; another peer is unaffected."""
    reviewer, clock = Reviewer({"good": ALLOWED}), Clock()
    auth = Authenticator(
        reviewer, audience="a", allowed=[ALLOWED], review_rate=0.5, review_burst=3, clock=clock
    )
    for i in range(3):
        await auth.check(f"Bearer junk-{i}", "attacker")
    with pytest.raises(ReviewBudgetError) as caught:
        await auth.check("Bearer junk-3", "attacker")
    assert caught.value.retry_after == pytest.approx(2.0)
    assert len(reviewer.calls) == 3
    # A cached verdict costs nothing; another address has its whole budget.
    assert (await auth.check("Bearer junk-0", "attacker"))[0] == Verdict.UNAUTHENTICATED
    assert (await auth.check("Bearer good", "controller"))[0] == Verdict.ALLOWED
    clock.now += 2.0
    assert (await auth.check("Bearer junk-3", "attacker"))[0] == Verdict.UNAUTHENTICATED
    assert len(reviewer.calls) == 5
