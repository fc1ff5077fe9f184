"""What the controller and the node agent say to each other: ids, bodies, the integrity check.

**Bundle ids** on the wire are ``<namespace>/<name>``, the key of a cluster resource: the
namespace a DNS-1123 label, the name a bundle id as :func:`controller.bundle.is_valid_bundle_id`
accepts it. The agent keeps the bundle at ``<bundle root>/<namespace>/<name>/``, the layout of
cluster mode's local writer, so node-local and central deployments leave the same tree.

**An upload** (``PUT /v1/bundles/<namespace>/<name>``) is one MessagePack map, content type
:data:`BUNDLE_CONTENT_TYPE`::

    {"files": {"config.json": <bin>, "links.json": <bin>, "secrets/<id>": <bin>, ...},
     "nonce": <bin, 16 to 64 random bytes, new for every upload>,
     "mac":   "<64 hex digits: HMAC-SHA256 under the nonce of every path and content>"}

MessagePack carries payloads as raw bytes (no base64 inflation, no text decoding of binary
secrets) and msgspec decodes it straight into :class:`BundleUpload`, refusing unknown fields,
wrong types and anything left over. The agent recomputes the MAC over what it decoded and
refuses a mismatch (400), so a body truncated, re-encoded or assembled from other content is
never written.

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
from collections.abc import Mapping

import msgspec

from controller.bundle import is_valid_bundle_id
from controller.errors import PermanentError

BUNDLE_CONTENT_TYPE = "application/vnd.winspec.bundle.v1+msgpack"
API_PREFIX = "/v1/bundles"
NODE_PATH = "/v1/node"
NONCE_MIN_BYTES = 16
NONCE_MAX_BYTES = 64
NONCE_BYTES = 32

_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_MAC = re.compile(r"^[0-9a-f]{64}$")


class BundleUpload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of a PUT: every file of the bundle and the integrity check."""

    files: dict[str, bytes]
    nonce: bytes
    mac: str


class BundleEntry(msgspec.Struct, kw_only=True):
    """One bundle as the agent holds it: its id and the digest the agent keeps for it."""

    id: str
    digest: str


class BundleState(BundleEntry, kw_only=True):
    """The answer of a PUT: the bundle now in place, and whether this request wrote it."""

    changed: bool


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


def is_valid_namespace(namespace: str) -> bool:
    """Whether ``namespace`` is a DNS-1123 label (a Kubernetes namespace name)."""
    return bool(_NAMESPACE.match(namespace))


def split_bundle_id(bundle_id: str) -> tuple[str, str]:
    """``<namespace>/<name>`` into its checked parts, else a :class:`PermanentError`.

    Checked before the id comes near a path: exactly one slash, a DNS-1123 label, and a name
    the local writer accepts as one path component (no dots-only names, no separators).
    """
    namespace, sep, name = bundle_id.partition("/")
    if not sep or not _NAMESPACE.match(namespace) or not is_valid_bundle_id(name):
        shown = bundle_id if len(bundle_id) <= 300 else bundle_id[:300] + "..."
        raise PermanentError(
            f"invalid bundle id {shown!r}: expected <namespace>/<name>, a DNS-1123 label and "
            "a DNS-1123 subdomain name"
        )
    return namespace, name


def content_mac(nonce: bytes, files: Mapping[str, bytes]) -> str:
    """HMAC-SHA256 under ``nonce`` of every path and content, in path order (64 hex digits).

    Each file is framed (path, NUL, 8-byte length, content), so no two file sets share an input.
    """
    h = hmac.new(nonce, digestmod="sha256")
    for name in sorted(files):
        data = files[name]
        h.update(name.encode())
        h.update(b"\0")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


_upload_decoder = msgspec.msgpack.Decoder(BundleUpload)
_upload_encoder = msgspec.msgpack.Encoder()


def encode_upload(files: Mapping[str, bytes], nonce: bytes) -> bytes:
    """The body of a PUT for ``files``, checked by a MAC under ``nonce``."""
    upload = BundleUpload(files=dict(files), nonce=nonce, mac=content_mac(nonce, files))
    return _upload_encoder.encode(upload)


def decode_upload(body: bytes) -> dict[str, bytes]:
    """The files of a PUT body whose MAC holds; a :class:`PermanentError` for anything else.

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
    if not hmac.compare_digest(content_mac(upload.nonce, upload.files), upload.mac):
        raise PermanentError("bundle refused: its content does not match its mac")
    return upload.files
