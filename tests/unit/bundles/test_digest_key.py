"""The bundle digests reveal nothing about secrets: the reconciler logs a digest under a random
per-process key and the writer's ``.digest`` uses the root's own key, kept in an owner-only
file that later runs read (so unchanged bundles stay unchanged across restarts)."""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import stat
import threading
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from adapters.bundles import fsops
from adapters.bundles.local import (
    KEY_FILE,
    LocalBundleWriter,
    load_digest_key,
    write_bundle_sync,
)
from controller.bundle import DIGEST_KEY_BYTES, BundleContent, build_bundle
from controller.errors import PermanentError
from controller.generate import generate
from controller.metrics import Metrics
from controller.models import Request, SecretRef
from controller.reconcile import BundleReconciler
from tests.fakes import FakeResolver
from tests.unit.spec.request_builders import CONTAINER_ID, decode, windows_request

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX modes, links and FIFOs")

SECRET_ID = "s3cr3tid0000000000000000"


def _request(secret: bytes) -> Request:
    """A container granted one swarm secret holding ``secret``."""
    ref = SecretRef(secret_id=SECRET_ID, secret_name="pin", target="pin", data=secret)
    return msgspec.structs.replace(decode(windows_request()), secrets=[ref])


def _unkeyed(files: dict[str, bytes]) -> str:
    """The digest of earlier releases: SHA-256 over every path, length and content, no key."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + len(files[name]).to_bytes(8, "big") + files[name])
    return h.hexdigest()


def _content(secret: bytes) -> BundleContent:
    request = _request(secret)
    return build_bundle(request, generate(request))


async def test_a_four_digit_secret_is_not_recovered_from_the_logged_or_stored_digest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """10^4 guesses of the unkeyed formula match neither the logged digest nor .digest."""
    secret = b"4821"
    writer = LocalBundleWriter(tmp_path)
    reconciler = BundleReconciler(
        resolver=FakeResolver({CONTAINER_ID: _request(secret)}),
        writer=writer,
        metrics=Metrics(CollectorRegistry(), controller="bundles"),
    )
    try:
        with caplog.at_level(logging.INFO, logger="controller.reconcile"):
            await reconciler.reconcile(CONTAINER_ID)
    finally:
        writer.close()
    logged = [r.__dict__["digest"] for r in caplog.records if "digest" in r.__dict__]
    stored = (tmp_path / CONTAINER_ID / ".digest").read_text().strip()
    assert len(logged) == 1
    assert (tmp_path / CONTAINER_ID / "secrets" / SECRET_ID).read_bytes() == secret

    # The attacker's view: every file but the secret is known (config.json follows from inspect
    # data), so each guess gives the whole content; none may match what was published.
    recovered = [
        guess
        for n in range(10_000)
        for guess in [f"{n:04d}".encode()]
        if _unkeyed(_content(guess).files) in (logged[0], stored)
    ]
    assert recovered == []
    # The attack is sound: the right guess rebuilds the bundle byte for byte, so with the
    # unkeyed digest of earlier releases it would have matched.
    on_disk = {
        p.relative_to(tmp_path / CONTAINER_ID).as_posix(): p.read_bytes()
        for p in (tmp_path / CONTAINER_ID).rglob("*")
        if p.is_file() and p.name != ".digest"
    }
    assert _content(secret).files == on_disk


def _writer_tree(root: Path) -> dict[str, str]:
    """Every file below ``root`` (the key's bytes shown in base64), by relative path."""
    return {
        p.relative_to(root).as_posix(): base64.b64encode(p.read_bytes()).decode()
        for p in root.rglob("*")
        if p.is_file()
    }


@posix_only
def test_the_key_is_created_owner_only_and_its_digest_is_stored(tmp_path: Path) -> None:
    """The first write creates a 32-byte mode-0600 key; .digest is the HMAC under it."""
    content = _content(b"pin")
    assert write_bundle_sync(tmp_path, CONTAINER_ID, content) is True

    key_path = tmp_path / KEY_FILE
    key = key_path.read_bytes()
    assert len(key) == DIGEST_KEY_BYTES
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    stored = (tmp_path / CONTAINER_ID / ".digest").read_text().strip()
    assert stored == content.keyed_digest(key)
    assert stored != content.digest


async def test_a_restarted_writer_finds_unchanged_bundles_unchanged(tmp_path: Path) -> None:
    """A second writer on the same root (a restart) reads the key and rewrites nothing."""
    first = LocalBundleWriter(tmp_path)
    try:
        assert await first.write(CONTAINER_ID, _content(b"pin")) is True
    finally:
        first.close()
    before = _writer_tree(tmp_path)
    second = LocalBundleWriter(tmp_path)
    try:
        assert await second.sweep({CONTAINER_ID}) == []
        assert await second.write(CONTAINER_ID, _content(b"pin")) is False
        assert await second.write(CONTAINER_ID, _content(b"pin2")) is True
    finally:
        second.close()
    assert _writer_tree(tmp_path)[KEY_FILE] == before[KEY_FILE]


@posix_only
def test_a_key_that_is_a_link_is_refused(tmp_path: Path) -> None:
    """A digest key that is a symbolic link (even to a good key) is a PermanentError."""
    elsewhere = tmp_path / "planted"
    elsewhere.write_bytes(b"k" * DIGEST_KEY_BYTES)
    elsewhere.chmod(0o600)
    root = tmp_path / "bundles"
    root.mkdir()
    (root / KEY_FILE).symlink_to(elsewhere)

    with pytest.raises(PermanentError, match="link"):
        write_bundle_sync(root, CONTAINER_ID, _content(b"pin"))
    assert not (root / CONTAINER_ID).exists()


@posix_only
@pytest.mark.timeout(10)
def test_a_key_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO in place of the key is refused at once (no reader blocks on it)."""
    os.mkfifo(tmp_path / KEY_FILE, 0o600)

    with pytest.raises(PermanentError, match="not a regular file"):
        load_digest_key(tmp_path)


@posix_only
@pytest.mark.parametrize(
    ("data", "mode"),
    [(b"short", 0o600), (b"k" * (DIGEST_KEY_BYTES + 1), 0o600), (b"k" * DIGEST_KEY_BYTES, 0o644)],
    ids=["short", "long", "readable-by-others"],
)
def test_an_unusable_key_is_replaced_and_bundles_rewritten_once(
    tmp_path: Path, data: bytes, mode: int
) -> None:
    """A key of the wrong length or readable by others is replaced by a fresh owner-only one."""
    content = _content(b"pin")
    write_bundle_sync(tmp_path, CONTAINER_ID, content)
    (tmp_path / KEY_FILE).write_bytes(data)
    (tmp_path / KEY_FILE).chmod(mode)

    assert write_bundle_sync(tmp_path, CONTAINER_ID, content) is True
    assert write_bundle_sync(tmp_path, CONTAINER_ID, content) is False
    key = (tmp_path / KEY_FILE).read_bytes()
    assert len(key) == DIGEST_KEY_BYTES
    assert key != data
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == sorted([KEY_FILE, CONTAINER_ID])


def test_writers_racing_to_create_the_key_agree_on_one(tmp_path: Path) -> None:
    """Eight threads creating the key at once all get the same key, and nothing is left over."""
    start = threading.Barrier(8)
    keys: list[bytes] = []

    def load() -> None:
        start.wait()
        keys.append(load_digest_key(tmp_path))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(keys) == 8
    assert set(keys) == {(tmp_path / KEY_FILE).read_bytes()}
    assert os.listdir(tmp_path) == [KEY_FILE]


def test_a_file_system_without_hard_links_still_gets_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where os.link is not supported, the key is renamed into place instead."""

    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    key = load_digest_key(tmp_path)

    assert (tmp_path / KEY_FILE).read_bytes() == key
    assert load_digest_key(tmp_path) == key
    assert os.listdir(tmp_path) == [KEY_FILE]


class _DiedError(Exception):
    """Stands for the process dying at that point: nothing after it runs, no clean-up."""


async def test_a_key_file_a_crash_left_half_made_is_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary file of a key creation that died before linking it is deleted by the sweep."""

    def die(src: object, dst: object) -> None:
        raise _DiedError

    with monkeypatch.context() as patched:
        patched.setattr(fsops, "discard", lambda path: None)
        patched.setattr(os, "link", die)
        with pytest.raises(_DiedError):
            load_digest_key(tmp_path)
    leftovers = os.listdir(tmp_path)
    assert len(leftovers) == 1
    assert KEY_FILE not in leftovers

    writer = LocalBundleWriter(tmp_path)
    try:
        assert await writer.sweep(set()) == leftovers
    finally:
        writer.close()
    assert os.listdir(tmp_path) == [KEY_FILE]
