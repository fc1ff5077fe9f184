"""Tests of HealthState, the named readiness conditions behind /readyz."""

from __future__ import annotations

import pytest

from controller.health import HealthState


def test_registered_conditions_start_not_ready() -> None:
    """Every registered condition is false until reported, listed in registration order."""
    health = HealthState(["docker-events"])
    health.register("initial-list")

    assert not health.is_ready()
    assert health.not_ready() == ["docker-events", "initial-list"]


def test_ready_once_every_condition_is_true() -> None:
    """is_ready holds only when all conditions are true, and drops when one turns false."""
    health = HealthState(["a", "b"])
    health.set_ready("a", True)
    assert not health.is_ready()
    health.set_ready("b", True)
    assert health.is_ready()
    assert health.not_ready() == []
    health.set_ready("a", False)
    assert health.not_ready() == ["a"]


def test_no_conditions_means_ready() -> None:
    """With nothing to wait for, the process is ready."""
    assert HealthState().is_ready()


def test_registering_again_keeps_the_state() -> None:
    """Registering a known name does not reset it to not ready."""
    health = HealthState(["a"])
    health.set_ready("a", True)
    health.register("a")
    assert health.is_ready()


def test_unknown_condition_is_a_wiring_bug() -> None:
    """Reporting a name nobody registered raises KeyError instead of being ignored."""
    with pytest.raises(KeyError, match="typo"):
        HealthState(["docker-events"]).set_ready("typo", True)


def test_empty_name_is_refused() -> None:
    """A condition needs a name."""
    with pytest.raises(ValueError, match="name"):
        HealthState([""])
