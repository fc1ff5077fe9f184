"""The bundle checker of the node tests (tests/bundlewatch.py) counts versions as the writer
makes them: a write of new content is a new version, an unchanged one is none."""

from __future__ import annotations

from pathlib import Path

from adapters.bundles.namespaced import NamespacedBundleWriter
from controller.bundle import BundleContent
from tests.bundlewatch import TreeWatch, version_of


def _content(line: str) -> BundleContent:
    return BundleContent(files={"config.json": f'{{"args": ["{line}"]}}'.encode()})


async def test_every_write_is_a_new_version_and_an_unchanged_one_none(tmp_path: Path) -> None:
    """Snapshot and reads see a new version per changed write, the same one after unchanged."""
    writer = NamespacedBundleWriter(tmp_path)
    watch = TreeWatch(tmp_path)
    try:
        await writer.write("ns/a", _content("one"))
        await writer.write("ns/b", _content("one"))
        watch.check()
        before = watch.snapshot()
        a, b = tmp_path / "ns" / "a", tmp_path / "ns" / "b"
        assert set(before) == {a, b}
        assert await writer.write("ns/a", _content("one")) is False
        assert watch.snapshot() == before
        for line in ("two", "three"):
            assert await writer.write("ns/b", _content(line)) is True
            watch.check()
        after = watch.snapshot()
        assert after[a] == before[a]
        assert len({before[b], after[b]}) == 2
        assert watch.versions(a) == [before[a]]
        assert len(watch.versions(b)) == 3
        assert watch.versions(b)[-1] == after[b] == version_of(b)
        assert watch.torn == []
    finally:
        writer.close()
