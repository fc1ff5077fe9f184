"""The child processes of the test fixtures: stopping them, and the end of their logs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def terminate(proc: subprocess.Popen[bytes], timeout: float, *, group: bool = False) -> int:
    """SIGTERM the process (its whole process group with ``group``), SIGKILL it if it is still
    there after ``timeout`` seconds; its exit status."""

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    if proc.poll() is None or group:
        send(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


def log_tail(path: Path | str, lines: int) -> str:
    """The last ``lines`` lines of a log file ("" when it cannot be read)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
