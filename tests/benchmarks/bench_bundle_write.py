"""How fast LocalBundleWriter publishes a bundle, next to the floor of one durable file write.

Run: ``python -m tests.benchmarks.bench_bundle_write [--dir DIR] [--seconds S]``.

The bundle is realistic: a ~3 KB ``config.json``, ``links.json`` and two payloads (a secret and
a config), each write with new content so nothing is skipped. The usual rewrite changes
``config.json`` only, so its payload directories are carried over; it is measured with its
fsyncs in parallel (as :class:`~adapters.bundles.local.LocalBundleWriter` runs it) and one after
another. A rewrite whose payloads change too (written fresh) is measured with parallel fsyncs.
The floor is the least a durable atomic write of the same bytes can cost: one file written,
fsynced, renamed into place and its directory fsynced. All are measured in turn, in the
same run and directory, so that a noisy disk affects them alike. ``--dir`` should be on the
file system bundles will really live on; on a tmpfs fsync is free and the figures meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from adapters.bundles.local import atomic_replace_supported, load_digest_key, write_bundle_sync
from controller.bundle import BundleContent

BUNDLE_ID = "5e" * 32
BATCH = 5  # rounds of (parallel, floor, serial, new payloads) between looks at the clock


def bundle_content(version: int, *, payload_version: int = 0) -> BundleContent:
    """A bundle of realistic size whose config.json differs for every ``version``.

    Its payloads differ for every ``payload_version``.
    """
    spec = {
        "ociVersion": "1.1.0",
        "annotations": {"io.winspec.version": str(version)},
        "process": {"args": ["cmd", "/S", "/C", "ping -t localhost"], "cwd": "C:\\"},
        "windows": {"layerFolders": [f"C:\\ProgramData\\docker\\windowsfilter\\{'ab' * 32}"]},
        "padding": "p" * 2600,
    }
    return BundleContent(
        files={
            "config.json": json.dumps(spec).encode(),
            "links.json": b'{"links":[{"target":"C:\\\\data","source":"C:\\\\host\\\\data"}]}',
            "secrets/x1b2c3d4e5f6g7h8i9j0k1l2m": b"s" * 250 + b"%06d" % payload_version,
            "configs/q9w8e7r6t5y4u3i2o1p0a9s8d": b"c" * 1018 + b"%06d" % payload_version,
        }
    )


def floor_write(directory: Path, data: bytes) -> None:
    """One file, durably and atomically: write, fsync, rename, fsync the directory."""
    tmp = directory / "floor.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / "floor.bin")
    if os.name != "nt":
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def timed(action: Callable[..., object], *args: Any, **kwargs: Any) -> float:
    """Seconds one call of ``action`` took."""
    start = time.perf_counter()
    action(*args, **kwargs)
    return time.perf_counter() - start


def describe(name: str, samples: list[float]) -> str:
    """One line: operations per second and latency percentiles in milliseconds."""
    cuts = statistics.quantiles(samples, n=100)
    return (
        f"{name:<22} {len(samples) / sum(samples):9.1f}/s   "
        f"p50 {cuts[49] * 1e3:7.3f} ms   p90 {cuts[89] * 1e3:7.3f} ms   "
        f"p99 {cuts[98] * 1e3:7.3f} ms   (n={len(samples)})"
    )


def run(directory: Path, seconds: float, fsyncs: ThreadPoolExecutor) -> None:
    """Measure and print the bundle writes, the unchanged rewrites and the floor."""
    root = directory / "bundles"
    floor_dir = directory / "floor"
    floor_dir.mkdir()
    # The writer reads the root's digest key once, as LocalBundleWriter does.
    write = partial(write_bundle_sync, key=load_digest_key(root))
    sample = bundle_content(0)
    total = sum(len(data) for data in sample.files.values())
    floor_data = b"f" * total
    version = 0
    for _ in range(3):  # warm-up: the root, the fsync threads, the page cache
        version += 1
        write(root, BUNDLE_ID, bundle_content(version), fsync_executor=fsyncs)
        floor_write(floor_dir, floor_data)

    parallel: list[float] = []
    serial: list[float] = []
    fresh: list[float] = []
    floor: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(BATCH):
            version += 1
            content = bundle_content(version)
            parallel.append(timed(write, root, BUNDLE_ID, content, fsync_executor=fsyncs))
            floor.append(timed(floor_write, floor_dir, floor_data))
            version += 1
            content = bundle_content(version)
            serial.append(timed(write, root, BUNDLE_ID, content))
            # New payloads, then back to payload version 0 (not measured) for the next round.
            version += 1
            content = bundle_content(version, payload_version=version)
            fresh.append(timed(write, root, BUNDLE_ID, content, fsync_executor=fsyncs))
            version += 1
            content = bundle_content(version)
            write(root, BUNDLE_ID, content, fsync_executor=fsyncs)
    unchanged = [timed(write, root, BUNDLE_ID, content) for _ in range(200)]

    print(f"directory: {directory}")
    print(f"atomic directory exchange: {atomic_replace_supported(root)}")
    print(f"bundle: {len(sample.files)} files, {total} bytes; floor: 1 file, {total} bytes")
    print(describe("bundle, parallel fsync", parallel))
    print(describe("bundle, serial fsync", serial))
    print(describe("new payloads, parallel", fresh))
    print(describe("floor (1 file)", floor))
    print(describe("unchanged (skipped)", unchanged))
    for name, samples in (("parallel", parallel), ("serial", serial), ("new payloads", fresh)):
        median = statistics.median(samples) / statistics.median(floor)
        mean = statistics.fmean(samples) / statistics.fmean(floor)
        print(
            f"bundle ({name}) / floor: {median:.2f}x the median latency, "
            f"{mean:.2f}x the mean (as many times fewer per second)"
        )


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the benchmark in a scratch directory, remove it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, help="parent of the scratch dir (default: TMPDIR)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time (default 3)")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="winspec-bench-", dir=args.dir))
    try:
        # As LocalBundleWriter runs it: the fsyncs of one bundle at once, on their own threads.
        with ThreadPoolExecutor(8, thread_name_prefix="bench-fsync") as fsyncs:
            run(scratch, args.seconds, fsyncs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
