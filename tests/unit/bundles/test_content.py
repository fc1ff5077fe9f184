"""Tests of BundleContent: its digest is computed once, from every path and content."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from controller.bundle import BundleContent

FILES = {"config.json": b"{}", "links.json": b'{"links":[]}', "secrets/s1": b"secret"}


def test_digest_is_computed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a content hashes its files once; reading digest again hashes nothing."""
    calls = 0
    real_sha256 = hashlib.sha256

    def counting_sha256(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return real_sha256(*args)

    monkeypatch.setattr(hashlib, "sha256", counting_sha256)
    content = BundleContent(files=dict(FILES))
    first = content.digest

    assert content.digest == first
    assert content.digest == first
    assert calls == 1


def test_digest_covers_every_path_and_content() -> None:
    """Equal files give equal digests; a changed byte or a renamed file changes the digest."""
    digest = BundleContent(files=dict(FILES)).digest

    assert BundleContent(files=dict(FILES)).digest == digest
    assert BundleContent(files={**FILES, "secrets/s1": b"secreT"}).digest != digest
    renamed = {name.replace("s1", "s2"): data for name, data in FILES.items()}
    assert BundleContent(files=renamed).digest != digest
    assert len(digest) == 64
