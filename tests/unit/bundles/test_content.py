"""Tests of BundleContent: its digests are keyed, computed once per key, from every path and
content."""

from __future__ import annotations

import hashlib

import pytest

from controller import bundle
from controller.bundle import BundleContent

FILES = {"config.json": b"{}", "links.json": b'{"links":[]}', "secrets/s1": b"secret"}


def _unkeyed(files: dict[str, bytes]) -> str:
    """The digest formula of earlier releases: SHA-256 over every path and content, no key."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + len(files[name]).to_bytes(8, "big") + files[name])
    return h.hexdigest()


def test_digest_is_computed_once_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each key's digest hashes the files once; asking for it again hashes nothing."""
    calls: list[bytes] = []
    real_digest = bundle._digest

    def counting_digest(key: bytes, files: dict[str, bytes]) -> str:
        calls.append(key)
        return real_digest(key, files)

    monkeypatch.setattr(bundle, "_digest", counting_digest)
    content = BundleContent(files=dict(FILES))
    first = content.digest

    assert content.digest == first
    assert content.keyed_digest(b"k" * 32) == content.keyed_digest(b"k" * 32)
    assert len(calls) == 2


def test_digest_covers_every_path_and_content() -> None:
    """Equal files give equal digests; a changed byte or a renamed file changes the digest."""
    digest = BundleContent(files=dict(FILES)).digest

    assert BundleContent(files=dict(FILES)).digest == digest
    assert BundleContent(files={**FILES, "secrets/s1": b"secreT"}).digest != digest
    renamed = {name.replace("s1", "s2"): data for name, data in FILES.items()}
    assert BundleContent(files=renamed).digest != digest
    assert len(digest) == 64


def test_digests_are_keyed_not_the_plain_hash_of_the_files() -> None:
    """No digest is the unkeyed SHA-256 of the files, and different keys give different ones."""
    content = BundleContent(files=dict(FILES))

    assert content.digest != _unkeyed(FILES)
    assert content.keyed_digest(b"a" * 32) != content.keyed_digest(b"b" * 32)
    assert content.keyed_digest(b"a" * 32) != content.digest
