"""What goes into an OCI bundle, independent of where it is written.

A bundle is a small set of files below ``<bundle root>/<bundle id>/``: ``config.json``, the
map of in-container links (``links.json``, S5) and the secret and config payloads that the
internal mounts point at. The writer (an adapter) makes it durable and atomic; this module
decides the content, so every writer writes the same bytes.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from secrets import token_bytes

import msgspec

from controller.errors import PermanentError
from controller.generate import Generated, Link, encode_spec
from controller.models import Request, check_payload_id
from controller.names import is_dns1123_label

CONFIG_FILE = "config.json"
LINKS_FILE = "links.json"
SECRETS_DIR = "secrets"
CONFIGS_DIR = "configs"

# How a bundle on disk can differ from the content its ``.digest`` names (drift): a file with
# other bytes (or not a file), a file of the content absent, an entry the content does not have.
DRIFT_MODIFIED = "modified"
DRIFT_MISSING = "missing"
DRIFT_EXTRA = "extra"
DRIFT_KINDS = (DRIFT_MODIFIED, DRIFT_MISSING, DRIFT_EXTRA)

# A Docker container id (64 lower-case hex digits), or a Kubernetes object name
# (DNS-1123 subdomain); nothing that could climb out of the bundle root.
_CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What a write did, when a writer knows more than "changed or not": true when it wrote.

    ``drift``: the kinds of damage (:data:`DRIFT_KINDS`) found in a bundle whose ``.digest``
    named the content already, and repaired by rewriting it; empty when none.
    """

    changed: bool
    drift: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return self.changed


def drift_of(outcome: bool | WriteOutcome) -> frozenset[str]:
    """The drift a writer's answer says it repaired (a plain bool: none)."""
    return outcome.drift if isinstance(outcome, WriteOutcome) else frozenset()


def is_valid_bundle_id(bundle_id: str) -> bool:
    """Whether a bundle id is safe to use as one path component."""
    if _CONTAINER_ID.match(bundle_id):
        return True
    return bool(_OBJECT_NAME.match(bundle_id)) and ".." not in bundle_id


def check_bundle_id(bundle_id: str) -> str:
    """Return the id, or refuse it with a :class:`PermanentError` before it touches a path."""
    if not is_valid_bundle_id(bundle_id):
        raise PermanentError(f"invalid bundle id {bundle_id!r}: not a container id or name")
    return bundle_id


def split_key(key: str) -> tuple[str, str]:
    """``<namespace>/<name>`` (the key of a cluster resource, the id of a bundle an agent
    keeps) into its checked parts, else a :class:`PermanentError`.

    Checked before the key comes near a path: exactly one slash, a DNS-1123 label, and a name
    the local writer accepts as one path component (no dots-only names, no separators). The
    bundle is ``<bundle root>/<namespace>/<name>/``.
    """
    namespace, sep, name = key.partition("/")
    if not sep or not is_dns1123_label(namespace) or not is_valid_bundle_id(name):
        shown = key if len(key) <= 300 else key[:300] + "..."
        raise PermanentError(
            f"invalid bundle id {shown!r}: expected <namespace>/<name>, a DNS-1123 label and "
            "a DNS-1123 subdomain name"
        )
    return namespace, name


def check_key(key: str) -> str:
    """Return ``key``, or refuse it (:func:`split_key`) before it touches a path."""
    split_key(key)
    return key


class LinksDocument(msgspec.Struct, kw_only=True):
    """The content of ``links.json``."""

    links: list[Link]


#: Length of a digest key, in bytes: as long as the SHA-256 output, the full strength of HMAC.
DIGEST_KEY_BYTES = 32

# The key of :attr:`BundleContent.digest`: random, per process, never stored. A digest is a
# function of every payload, secrets included; unkeyed, a logged digest of a bundle whose
# other files are known (config.json follows from public inspect data) lets anyone who reads
# the log try every candidate of a weak secret offline. Keyed with a value they cannot read,
# it reveals nothing about the bytes hashed.
_PROCESS_KEY = token_bytes(DIGEST_KEY_BYTES)


@dataclass(frozen=True, slots=True)
class BundleContent:
    """The files of one bundle, by relative POSIX path, and keyed digests of all of them.

    A digest is an HMAC-SHA256 over every path and content, in path order: equal for equal
    files under one key, and without the key no oracle for the files (payloads are secrets).
    Each key's digest is computed once, when first asked for (it hashes every payload);
    ``files`` must not be changed afterwards.
    """

    files: dict[str, bytes]
    _digests: dict[bytes, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def digest(self) -> str:
        """The digest under this process's random key: safe to log, comparable in this run only.

        It changes with every restart; a writer that compares digests across restarts keeps a
        key of its own (:meth:`keyed_digest`).
        """
        return self.keyed_digest(_PROCESS_KEY)

    def keyed_digest(self, key: bytes) -> str:
        """The HMAC-SHA256 of every path and content under ``key``, as 64 hex digits."""
        digest = self._digests.get(key)
        if digest is None:
            digest = self._digests[key] = _digest(key, self.files)
        return digest


def _digest(key: bytes, files: dict[str, bytes]) -> str:
    h = hmac.new(key, digestmod="sha256")
    hash_files(h, files)
    return h.hexdigest()


def hash_files(h: hmac.HMAC, files: Mapping[str, bytes]) -> None:
    """Feed every path and content of ``files`` into ``h``, in path order, each one framed
    (path, NUL, 8-byte length, content) so that no two sets of files feed the same bytes."""
    for name in sorted(files):
        data = files[name]
        h.update(name.encode())
        h.update(b"\0")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)


_links_encoder = msgspec.json.Encoder()


def build_bundle(request: Request, generated: Generated) -> BundleContent:
    """The files of the bundle for a generated spec and the payloads in its request."""
    files: dict[str, bytes] = {CONFIG_FILE: encode_spec(generated.spec)}
    files[LINKS_FILE] = _links_encoder.encode(LinksDocument(links=generated.links))
    for secret in request.secrets:
        if secret.data is not None:
            files[f"{SECRETS_DIR}/{check_payload_id(secret.secret_id, 'secret')}"] = secret.data
    for config in request.configs:
        if config.data is not None:
            files[f"{CONFIGS_DIR}/{check_payload_id(config.config_id, 'config')}"] = config.data
    return BundleContent(files=files)
