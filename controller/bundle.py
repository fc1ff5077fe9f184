"""What goes into an OCI bundle, independent of where it is written.

A bundle is a small set of files below ``<bundle root>/<bundle id>/``: ``config.json``, the
map of in-container links (``links.json``, S5) and the secret and config payloads that the
internal mounts point at. The writer (an adapter) makes it durable and atomic; this module
decides the content, so every writer writes the same bytes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import msgspec

from controller.errors import PermanentError
from controller.generate import Generated, Link, encode_spec
from controller.models import Request, check_payload_id

CONFIG_FILE = "config.json"
LINKS_FILE = "links.json"
SECRETS_DIR = "secrets"
CONFIGS_DIR = "configs"

# A Docker container id (64 lower-case hex digits), or a Kubernetes object name
# (DNS-1123 subdomain); nothing that could climb out of the bundle root.
_CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


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


class LinksDocument(msgspec.Struct, kw_only=True):
    """The content of ``links.json``."""

    links: list[Link]


@dataclass(frozen=True, slots=True)
class BundleContent:
    """The files of one bundle, by relative POSIX path, and a digest of all of them.

    ``digest`` is a SHA-256 over every path and content, in path order, computed once when the
    content is built (it hashes every payload); ``files`` must not be changed afterwards.
    """

    files: dict[str, bytes]
    digest: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Frozen: the one assignment goes around the generated __setattr__.
        object.__setattr__(self, "digest", _digest(self.files))


def _digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(name.encode())
        h.update(b"\0")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


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
