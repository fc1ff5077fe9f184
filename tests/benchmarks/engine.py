"""What the engine benchmarks share: their command line and a private engine with a scratch
directory, both removed afterwards."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.dockerd import DockerDaemon, dockerd_unavailable_reason


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first line of ``doc``, with ``--dir``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--dir", type=Path, help="parent of the scratch dir (default: TMPDIR)")
    return parser


@contextlib.contextmanager
def private_engine(name: str, parent: Path | None) -> Iterator[tuple[DockerDaemon, Path]]:
    """A started private dockerd with the test image, and a scratch directory under ``parent``.

    Exits (status 1, one line on stderr) when dockerd cannot run here.
    """
    reason = dockerd_unavailable_reason(probe=False)
    if reason is not None:
        raise SystemExit(f"{name}: cannot run: {reason}")
    scratch = Path(tempfile.mkdtemp(prefix=f"winspec-{name}-", dir=parent))
    daemon = DockerDaemon()
    try:
        daemon.start()
        daemon.import_image()
        yield daemon, scratch
    finally:
        daemon.stop()
        shutil.rmtree(scratch, ignore_errors=True)
