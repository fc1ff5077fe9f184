"""The cluster store's handling of watch events: what is news is decoded and queued, the echo
of winspec's own write is not."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from adapters.kubernetes.store import ClusterStore
from controller.cluster import WindowsContainer
from tests.clustermode import windows_container


def _object(version: str, **spec: Any) -> bytes:
    body = windows_container("web", **spec)
    body["metadata"].update(namespace="apps", resourceVersion=version, generation=1)
    return json.dumps(body).encode()


def test_the_echo_of_winspecs_own_write_queues_nothing() -> None:
    """An event of a version already cached (or older) queues nothing; a newer one is queued."""
    queued: list[str] = []
    store = ClusterStore(enqueue=queued.append)
    store.remember(_object("10"))
    assert queued == []
    store.on_container_event("MODIFIED", msgspec.Raw(_object("10", args=["other"])))
    store.on_container_event("MODIFIED", msgspec.Raw(_object("9", args=["older"])))
    cached = store.cache["apps/web"]
    assert isinstance(cached, WindowsContainer)
    assert (cached.metadata.resource_version, queued) == ("10", [])

    store.on_container_event("MODIFIED", msgspec.Raw(_object("11", args=["newer"])))
    cached = store.cache["apps/web"]
    assert isinstance(cached, WindowsContainer)
    assert (cached.metadata.resource_version, queued) == ("11", ["apps/web"])


def test_an_event_for_an_object_not_yet_cached_is_decoded_and_queued() -> None:
    """A watch event for an object the store has not seen is cached and its key queued."""
    queued: list[str] = []
    store = ClusterStore(enqueue=queued.append)
    store.on_container_event("ADDED", msgspec.Raw(_object("5")))
    assert queued == ["apps/web"]
    assert isinstance(store.cache["apps/web"], WindowsContainer)
