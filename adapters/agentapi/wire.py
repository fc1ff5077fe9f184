"""What the controller and the node agent say to each other: ids, bodies, the integrity check.

**Bundle ids** on the wire are ``<namespace>/<name>``, the key of a cluster resource: the
namespace a DNS-1123 label, the name a bundle id as :func:`controller.bundle.is_valid_bundle_id`
accepts it. The agent keeps the bundle at ``<bundle root>/<namespace>/<name>/``, the layout of
cluster mode's local writer, so node-local and central deployments leave the same tree.

**An upload** (``PUT /v1/bundles/<namespace>/<name>``) is one MessagePack map, content type
:data:`BUNDLE_CONTENT_TYPE`::

    {"files":  {"config.json": <bin>, "links.json": <bin>, "secrets/<id>": <bin>, ...},
     "nonce":  <bin, 16 to 64 random bytes, new for every upload>,
     "issued": <int: when the sender encoded it, nanoseconds since the Unix epoch>,
     "mac":    "<64 hex digits: HMAC-SHA256 under the nonce of the id, issued, every file>"}

MessagePack carries payloads as raw bytes (no base64 inflation, no text decoding of binary
secrets) and msgspec decodes it straight into :class:`BundleUpload`, refusing unknown fields,
wrong types and anything left over. The agent recomputes the MAC over what it decoded and
refuses a mismatch (400), so a body truncated, re-encoded or assembled from other content is
never written. The MAC covers the bundle id and ``issued`` too: a body sent for one id, or at
one time, is refused anywhere else and with any other time.

**Replays.** ``issued`` only moves forward: the agent refuses (409) an upload issued outside its
replay window around its own clock, before the agent started, or not after the newest upload it
accepted for the same id (:class:`ReplayGuard`). A captured PUT replayed later, or a delayed one
arriving after a newer version, therefore never puts an older bundle back. A DELETE carries its
``issued`` in the :data:`ISSUED_HEADER` header and goes through the same guard, so a replayed
removal cannot take away a bundle delivered after it. The client encodes every attempt anew (a
fresh nonce and ``issued``), so its own retries are never replays.

Why a nonce-keyed MAC and not the bundle's digest: a digest that is a plain function of the
files is a function of the secrets in them, and one seen again elsewhere (a log, a status, a
backup) lets anyone test guesses of a weak secret offline; the bundle digests are becoming
keyed, with keys that the controller and the agent do not share. The MAC here is keyed by a
value that exists for one request only, travels only inside TLS to the authenticated agent that
receives the plain bytes anyway, and is never stored, logged or sent back, so it is no
fingerprint of the payloads. What the agent answers (:class:`BundleState`) is the digest its
own writer keeps for the bundle (``.digest``): the controller records it for the node and
compares later answers of the same agent (resync) with it, never with its own digests.

Answers are JSON (small, and readable with curl): :class:`BundleState` for a PUT,
:class:`Removal` for a DELETE, a :class:`BundleList` for ``GET /v1/bundles``, a
:class:`NodeInfo` for ``GET /v1/node``, an :class:`ErrorBody` for every refusal.

**The bundle root** (``GET /v1/node``): the agent's ``--bundle-root`` made absolute, the path
its bundles are below as the node names it (a Windows path on a Windows node; the shipped
DaemonSet mounts the hostPath at that same path). The controller generates each spec for the
node it goes to, so the secrets and configs mounts name ``<root>\\<namespace>\\<name>\\...``,
the directories the agent writes.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable, Mapping

import msgspec

from controller.bundle import hash_files
from controller.errors import PermanentError

#: v2: ``issued`` added, the MAC covers the id and ``issued`` (v1 bodies get 415).
BUNDLE_CONTENT_TYPE = "application/vnd.winspec.bundle.v2+msgpack"
#: The header of a DELETE carrying its ``issued`` (decimal nanoseconds since the Unix epoch).
ISSUED_HEADER = "Winspec-Issued"
API_PREFIX = "/v1/bundles"
NODE_PATH = "/v1/node"
NONCE_MIN_BYTES = 16
NONCE_MAX_BYTES = 64
NONCE_BYTES = 32

_MAC = re.compile(r"^[0-9a-f]{64}$")


class BundleUpload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of a PUT: every file of the bundle and the integrity check."""

    files: dict[str, bytes]
    nonce: bytes
    issued: int
    mac: str


class BundleEntry(msgspec.Struct, kw_only=True):
    """One bundle as the agent holds it: its id and the digest the agent keeps for it."""

    id: str
    digest: str


class BundleState(BundleEntry, kw_only=True):
    """The answer of a PUT: the bundle now in place, and whether this request wrote it.

    ``drift``: the kinds of damage (modified, missing, extra) this write found in a bundle of
    the same content and repaired (absent from older agents' answers: none).
    """

    changed: bool
    drift: list[str] = []


class Removal(msgspec.Struct, kw_only=True):
    """The answer of a DELETE: whether there was a bundle to remove."""

    id: str
    changed: bool


class BundleList(msgspec.Struct, kw_only=True):
    """The answer of ``GET /v1/bundles``: every bundle present, sorted by id."""

    bundles: list[BundleEntry]


class NodeInfo(msgspec.Struct, kw_only=True, rename="camel"):
    """The answer of ``GET /v1/node``: where this agent keeps bundles, as the node names it."""

    bundle_root: str


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every refusal: a short machine reason and a message for people (never payload bytes)."""

    reason: str
    message: str


def content_mac(nonce: bytes, bundle_id: str, issued: int, files: Mapping[str, bytes]) -> str:
    """HMAC-SHA256 under ``nonce`` of the bundle id, ``issued`` and every path and content, in
    path order (64 hex digits).

    The id is framed like a file (its length first), ``issued`` is 8 bytes, and each file is
    framed (path, NUL, 8-byte length, content), so no two inputs share a MAC input.
    """
    h = hmac.new(nonce, digestmod="sha256")
    ident = bundle_id.encode()
    h.update(len(ident).to_bytes(8, "big"))
    h.update(ident)
    h.update(issued.to_bytes(8, "big", signed=True))
    hash_files(h, files)
    return h.hexdigest()


_upload_decoder = msgspec.msgpack.Decoder(BundleUpload)
_upload_encoder = msgspec.msgpack.Encoder()


def encode_upload(
    bundle_id: str, files: Mapping[str, bytes], nonce: bytes, issued: int | None = None
) -> bytes:
    """The body of a PUT of ``files`` to ``bundle_id``, checked by a MAC under ``nonce``;
    ``issued`` (nanoseconds since the epoch) is now unless given."""
    stamp = time.time_ns() if issued is None else issued
    upload = BundleUpload(
        files=dict(files),
        nonce=nonce,
        issued=stamp,
        mac=content_mac(nonce, bundle_id, stamp, files),
    )
    return _upload_encoder.encode(upload)


def decode_upload(body: bytes, bundle_id: str) -> BundleUpload:
    """The upload of a PUT body to ``bundle_id`` whose MAC holds; a :class:`PermanentError` for
    anything else.

    The message says what is wrong with the body's form, never a byte of its content.
    """
    try:
        upload = _upload_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise PermanentError(f"malformed bundle: {exc}") from None
    except msgspec.DecodeError:
        raise PermanentError("malformed bundle: not a MessagePack bundle document") from None
    if not NONCE_MIN_BYTES <= len(upload.nonce) <= NONCE_MAX_BYTES:
        raise PermanentError(
            f"malformed bundle: the nonce must be {NONCE_MIN_BYTES} to {NONCE_MAX_BYTES} bytes"
        )
    if not _MAC.match(upload.mac):
        raise PermanentError("malformed bundle: the mac must be 64 lower-case hex digits")
    if not -(2**63) <= upload.issued < 2**63:
        raise PermanentError("malformed bundle: issued is out of range")
    expected = content_mac(upload.nonce, bundle_id, upload.issued, upload.files)
    if not hmac.compare_digest(expected, upload.mac):
        raise PermanentError("bundle refused: its content does not match its mac")
    return upload


def parse_issued(value: str | None) -> int:
    """The ``issued`` of a :data:`ISSUED_HEADER` header; a :class:`PermanentError` when it is
    missing or not a decimal integer of at most 19 digits."""
    if value is None:
        raise PermanentError(f"the {ISSUED_HEADER} header is required (nanoseconds)")
    text = value.strip()
    if not text.isdecimal() or not text.isascii() or len(text) > 19:
        raise PermanentError(f"the {ISSUED_HEADER} header must be nanoseconds since the epoch")
    return int(text)


class ReplayError(Exception):
    """An upload the agent refuses as a replay or as out of order (409); the message says why."""


class ReplayGuard:
    """Lets each upload's ``issued`` through once, and only forward, per bundle id.

    Refused: an upload issued more than ``window`` seconds away from the agent's clock, issued
    before ``started`` (the agent's start: what it accepted before is not remembered), or not
    after the newest one accepted for the same id since then (a removal keeps that record, so a
    replay cannot bring a removed bundle back either). Records older than the window are
    dropped, as the window alone refuses their replays: memory is bounded by the uploads of
    one window.
    """

    def __init__(
        self, window: float, *, clock: Callable[[], int] = time.time_ns, started: int | None = None
    ) -> None:
        self._window = int(window * 1e9)
        self._clock = clock
        self._started = clock() if started is None else started
        self._newest: dict[str, int] = {}
        self._next_prune = 1024

    def admit(self, bundle_id: str, issued: int) -> None:
        """Record ``issued`` as the newest upload of ``bundle_id``; else :class:`ReplayError`."""
        now = self._clock()
        if issued > now + self._window:
            raise ReplayError(
                "upload issued in the future: the sender's clock is more than the replay window "
                "ahead of the agent's"
            )
        if issued < now - self._window:
            raise ReplayError(
                "upload older than the replay window: a replay, or the sender's clock is behind "
                "the agent's"
            )
        if issued < self._started:
            raise ReplayError("upload issued before the agent started: a replay; send it anew")
        newest = self._newest.get(bundle_id)
        if newest is not None and issued <= newest:
            raise ReplayError(
                "a newer upload of this bundle was accepted already: a replay or a late "
                "delivery; send it anew"
            )
        self._newest[bundle_id] = issued
        if len(self._newest) >= self._next_prune:
            horizon = now - self._window
            self._newest = {k: v for k, v in self._newest.items() if v >= horizon}
            self._next_prune = max(1024, 2 * len(self._newest))
