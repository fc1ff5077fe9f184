"""winspec's own version, and how it introduces itself to servers."""

from __future__ import annotations

#: The release, also the installed distribution's version (``pyproject.toml`` reads it from
#: here). A constant, not ``importlib.metadata``: that import alone is 30 ms of every start.
VERSION = "0.2.0"


def version() -> str:
    """winspec's version: :data:`VERSION`."""
    return VERSION


def user_agent() -> str:
    """``winspec/<version>``: the User-Agent of winspec's requests, so the API server's audit
    log and the objects' ``managedFields`` (manager ``winspec``) name it."""
    return f"winspec/{version()}"
