"""Running ``winspec run`` as a real child process in tests: its command, environment, a port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
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


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of a GET of ``url`` (``None`` when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop a child started in its own session: SIGTERM to its process group, SIGKILL after
    ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
