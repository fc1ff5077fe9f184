"""RepeatFilter: repeated log lines are bounded per kind and summarised, others pass."""

from __future__ import annotations

import logging

from adapters.logs import RepeatFilter


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(
    msg: str, level: int = logging.WARNING, name: str = "winspec.agent"
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_a_repeated_line_is_cut_after_its_burst_and_summarised_later() -> None:
    """Past the burst a kind is dropped; its first line after the interval counts the dropped."""
    clock = Clock()
    f = RepeatFilter(burst=3, interval=10.0, clock=clock)
    passed = [f.filter(_record("connection refused")) for _ in range(10)]
    assert passed == [True] * 3 + [False] * 7
    clock.now += 10.0
    later = _record("connection refused")
    assert f.filter(later)
    assert later.suppressed == 7  # type: ignore[attr-defined]  # set by the filter


def test_other_kinds_are_counted_apart() -> None:
    """Another message, level or logger has a burst of its own."""
    f = RepeatFilter(burst=1, interval=10.0, clock=Clock())
    assert f.filter(_record("a"))
    assert not f.filter(_record("a"))
    assert f.filter(_record("b"))
    assert f.filter(_record("a", level=logging.INFO))
    assert f.filter(_record("a", name="asyncio"))


def test_the_kinds_tracked_are_bounded() -> None:
    """At most max_kinds kinds are remembered; the oldest is forgotten first."""
    f = RepeatFilter(burst=1, interval=10.0, max_kinds=2, clock=Clock())
    for msg in ("a", "b", "c"):
        assert f.filter(_record(msg))
    assert f.filter(_record("a"))  # forgotten, so new again
    assert not f.filter(_record("c"))
