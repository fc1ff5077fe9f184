"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from tests import ocireference
from tests.dockerd import DockerAPIError, DockerDaemon, DockerdError, dockerd_unavailable_reason
from tests.schema import SKIP_REASON, schema_available


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def pytest_sessionstart(session: pytest.Session) -> None:
    """On CI the OCI schema and Go types must be there: their checks skip locally, never on CI."""
    if not _on_ci():
        return
    if not schema_available():
        raise pytest.UsageError(f"CI=true but {SKIP_REASON}")
    reason = ocireference.unavailable_reason()
    if reason is not None:
        raise pytest.UsageError(f"CI=true but the OCI Go check is unavailable: {reason}")


def _dockerd_unavailable(reason: str) -> NoReturn:
    """Skip, or on CI (``CI=true``) fail: CI must really run the dockerd tests."""
    if _on_ci():
        pytest.fail(f"dockerd is required when CI=true but unavailable: {reason}", pytrace=False)
    pytest.skip(f"dockerd unavailable: {reason}")


def _start_dockerd() -> DockerDaemon:
    """A started private dockerd with an active single-node swarm and the test image."""
    reason = dockerd_unavailable_reason(probe=False)
    if reason is not None:
        _dockerd_unavailable(reason)
    daemon = DockerDaemon()
    try:
        daemon.start()
        daemon.init_swarm()
        daemon.import_image()
    except (DockerdError, DockerAPIError, OSError, TimeoutError) as exc:
        daemon.stop()
        _dockerd_unavailable(str(exc))
    return daemon


@pytest.fixture(scope="session")
def dockerd() -> Iterator[DockerDaemon]:
    """One private dockerd for the whole session (swarm active, ``winspec-test:latest`` imported).

    Shared: tests must not stop or restart it (use ``fresh_dockerd``) and should give their
    objects unique names.
    """
    daemon = _start_dockerd()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def fresh_dockerd() -> Iterator[DockerDaemon]:
    """A private dockerd for one test (swarm active, test image imported) to restart or stop."""
    daemon = _start_dockerd()
    try:
        yield daemon
    finally:
        daemon.stop()
