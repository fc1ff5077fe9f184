"""The agent's wire format: bundle ids, upload encoding and its integrity check."""

from __future__ import annotations

import msgspec
import pytest

from adapters.agent.wire import (
    BundleUpload,
    content_mac,
    decode_upload,
    encode_upload,
    split_bundle_id,
)
from controller.errors import PermanentError

FILES = {"config.json": b"{}", "secrets/a": b"\x00\xffsecret", "configs/b": b""}
NONCE = b"n" * 32


@pytest.mark.parametrize(
    ("bundle_id", "parts"),
    [
        ("default/web", ("default", "web")),
        ("kube-system/a.b-c", ("kube-system", "a.b-c")),
        ("ns/" + "f" * 64, ("ns", "f" * 64)),
    ],
)
def test_good_ids_split_into_namespace_and_name(bundle_id: str, parts: tuple[str, str]) -> None:
    """<namespace>/<name> ids with DNS-1123 parts are accepted and split."""
    assert split_bundle_id(bundle_id) == parts


@pytest.mark.parametrize(
    "bundle_id",
    [
        "",
        "web",
        "/web",
        "ns/",
        "ns/a/b",
        "ns/..",
        "ns/a..b",
        "../web",
        "NS/web",
        "ns/Web",
        "ns/.hidden",
        "ns/-a",
        "ns/a b",
        "ns/a\\b",
        "ns/a\x00",
        "n" * 64 + "/web",
        "ns/" + "a" * 254,
    ],
)
def test_bad_ids_are_refused(bundle_id: str) -> None:
    """Anything but a DNS-1123 label, one slash and a bundle name is a PermanentError."""
    with pytest.raises(PermanentError, match="invalid bundle id"):
        split_bundle_id(bundle_id)


def test_an_upload_round_trips() -> None:
    """encode_upload's body decodes to the same files."""
    assert decode_upload(encode_upload(FILES, NONCE)) == FILES


def test_the_mac_depends_on_nonce_names_and_contents() -> None:
    """Another nonce, a renamed file or a moved byte between files changes the MAC."""
    base = content_mac(NONCE, FILES)
    assert content_mac(b"m" * 32, FILES) != base
    assert content_mac(NONCE, {**FILES, "configs/b": b"x"}) != base
    # The framing keeps a byte moved across a file boundary from giving the same input.
    assert content_mac(NONCE, {"a": b"bc", "d": b""}) != content_mac(NONCE, {"a": b"b", "d": b"c"})


def test_a_tampered_upload_is_refused_without_echoing_content() -> None:
    """A file changed after the MAC was made is refused; the message holds no payload byte."""
    upload = msgspec.msgpack.decode(encode_upload(FILES, NONCE), type=BundleUpload)
    upload.files["secrets/a"] = b"guess"
    with pytest.raises(PermanentError, match="does not match its mac") as caught:
        decode_upload(msgspec.msgpack.encode(upload))
    assert "secret" not in str(caught.value)
    assert "guess" not in str(caught.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not a MessagePack bundle"),
        (b"\xc1", "not a MessagePack bundle"),
        (msgspec.msgpack.encode([1, 2]), "malformed bundle"),
        (msgspec.msgpack.encode({"files": {}, "nonce": NONCE}), "missing required field"),
        (
            msgspec.msgpack.encode({"files": {"a": "text"}, "nonce": NONCE, "mac": "0" * 64}),
            "Expected `bytes`",
        ),
        (
            msgspec.msgpack.encode({"files": {}, "nonce": b"short", "mac": "0" * 64}),
            "nonce must be",
        ),
        (
            msgspec.msgpack.encode({"files": {}, "nonce": b"n" * 65, "mac": "0" * 64}),
            "nonce must be",
        ),
        (msgspec.msgpack.encode({"files": {}, "nonce": NONCE, "mac": "XYZ"}), "64 lower-case hex"),
        (
            msgspec.msgpack.encode({"files": {}, "nonce": NONCE, "mac": "0" * 64, "extra": 1}),
            "unknown field",
        ),
        (encode_upload(FILES, NONCE) + b"\x00", "not a MessagePack bundle"),
    ],
)
def test_malformed_uploads_are_refused_with_a_clear_message(body: bytes, message: str) -> None:
    """Bodies of the wrong form are a PermanentError saying what is wrong."""
    with pytest.raises(PermanentError, match=message):
        decode_upload(body)
