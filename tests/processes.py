"""Running ``winspec run`` as a real child process in tests: its command, environment, a port."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def winspec_run_command(*args: str) -> list[str]:
    """The command line of ``winspec run`` with ``args``, through this interpreter."""
    return [sys.executable, "-m", "adapters.cli", "run", *args]


def clean_env() -> dict[str, str]:
    """The environment without WINSPEC_* or DOCKER_* settings that could change the run."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("WINSPEC_", "DOCKER_"))}
    return kept | {"PYTHONPATH": str(REPO)}


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
