"""The agent's wire format: bundle ids, upload encoding and its integrity check."""

from __future__ import annotations

import msgspec
import pytest

from adapters.agentapi.wire import (
    BundleUpload,
    ReplayError,
    ReplayGuard,
    content_mac,
    decode_upload,
    encode_upload,
    parse_issued,
)
from controller.bundle import split_key
from controller.errors import PermanentError

FILES = {"config.json": b"{}", "secrets/a": b"\x00\xffsecret", "configs/b": b""}
NONCE = b"n" * 32
ID = "ns/web"
ISSUED = 1_700_000_000_000_000_000


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
    assert split_key(bundle_id) == parts


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
        split_key(bundle_id)


def test_an_upload_round_trips() -> None:
    """encode_upload's body decodes to the same files and issue time."""
    upload = decode_upload(encode_upload(ID, FILES, NONCE, ISSUED), ID)
    assert (upload.files, upload.issued) == (FILES, ISSUED)


def test_the_mac_depends_on_nonce_id_time_names_and_contents() -> None:
    """Another nonce, id, issue time, a renamed file or a moved byte changes the MAC."""
    base = content_mac(NONCE, ID, ISSUED, FILES)
    assert content_mac(b"m" * 32, ID, ISSUED, FILES) != base
    assert content_mac(NONCE, "ns/other", ISSUED, FILES) != base
    assert content_mac(NONCE, ID, ISSUED + 1, FILES) != base
    assert content_mac(NONCE, ID, ISSUED, {**FILES, "configs/b": b"x"}) != base
    # The framing keeps a byte moved across a file boundary from giving the same input.
    moved = content_mac(NONCE, ID, ISSUED, {"a": b"b", "d": b"c"})
    assert content_mac(NONCE, ID, ISSUED, {"a": b"bc", "d": b""}) != moved


def test_an_upload_for_another_id_or_time_is_refused() -> None:
    """A body sent to another id, or with its issue time changed, fails the MAC check."""
    body = encode_upload(ID, FILES, NONCE, ISSUED)
    with pytest.raises(PermanentError, match="does not match its mac"):
        decode_upload(body, "ns/other")
    upload = msgspec.msgpack.decode(body, type=BundleUpload)
    upload.issued += 10**12
    with pytest.raises(PermanentError, match="does not match its mac"):
        decode_upload(msgspec.msgpack.encode(upload), ID)


def test_a_tampered_upload_is_refused_without_echoing_content() -> None:
    """A file changed after the MAC was made is refused; the message holds no payload byte."""
    upload = msgspec.msgpack.decode(encode_upload(ID, FILES, NONCE), type=BundleUpload)
    upload.files["secrets/a"] = b"guess"
    with pytest.raises(PermanentError, match="does not match its mac") as caught:
        decode_upload(msgspec.msgpack.encode(upload), ID)
    assert "secret" not in str(caught.value)
    assert "guess" not in str(caught.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not a MessagePack bundle"),
        (b"\xc1", "not a MessagePack bundle"),
        (msgspec.msgpack.encode([1, 2]), "malformed bundle"),
        (
            msgspec.msgpack.encode({"files": {}, "nonce": NONCE, "issued": 1}),
            "missing required field",
        ),
        (
            msgspec.msgpack.encode(
                {"files": {"a": "text"}, "nonce": NONCE, "issued": 1, "mac": "0" * 64}
            ),
            "Expected `bytes`",
        ),
        (
            msgspec.msgpack.encode({"files": {}, "nonce": b"short", "issued": 1, "mac": "0" * 64}),
            "nonce must be",
        ),
        (
            msgspec.msgpack.encode({"files": {}, "nonce": b"n" * 65, "issued": 1, "mac": "0" * 64}),
            "nonce must be",
        ),
        (
            msgspec.msgpack.encode({"files": {}, "nonce": NONCE, "issued": 1, "mac": "XYZ"}),
            "64 lower-case hex",
        ),
        (
            msgspec.msgpack.encode(
                {"files": {}, "nonce": NONCE, "issued": 1, "mac": "0" * 64, "extra": 1}
            ),
            "unknown field",
        ),
        (
            msgspec.msgpack.encode(
                {"files": {}, "nonce": NONCE, "issued": 2**64 - 1, "mac": "0" * 64}
            ),
            "issued is out of range",
        ),
        (encode_upload(ID, FILES, NONCE) + b"\x00", "not a MessagePack bundle"),
    ],
)
def test_malformed_uploads_are_refused_with_a_clear_message(body: bytes, message: str) -> None:
    """Bodies of the wrong form are a PermanentError saying what is wrong."""
    with pytest.raises(PermanentError, match=message):
        decode_upload(body, ID)


class NanoClock:
    """A wall clock in nanoseconds that the test moves."""

    def __init__(self) -> None:
        self.now = ISSUED

    def __call__(self) -> int:
        return self.now


SECOND = 10**9


def test_the_replay_guard_lets_each_bundle_move_only_forward() -> None:
    """Per id, an upload not newer than the newest accepted is refused; other ids are apart."""
    clock = NanoClock()
    guard = ReplayGuard(300, clock=clock, started=clock.now - SECOND)
    guard.admit(ID, clock.now)
    with pytest.raises(ReplayError, match="newer upload"):
        guard.admit(ID, clock.now)  # the same one again
    with pytest.raises(ReplayError, match="newer upload"):
        guard.admit(ID, clock.now - 1)  # an older one
    guard.admit("ns/other", clock.now - 1)
    guard.admit(ID, clock.now + 1)


@pytest.mark.parametrize(
    ("offset", "message"),
    [(-301, "older than the replay window"), (301, "in the future"), (-2, "before the agent")],
)
def test_the_replay_guard_refuses_uploads_outside_its_window(offset: int, message: str) -> None:
    """Too old, from the future, or from before the agent started: refused, saying which."""
    clock = NanoClock()
    guard = ReplayGuard(300, clock=clock, started=clock.now - SECOND)
    with pytest.raises(ReplayError, match=message):
        guard.admit(ID, clock.now + offset * SECOND)


def test_the_replay_guard_forgets_only_what_its_window_refuses() -> None:
    """Records older than the window are dropped (bounded memory); replays of them still fail."""
    clock = NanoClock()
    guard = ReplayGuard(300, clock=clock, started=clock.now - SECOND)
    for i in range(1500):
        guard.admit(f"ns/b{i}", clock.now)
    first = clock.now
    clock.now += 301 * SECOND
    for i in range(1500):
        guard.admit(f"ns/c{i}", clock.now)
    assert len(guard._newest) <= 2048
    with pytest.raises(ReplayError, match="older than the replay window"):
        guard.admit("ns/b0", first)


@pytest.mark.parametrize("value", [None, "", "-1", "1.5", "12a", "\u0661\u0662", "9" * 20])
def test_a_delete_without_a_decimal_issued_header_is_refused(value: str | None) -> None:
    """Winspec-Issued must be there and be decimal nanoseconds (ASCII digits, at most 19)."""
    with pytest.raises(PermanentError, match="Winspec-Issued"):
        parse_issued(value)


def test_a_decimal_issued_header_is_read() -> None:
    """A plain decimal value is the DELETE's issue time."""
    assert parse_issued(f" {ISSUED} ") == ISSUED
