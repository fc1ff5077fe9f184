"""``winspec run`` with its bundle writer observed, for the benchmarks that time it from process
start.

Run by :mod:`tests.benchmarks.bench_relist` as
``python -m tests.benchmarks.observed_run COUNT [winspec run options]``: the ordinary
``winspec run`` (``adapters.cli.main``), except that Docker mode's bundle writer is a subclass
that notes when each write returned (changed or not: a write that found its bundle up to date
counts too). It prints ``first TIME`` when the first write returned and ``done TIME CPU`` when
the ``COUNT``-th did (wall clock, seconds; the CPU time the process had used, every thread) on
standard output, and runs on until stopped (SIGTERM).

Nothing else changes: the imports, the settings, the logging and the start-up are those of
``winspec run``. Importing :mod:`adapters.docker.mode` here first (to install the subclass)
moves no work out of the timed span: Docker mode imports it anyway.
"""

from __future__ import annotations

import sys
import time

import adapters.docker.mode as docker_mode
from adapters.bundles.local import LocalBundleWriter
from adapters.cli import main as winspec
from controller.bundle import BundleContent
from controller.bundle import WriteOutcome as _WriteOutcome


class _ObservedWriter(LocalBundleWriter):
    """The real writer, printing when the first and the ``target``-th write returned."""

    target = 0
    done = 0

    async def write(self, bundle_id: str, content: BundleContent) -> bool | _WriteOutcome:
        written = await super().write(bundle_id, content)
        cls = _ObservedWriter
        cls.done += 1
        if cls.done == 1:
            print(f"first {time.time()!r}", flush=True)
        if cls.done == cls.target:
            print(f"done {time.time()!r} {time.process_time()!r}", flush=True)
        return written


def main(argv: list[str]) -> int:
    """``COUNT`` then the options of ``winspec run``."""
    _ObservedWriter.target = int(argv[0])
    docker_mode.LocalBundleWriter = _ObservedWriter  # type: ignore[attr-defined]
    return winspec(["run", *argv[1:]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
