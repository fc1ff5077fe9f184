"""The finalizing writer (adapters/kubernetes/bundles.py) against an in-process API server:
the finalizer goes on before a bundle exists and comes off only after it is gone.

The bundles are written by the real NamespacedBundleWriter under a temporary directory. The same
writer against the real kube-apiserver: tests/integration/test_cluster_mode.py and
test_remote_deletion.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.bundles.namespaced import NamespacedBundleWriter
from adapters.kubernetes.bundles import BundleAbandonedError, FinalizingWriter
from adapters.kubernetes.client import ConflictError, KubeClient
from controller.bundle import BundleContent
from controller.cluster import FINALIZER, ObjectMeta, WindowsContainer
from controller.errors import RequestDecodeError, TransientError
from tests.unit.cluster.apiserver import FakeAPIServer, wc_path, windows_container

OTHER = "example.com/keep"
DELETING = "2026-01-01T00:00:00Z"
CONTENT = BundleContent(files={"config.json": b'{"ociVersion": "1.1.0"}'})


class Writers:
    """A FinalizingWriter over a NamespacedBundleWriter at ``root``, with the source's cache."""

    def __init__(self, api: FakeAPIServer, client: KubeClient, root: Path) -> None:
        self.api = api
        self.client = client
        self.root = root
        self.cache: dict[str, WindowsContainer | RequestDecodeError] = {}
        self.released: dict[str, ObjectMeta] = {}
        self.remembered: list[bytes] = []
        self.abandoned: list[tuple[str, ObjectMeta | None, BundleAbandonedError]] = []
        self.inner = NamespacedBundleWriter(root, fsync_threads=0)
        self.writer = self.finalizing(self.inner)

    def finalizing(self, inner: Any) -> FinalizingWriter:
        """A FinalizingWriter around ``inner`` sharing this cache."""

        async def on_abandoned(
            key: str, meta: ObjectMeta | None, error: BundleAbandonedError
        ) -> None:
            self.abandoned.append((key, meta, error))

        return FinalizingWriter(
            inner, self.client, cache=self.cache, remember=self.remembered.append,
            released=self.released, on_abandoned=on_abandoned,
        )  # fmt: skip

    def add(self, name: str, **metadata: Any) -> str:
        """Store a WindowsContainer and cache it; its key."""
        key = self.api.add(windows_container("ns", name, **metadata))
        self.cache[key] = self.api.decoded(key)
        return key

    def finalizers(self, key: str) -> list[str] | None:
        """The stored object's finalizers (None: the object is gone)."""
        obj = self.api.get(key)
        return None if obj is None else obj["metadata"].get("finalizers", [])

    def bundle(self, key: str) -> Path:
        """The bundle directory of ``key``."""
        return self.root.joinpath(*key.split("/"))


class AbandoningWriter(NamespacedBundleWriter):
    """A bundle writer whose removals are given up (a node gone)."""

    async def remove(self, bundle_id: str) -> bool:
        """Give the removal up."""
        raise BundleAbandonedError("node gone", node="win-node-1", cause="node_deleted")


class FailingWriter(NamespacedBundleWriter):
    """A bundle writer whose removals fail for now (the bundle root unreachable)."""

    async def remove(self, bundle_id: str) -> bool:
        """Fail the removal."""
        raise TransientError("bundle root unreachable")


@pytest.fixture
def w(fake_api: FakeAPIServer, kube_client: KubeClient, tmp_path: Path) -> Writers:
    """A finalizing writer over the in-process API server and a temporary bundle root."""
    return Writers(fake_api, kube_client, tmp_path / "bundles")


async def test_the_finalizer_is_on_the_object_before_its_first_bundle_exists(
    w: Writers,
) -> None:
    """The finalizer is patched in (others kept, cached version sent) before the bundle exists."""
    key = w.add("web", finalizers=[OTHER])
    seen: list[bool] = []
    w.api.on_request = lambda method, path: seen.append(w.bundle(key).exists())
    assert await w.writer.write(key, CONTENT)
    assert (w.bundle(key) / "config.json").is_file()
    assert w.finalizers(key) == [OTHER, FINALIZER]
    [patch] = w.api.requests("PATCH", wc_path("ns", "web"))
    assert patch.body["metadata"]["resourceVersion"] == "1"
    assert seen == [False]
    assert w.remembered, "the patched object was not handed to the cache"


async def test_a_finalizer_already_there_costs_no_call(w: Writers) -> None:
    """Writing the bundle of an object that has the finalizer sends no request."""
    key = w.add("web", finalizers=[FINALIZER])
    assert await w.writer.write(key, CONTENT)
    assert w.api.calls == []


async def test_a_stale_copy_writes_no_bundle(w: Writers) -> None:
    """A 409 on the finalizer patch (stale cached copy) raises before any bundle is written."""
    key = w.add("web")
    w.api.get(key)["metadata"]["resourceVersion"] = "9"  # type: ignore[index]
    with pytest.raises(ConflictError):
        await w.writer.write(key, CONTENT)
    assert not w.bundle(key).exists()
    assert w.finalizers(key) == []


async def test_a_deleted_objects_finalizer_comes_off_after_its_bundle(w: Writers) -> None:
    """A deleted object's finalizer comes off (others kept) only once its bundle is gone."""
    key = w.add("web", finalizers=[FINALIZER])
    await w.writer.write(key, CONTENT)
    w.api.get(key)["metadata"].update(deletionTimestamp=DELETING, finalizers=[FINALIZER, OTHER])  # type: ignore[index]
    w.cache[key] = w.api.decoded(key)
    seen: list[bool] = []
    w.api.on_request = lambda method, path: seen.append(w.bundle(key).exists())
    assert await w.writer.remove(key)
    assert not w.bundle(key).exists()
    assert w.finalizers(key) == [OTHER]
    assert seen == [False]


async def test_the_last_finalizer_off_is_not_cached(w: Writers) -> None:
    """The answer to taking the last finalizer off (the object is gone) is not cached."""
    key = w.add("web", finalizers=[FINALIZER], deletionTimestamp=DELETING)
    assert not await w.writer.remove(key)
    assert w.finalizers(key) is None
    assert w.remembered == []


async def test_a_failed_removal_leaves_the_finalizer(w: Writers) -> None:
    """A removal that fails raises before the finalizer is touched: the object stays."""
    key = w.add("web", finalizers=[FINALIZER], deletionTimestamp=DELETING)
    writer = w.finalizing(FailingWriter(w.root, fsync_threads=0))
    with pytest.raises(TransientError, match="unreachable"):
        await writer.remove(key)
    assert w.api.calls == []
    assert w.finalizers(key) == [FINALIZER]


async def test_a_removal_given_up_releases_the_finalizer_of_an_object_being_deleted(
    w: Writers,
) -> None:
    """A removal given up releases a deleting object's finalizer and on_abandoned is told."""
    key = w.add("web", finalizers=[FINALIZER, OTHER], deletionTimestamp=DELETING)
    writer = w.finalizing(AbandoningWriter(w.root, fsync_threads=0))
    assert not await writer.remove(key)
    assert w.finalizers(key) == [OTHER]
    [(abandoned_key, meta, error)] = w.abandoned
    assert abandoned_key == key
    assert meta is not None
    assert meta.uid == "uid-web"
    assert error.cause == "node_deleted"


async def test_a_removal_given_up_for_a_live_object_stays_a_failure(w: Writers) -> None:
    """A removal given up for a live object (a stale bundle) raises and touches nothing."""
    key = w.add("web", finalizers=[FINALIZER])
    writer = w.finalizing(AbandoningWriter(w.root, fsync_threads=0))
    with pytest.raises(BundleAbandonedError):
        await writer.remove(key)
    assert w.api.calls == []
    assert w.abandoned == []


async def test_an_object_that_left_the_watched_set_is_released_from_its_current_version(
    w: Writers,
) -> None:
    """An unwatched object's finalizer comes off its re-read version, the answer not cached."""
    key = w.add("web", finalizers=[FINALIZER])
    await w.writer.write(key, CONTENT)
    entry = w.cache.pop(key)
    assert isinstance(entry, WindowsContainer)
    w.released[key] = entry.metadata
    w.api.get(key)["metadata"].update(resourceVersion="5", finalizers=[OTHER, FINALIZER])  # type: ignore[index]
    w.remembered.clear()
    assert await w.writer.remove(key)
    assert not w.bundle(key).exists()
    assert w.finalizers(key) == [OTHER]
    assert [c.method for c in w.api.calls] == ["GET", "PATCH"]
    assert w.api.calls[-1].body["metadata"]["resourceVersion"] == "5"
    assert w.released == {}
    assert w.remembered == []


async def test_releasing_an_object_deleted_meanwhile_is_no_error(w: Writers) -> None:
    """A released object that is gone by the time it is read (404) needs nothing more."""
    key = w.add("web", finalizers=[FINALIZER])
    entry = w.cache.pop(key)
    assert isinstance(entry, WindowsContainer)
    w.released[key] = entry.metadata
    del w.api.objects[wc_path("ns", "web")]
    assert not await w.writer.remove(key)
    assert w.released == {}
