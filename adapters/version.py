"""winspec's own version, as installed, and how it introduces itself to servers."""

from __future__ import annotations

import importlib.metadata


def version() -> str:
    """The installed distribution's version (``unknown`` when run from a bare source tree)."""
    try:
        return importlib.metadata.version("winspec")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def user_agent() -> str:
    """``winspec/<version>``: the User-Agent of winspec's requests, so the API server's audit
    log and the objects' ``managedFields`` (manager ``winspec``) name it."""
    return f"winspec/{version()}"
