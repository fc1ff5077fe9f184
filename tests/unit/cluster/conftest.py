"""Fixtures of the cluster adapter unit tests: an in-process API server and a client of it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.kubernetes.client import KubeClient
from tests.unit.cluster.apiserver import FakeAPIServer, serving


@pytest.fixture
def fake_api() -> FakeAPIServer:
    """The in-memory API server's state (objects, events, pods, calls)."""
    return FakeAPIServer()


@pytest.fixture
async def kube_client(fake_api: FakeAPIServer) -> AsyncIterator[KubeClient]:
    """A real KubeClient of ``fake_api``, served on a loopback port."""
    async with serving(fake_api) as client:
        yield client
