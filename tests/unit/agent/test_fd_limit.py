"""--max-connections against the file descriptor limit, in a child process with a real limit."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from tests.processes import clean_env

_PROBE = (
    "import resource; from adapters.agent.command import fit_connections; "
    "print(fit_connections(512), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
)


def _probe(soft: int, hard: int) -> tuple[int, int]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        env=clean_env(),
        preexec_fn=limit,
        check=True,
        timeout=60,
    ).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.parametrize(
    ("soft", "hard", "fitted", "raised"),
    [
        (1024, 1024, 512, 1024),  # room enough: kept
        (256, 256, 128, 256),  # too few: lowered, 128 kept for the agent's own use
        (256, 4096, 512, 640),  # the soft limit raised as far as needed
    ],
)
def test_max_connections_fits_the_descriptor_limit(
    soft: int, hard: int, fitted: int, raised: int
) -> None:
    """The cap is kept, or the soft limit raised towards the hard one, or the cap lowered."""
    assert _probe(soft, hard) == (fitted, raised)
