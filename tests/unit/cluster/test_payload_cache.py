"""The payload cache of cluster mode's resolver: a Secret or ConfigMap read once is kept until
its watch reports a change, and a read that a change overtook is never kept."""

from __future__ import annotations

from adapters.kubernetes.payloads import PayloadCache
from controller.cluster import CONFIG_MAP, SECRET

DB = (SECRET, "apps", "db")
WEB = (CONFIG_MAP, "apps", "web")


def test_a_read_is_kept_until_its_object_changes() -> None:
    """A finished read is served from the cache until the watch reports that object."""
    cache: PayloadCache[str] = PayloadCache()
    cache.begin(DB)
    cache.end(DB, "v1")
    assert cache.get(DB) == "v1"
    cache.changed(WEB)  # another object: no effect
    assert cache.get(DB) == "v1"
    cache.changed(DB)
    assert cache.get(DB) is None


def test_a_read_overtaken_by_a_change_is_not_kept() -> None:
    """A change reported while a read is in flight (or two) keeps none of their answers."""
    cache: PayloadCache[str] = PayloadCache()
    cache.begin(DB)
    cache.begin(DB)
    cache.changed(DB)
    cache.end(DB, "stale")
    cache.end(DB, "stale too")
    assert cache.get(DB) is None
    cache.begin(DB)  # a read after the change: kept
    cache.end(DB, "fresh")
    assert cache.get(DB) == "fresh"


def test_a_failed_read_keeps_nothing() -> None:
    """A read that failed (None) leaves no entry."""
    cache: PayloadCache[str] = PayloadCache()
    cache.begin(DB)
    cache.end(DB, None)
    assert (cache.get(DB), len(cache)) == (None, 0)


def test_a_list_of_a_kind_forgets_every_object_of_that_kind_only() -> None:
    """A list of Secrets drops the Secrets kept or in flight; the ConfigMaps stay."""
    cache: PayloadCache[str] = PayloadCache()
    for ref, value in ((DB, "secret"), (WEB, "config")):
        cache.begin(ref)
        cache.end(ref, value)
    other = (SECRET, "apps", "other")
    cache.begin(other)
    cache.clear(SECRET)
    cache.end(other, "stale")
    assert (cache.get(DB), cache.get(other), cache.get(WEB)) == (None, None, "config")


def test_the_cache_holds_at_most_its_limit_oldest_first_out() -> None:
    """Past ``max_entries`` the oldest entry goes."""
    cache: PayloadCache[int] = PayloadCache(max_entries=2)
    refs = [(SECRET, "apps", f"s{i}") for i in range(3)]
    for i, ref in enumerate(refs):
        cache.begin(ref)
        cache.end(ref, i)
    assert [cache.get(ref) for ref in refs] == [None, 1, 2]
