"""The bundle writer's path for file systems without an atomic directory exchange (the one
Windows takes), on a real NTFS volume: Debian's ntfs-3g over FUSE, mounted with
``windows_names`` so that the names Windows refuses are refused (``tests/ntfs.py``).

ntfs-3g has no ``RENAME_EXCHANGE`` (it answers ``EINVAL``), so the writer's own probe sends it
down the fallback: a rewrite with unchanged payloads replaces ``links.json`` and ``config.json``
in place, one whose payloads changed renames the old bundle aside and the new one in. The tests
need root, ``/dev/fuse`` and ntfs-3g (``.ci/install-ntfs.sh``); without them they skip, or fail
with ``CI=true``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters.bundles import fsops
from adapters.bundles.digestkey import load_digest_key
from adapters.bundles.local import (
    DIGEST_FILE,
    KEY_FILE,
    OLD_PREFIX,
    TEMP_PREFIX,
    LocalBundleWriter,
    atomic_replace_supported,
)
from controller.bundle import CONFIG_FILE, LINKS_FILE, BundleContent
from controller.errors import PermanentError
from tests.bundlewatch import _read_version, _Repeated
from tests.ntfs import NtfsUnavailableError, ntfs_volume
from tests.ntfs_writer import FINAL, content

ROOT_DIR = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("WINSPEC_CRASH_SEED") or random.SystemRandom().randrange(2**32))
KILLS = 8
IDS = ["web-1", "3f" * 32, ".".join(["a" * 63] * 3 + ["b" * 61])]
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)


@pytest.fixture
def ntfs(tmp_path: Path) -> Iterator[Path]:
    """A fresh NTFS volume (ntfs-3g, windows_names) mounted in a temporary directory."""
    try:
        with ntfs_volume(tmp_path) as mountpoint:
            yield mountpoint
    except NtfsUnavailableError as exc:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"NTFS is required when CI=true but unavailable: {exc}", pytrace=False)
        pytest.skip(f"NTFS unavailable: {exc}")


def _tree(bundle: Path) -> dict[str, bytes]:
    return {
        path.relative_to(bundle).as_posix(): path.read_bytes()
        for path in bundle.rglob("*")
        if path.is_file()
    }


def _expected(bundle_content: BundleContent, root: Path) -> dict[str, bytes]:
    digest = bundle_content.keyed_digest((root / KEY_FILE).read_bytes())
    return {**bundle_content.files, DIGEST_FILE: f"{digest}\n".encode()}


async def test_ntfs_has_no_exchange_so_the_writer_takes_the_windows_path(ntfs: Path) -> None:
    """On NTFS (FUSE) there is no exchange and no group commit; rewrites stay whole."""
    root = ntfs / "bundles"
    assert atomic_replace_supported(root) is False
    assert fsops.group_sync(root) is None
    first, second = root / "first", root / "second"
    first.mkdir()
    second.mkdir()
    assert fsops.exchange(first, second) is False
    fsops.delete(first)
    fsops.delete(second)
    writer = LocalBundleWriter(root)
    try:
        assert await writer.atomic_replace_supported() is False
        bundle = root / "web-1"
        assert await writer.write("web-1", content("web-1", 0)) is True
        before = os.stat(bundle).st_ino, os.stat(bundle / "secrets").st_ino

        # Version 1 changes config.json and links.json only: updated in place, nothing renamed.
        assert await writer.write("web-1", content("web-1", 1)) is True
        assert (os.stat(bundle).st_ino, os.stat(bundle / "secrets").st_ino) == before
        assert _tree(bundle) == _expected(content("web-1", 1), root)

        # Version 3 changes the payloads: a new directory renamed in.
        assert await writer.write("web-1", content("web-1", 3)) is True
        assert os.stat(bundle).st_ino != before[0]
        assert _tree(bundle) == _expected(content("web-1", 3), root)
        assert await writer.write("web-1", content("web-1", 3)) is False
        assert sorted(os.listdir(root)) == [KEY_FILE, "web-1"]
    finally:
        writer.close()


def test_the_digest_key_is_kept_on_a_file_system_without_modes(ntfs: Path) -> None:
    """NTFS shows every file 0777 on Linux; the digest key is still created once and kept."""
    root = ntfs / "bundles"
    key = load_digest_key(root)
    assert os.stat(root / KEY_FILE).st_mode & 0o077  # what made it look exposed
    assert load_digest_key(root) == key
    assert sorted(os.listdir(root)) == [KEY_FILE]


async def test_every_name_the_writer_uses_is_legal_under_windows_names(ntfs: Path) -> None:
    """Bundles, leftovers of long ids, the key and payload names all exist on windows_names."""
    root = ntfs / "default"
    writer = LocalBundleWriter(root)
    try:
        for bundle_id in IDS:
            assert await writer.write(bundle_id, content(bundle_id, 0)) is True
            assert await writer.write(bundle_id, content(bundle_id, 4)) is True
            assert _tree(root / bundle_id) == _expected(content(bundle_id, 4), root)
        assert await writer.list_ids() == sorted(IDS)
        # A leftover of the longest id (its tag hashed) is a legal name, and swept.
        leftover = root / f"{TEMP_PREFIX}{'a' * 200}_{'0' * 32}-abcdefgh"
        leftover.mkdir()
        assert await writer.sweep(IDS[:1]) == sorted([leftover.name, *IDS[1:]])
        assert await writer.remove(IDS[0]) is True
        assert sorted(os.listdir(root)) == [KEY_FILE]
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("namespace", "bundle_id"), [("default", "con"), ("default", "aux.web"), ("com1", "web-1")]
)
async def test_a_windows_device_name_is_refused_permanently_on_ntfs(
    ntfs: Path, namespace: str, bundle_id: str
) -> None:
    """A bundle id or namespace that is a Windows device name: a permanent error, no leftover."""
    root = ntfs / "bundles"
    writer = LocalBundleWriter(root / namespace)
    try:
        with pytest.raises(PermanentError, match="device name under Windows' rules"):
            await writer.write(bundle_id, content(bundle_id, 0))
        assert await writer.list_ids() == []
        leftovers = [n for n in os.listdir(root) if n.startswith((TEMP_PREFIX, OLD_PREFIX))]
        if (root / namespace).is_dir():
            leftovers += [n for n in os.listdir(root / namespace) if n != KEY_FILE]
        assert leftovers == []
        # The same writer still writes a legal bundle beside it (unless its root is refused).
        if namespace == "default":
            assert await writer.write("web-2", content("web-2", 0)) is True
    finally:
        writer.close()


@dataclass
class FallbackWatch(_Repeated):
    """Reads every bundle of ``root`` over and over, checking what the fallback promises: a
    bundle present has every file, each whole and of some version, its payloads all of one
    version; a ``.digest`` there before and after a read (the same) matches what was read."""

    interval = 0.005
    root: Path
    whole: dict[str, int] = field(default_factory=dict)
    torn: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Read each bundle once."""
        for bundle_id in IDS:
            why = self._check(self.root / bundle_id, bundle_id)
            if why == "whole":
                self.whole[bundle_id] = self.whole.get(bundle_id, 0) + 1
            elif why not in ("absent", "moved", "updating"):
                self.torn.append(f"{bundle_id[:20]}: {why}")

    def _check(self, bundle: Path, bundle_id: str) -> str:
        try:
            fd = os.open(bundle, _DIR_FLAGS)
        except FileNotFoundError:
            return "absent"
        try:
            inode = os.fstat(fd).st_ino
            before = _digest_at(fd)
            files, digest, extra = _read_version(fd)
            after = _digest_at(fd)
            key = (self.root / KEY_FILE).read_bytes()
        except OSError:
            return "moved"  # renamed aside and being deleted while read
        finally:
            os.close(fd)
        try:
            if os.stat(bundle).st_ino != inode:
                return "moved"
        except FileNotFoundError:
            return "moved"
        if extra:
            return f"extra entries {extra}"
        if CONFIG_FILE not in files or LINKS_FILE not in files:
            return f"missing a file: {sorted(files)}"
        version = json.loads(files[CONFIG_FILE])["version"]
        links_version = json.loads(files[LINKS_FILE])["links"][0]["version"]
        payloads = int(files.get("secrets/db.password", b"password -1").split()[1])
        if files[CONFIG_FILE] != content(bundle_id, version).files[CONFIG_FILE]:
            return "config.json of no version"
        if files[LINKS_FILE] != content(bundle_id, links_version).files[LINKS_FILE]:
            return "links.json of no version"
        expected_payloads = {
            name: data
            for name, data in content(bundle_id, payloads * 3).files.items()
            if "/" in name
        }
        if {name: data for name, data in files.items() if "/" in name} != expected_payloads:
            return f"payloads partial or of two versions: {sorted(files)}"
        if before is not None and before == after == digest:
            if BundleContent(files=files).keyed_digest(key) != digest:
                return "files do not match their .digest"
            return "whole"
        return "updating"  # in place, between .digest going and coming back: allowed


def _digest_at(fd: int) -> str | None:
    try:
        file = os.open(DIGEST_FILE, os.O_RDONLY, dir_fd=fd)
    except FileNotFoundError:
        return None
    try:
        return os.read(file, 200).decode().strip()
    finally:
        os.close(file)


def _writer(root: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.ntfs_writer", str(root), mode, *IDS],
        cwd=ROOT_DIR,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.timeout(90)
def test_writer_killed_at_random_moments_on_ntfs_shows_no_torn_bundle(ntfs: Path) -> None:
    """SIGKILLed mid-write on NTFS, readers never see a torn bundle; a restart repairs all."""
    rng = random.Random(SEED)
    root = ntfs / "default"
    leftovers_seen = 0
    with FallbackWatch(root) as watch:
        for _ in range(KILLS):
            child = _writer(root, "churn")
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n", f"seed {SEED}: writer did not start"
            time.sleep(rng.uniform(0.1, 0.8))
            child.kill()
            child.wait(timeout=30)
            child.stdout.close()
            leftovers_seen += any(n.startswith((TEMP_PREFIX, OLD_PREFIX)) for n in os.listdir(root))
            key = (root / KEY_FILE).read_bytes()
        settle = _writer(root, "settle")
        assert settle.wait(timeout=60) == 0
        assert settle.stdout is not None
        settle.stdout.close()
        time.sleep(0.2)  # the readers see the final bundles too
    assert watch.torn == [], f"seed {SEED}"
    assert leftovers_seen > 0, f"seed {SEED}: no kill landed mid-write"
    assert all(watch.whole.get(bundle_id, 0) > 0 for bundle_id in IDS), watch.whole
    assert (root / KEY_FILE).read_bytes() == key  # one key across every restart
    # A reader holding a file of the version the settling writer renamed aside keeps it from
    # being deleted (ntfs-3g, as Windows, refuses to delete what is open), so the writer leaves
    # that `.old-` for the next sweep. With the readers gone, a restart's sweep takes it.
    stale = [n for n in os.listdir(root) if n not in (KEY_FILE, *IDS)]
    assert all(n.startswith(OLD_PREFIX) for n in stale), stale
    again = _writer(root, "settle")
    assert again.wait(timeout=60) == 0
    assert again.stdout is not None
    again.stdout.close()
    assert sorted(os.listdir(root)) == sorted([KEY_FILE, *IDS])
    for bundle_id in IDS:
        assert _tree(root / bundle_id) == _expected(content(bundle_id, FINAL), root)
    print(f"seed {SEED}: {KILLS} kills, {leftovers_seen} left leftovers, reads {watch.whole}")
