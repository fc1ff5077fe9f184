"""Engine API paths built from outside data: the one place they are checked and quoted.

Ids and names that go into a request path come from container labels, events, inspect bodies
and security options: anyone who may create a container writes some of them. Each one is
checked against Docker's own grammar for what it claims to be (a swarm id, a container id or
name, an image id or reference) before it becomes a path segment, then percent-quoted, so no
value can add a segment, climb out of the version prefix (``..``), or add a query. A value
that does not fit is a :class:`PermanentError` naming what it was meant to be.

:func:`check_path` is the client's last line of defence: every path it sends must consist of
plain, quoted segments (no ``.``/``..``, no empty segment, no query or fragment).
"""

from __future__ import annotations

import enum
import re
from urllib.parse import quote, unquote

from controller.errors import PermanentError


class IdKind(enum.Enum):
    """What an id or name in a path claims to be; the value is how errors name it."""

    CONTAINER = "container id or name"
    IMAGE = "image id or reference"
    TASK = "swarm task id"
    SECRET = "swarm secret id"
    CONFIG = "swarm config id"
    SERVICE = "swarm service id"
    NODE = "swarm node id"
    NETWORK = "network id or name"


#: swarmkit's identity.NewID: 128 random bits in base 36, padded to 25 characters.
SWARM_ID = re.compile(r"[0-9a-z]{25}")
#: A full container id: 64 lower-case hex digits.
CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
#: A unique prefix of a container or network id, as the engine accepts it.
_ID_PREFIX = re.compile(r"[0-9a-f]{1,64}")
#: Container and network names (moby's ``RestrictedNamePattern``).
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}")
#: An image id (``sha256:`` and 64 hex digits, or the bare hex).
_IMAGE_ID = re.compile(r"(?:sha256:)?[0-9a-f]{64}")
#: An image reference (distribution/reference): ``[domain[:port]/]path[:tag][@digest]``.
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_IMAGE_REF = re.compile(
    rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,})?"
)
_MAX_REFERENCE = 512

_GRAMMAR: dict[IdKind, tuple[re.Pattern[str], ...]] = {
    IdKind.CONTAINER: (_ID_PREFIX, _NAME),
    IdKind.NETWORK: (_ID_PREFIX, _NAME),
    IdKind.IMAGE: (_IMAGE_ID, _IMAGE_REF),
    IdKind.TASK: (SWARM_ID,),
    IdKind.SECRET: (SWARM_ID,),
    IdKind.CONFIG: (SWARM_ID,),
    IdKind.SERVICE: (SWARM_ID,),
    IdKind.NODE: (SWARM_ID,),
}

#: What a segment of a checked path may contain once quoted (``%`` only as an escape).
_SAFE_SEGMENT = re.compile(r"(?:[A-Za-z0-9_.~-]|%[0-9A-F]{2})+")
#: The fixed words of the paths winspec asks for (collections and actions).
_WORD = re.compile(r"[a-z]+")


def is_valid(kind: IdKind, value: str) -> bool:
    """Whether ``value`` fits Docker's grammar for ``kind``."""
    if not isinstance(value, str) or len(value) > _MAX_REFERENCE:
        return False
    return any(pattern.fullmatch(value) for pattern in _GRAMMAR[kind])


def checked(kind: IdKind, value: str) -> str:
    """``value`` unchanged when it fits the grammar of ``kind``; else :class:`PermanentError`."""
    if not is_valid(kind, value):
        shown = value[:80] + "…" if isinstance(value, str) and len(value) > 80 else value
        raise PermanentError(f"invalid {kind.value} {shown!r}: refused before any request")
    return value


def api_path(collection: str, kind: IdKind, value: str, *action: str) -> str:
    """``/<collection>/<value>[/<action>...]`` with ``value`` checked and percent-quoted.

    ``collection`` and ``action`` are winspec's own words (``containers``, ``json``); ``value``
    is outside data and must fit the grammar of ``kind``.
    """
    for word in (collection, *action):
        if not _WORD.fullmatch(word):
            raise ValueError(f"not a fixed path word: {word!r}")  # a programming error
    segment = quote(checked(kind, value), safe="")
    return "/" + "/".join((collection, segment, *action))


def check_path(path: str) -> str:
    """``path`` when every segment is plain and quoted; else :class:`PermanentError`.

    Refuses what could leave the version prefix or change the request: an empty, ``.`` or
    ``..`` segment, a raw ``/`` run, a query, a fragment, a backslash, a control character.
    """
    segments = path.split("/")
    if (
        segments[0] != ""
        or len(segments) < 2
        or not all(_SAFE_SEGMENT.fullmatch(s) for s in segments[1:])
        # Quoting never hides a dot segment from a server that decodes before routing.
        or any(part in ("", ".", "..") for s in segments[1:] for part in unquote(s).split("/"))
    ):
        raise PermanentError(f"refused Engine API path {path[:120]!r}")
    return path
