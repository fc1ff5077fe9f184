"""Whether the process is ready to serve, as a set of named conditions.

Readiness is the conjunction of conditions that other parts report, for example
``docker-events`` (the event stream is open and was listed after opening; a quiet stream being
re-opened after its idle timeout still counts) and ``initial-list`` (the first full list of
containers has been taken and every id in it queued for reconcile; the reconciles themselves
may still be running). Whoever composes the process registers the names, so a condition that is
never reported keeps the process unready instead of being forgotten. Pure: the HTTP endpoint
that exposes it lives in :mod:`adapters.http`.
"""

from __future__ import annotations

from collections.abc import Iterable


class HealthState:
    """Named readiness conditions, each false until reported true."""

    def __init__(self, conditions: Iterable[str] = ()) -> None:
        self._ready: dict[str, bool] = {}
        for name in conditions:
            self.register(name)

    def register(self, name: str) -> None:
        """Add a condition, not ready yet; registering a known name changes nothing."""
        if not name:
            raise ValueError("a readiness condition needs a name")
        self._ready.setdefault(name, False)

    def set_ready(self, name: str, ready: bool) -> None:
        """Report one condition; an unregistered name is a wiring bug and raises KeyError."""
        if name not in self._ready:
            raise KeyError(f"unknown readiness condition {name!r}")
        self._ready[name] = ready

    def is_ready(self) -> bool:
        """Whether every registered condition is true (also when none is registered)."""
        return all(self._ready.values())

    def not_ready(self) -> list[str]:
        """The names of the conditions that are false, in registration order."""
        return [name for name, ready in self._ready.items() if not ready]

    @property
    def conditions(self) -> dict[str, bool]:
        """A copy of every condition and its state, in registration order."""
        return dict(self._ready)
