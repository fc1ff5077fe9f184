"""The errors of the test fixtures that run real servers (tests/dockerd.py, tests/kube.py)."""

from __future__ import annotations

from typing import Any


class FixtureError(RuntimeError):
    """A test server could not be started, or stopped behaving."""


class APIStatusError(RuntimeError):
    """A test server's API answered a request with an unexpected status."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        message = body.get("message", body) if isinstance(body, dict) else body
        super().__init__(f"{method} {path} -> {status}: {message!r}")
        self.method = method
        self.path = path
        self.status = status
        self.body = body
