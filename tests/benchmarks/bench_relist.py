"""Docker mode started beside 1,000 existing containers: the relist, from process start, next
to its floor.

Run: ``python -m tests.benchmarks.bench_relist [--containers N] [--workers W] [--dir DIR]`` (as
root, with Debian's docker.io installed; it starts its own private dockerd from tests/dockerd.py
and removes it afterwards).

``N`` containers are created first (not timed). Then, on the same engine and file system, each
phase a new process, timed from just before it is started (so the interpreter's start, the
imports and the connection are in every figure, winspec's and the floor's alike), and each
after an ``os.sync()``, so that none waits for data an earlier step left dirty (a ``syncfs``
barrier would):

1. **winspec, cold**: ``winspec run`` (:mod:`tests.benchmarks.observed_run`: the real command
   with its bundle writer observed) with an empty bundle root, its default settings apart from
   the paths, the listen address and ``W`` workers (logging at info level, in JSON, to a file).
   Timed to the ``N``-th bundle made durable: start, connect, list, inspect every container
   and its image, generate, write. Its start-up: to the first bundle durable.
2. **winspec, warm**: the same again over the bundles of phase 1 (a restart with nothing
   changed): timed to the ``N``-th write that found its bundle up to date (each read back and
   compared: drift repair's check).
3. **verify**: every bundle of phase 2 read back and compared with its files
   (:func:`adapters.bundles.local.find_drift`, drift repair's check, which phase 2 already
   included), alone, in this process, on ``W`` threads: its rate beside the floor's write rate.
4. **floor**: the least a relist must do, in a process of its own
   (:mod:`tests.benchmarks.floor_client`): start Python, import aiohttp, list the containers,
   then with ``W`` concurrent workers inspect each one (``GET /containers/{id}/json``) and write
   a file of the size of winspec's median ``config.json`` durably (write, fsync, rename,
   directory fsync); the same without the writes (inspect only, the warm floor); and the same
   writing a bundle's shape instead of the file (a new directory with ``config.json``,
   ``links.json`` and ``.digest``, made durable, renamed into place, the rename made durable,
   with winspec's own barriers: :func:`tests.benchmarks.floor_client.floor_bundle_write`), the
   least any writer of such bundles pays, which bounds the cold ratio.
5. **start-up**: ``winspec --version`` and a bare ``python -c pass``, each the median of 5.

winspec's packages are byte-compiled first, as an installation compiles them: no process
compiles a module of winspec (or of a library) while it is timed.

Printed: each phase's time and rate and the CPU time its process had used by then (every
thread, user and system: steadier than the time on a loaded machine), the start-ups, and the
ratios cold/floor, warm/inspect-only floor and cold/floor with bundle.
"""

from __future__ import annotations

import compileall
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from adapters.bundles.local import DIGEST_FILE, find_drift
from controller.bundle import CONFIG_FILE
from tests.benchmarks.engine import bench_parser, private_engine
from tests.dockerd import DockerDaemon


class Timed:
    """One phase's process: seconds from just before its start to its first and last item, and
    the CPU time it had used by its last (all its threads, user and system)."""

    def __init__(self, first: float, done: float, cpu: float) -> None:
        self.first = first
        self.done = done
        self.cpu = cpu


def _timed_process(argv: list[str], log: Path, *, stop: bool) -> Timed:
    """Start ``argv``, read its ``first``/``done`` lines; SIGTERM it after ``done`` if ``stop``."""
    marks: dict[str, float] = {}
    cpu = 0.0
    with open(log, "ab") as err:
        began = time.time()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err)
        try:
            assert process.stdout is not None
            for line in process.stdout:
                word, *values = line.decode().split() or [""]
                if word not in ("first", "done"):
                    continue  # not ours (a profiler's, say)
                marks[word] = float(values[0]) - began
                if word == "done":
                    cpu = float(values[1])
                    break
            if stop:
                process.send_signal(signal.SIGTERM)
            if process.wait(timeout=600) not in (0, -signal.SIGTERM):
                raise RuntimeError(f"{argv[2]} failed ({process.returncode}); see {log}")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if "done" not in marks:
        raise RuntimeError(f"{argv[2]} ended before it was done; see {log}")
    return Timed(marks["first"], marks["done"], cpu)


def run_winspec(daemon: DockerDaemon, scratch: Path, count: int, workers: int) -> Timed:
    """``winspec run`` until ``count`` bundle writes returned (then stopped)."""
    argv = [
        sys.executable,
        "-m",
        "tests.benchmarks.observed_run",
        str(count),
        f"--docker-host={daemon.host}",
        f"--bundle-root={scratch / 'bundles'}",
        f"--secrets-dir={scratch / 'secrets'}",
        "--listen=127.0.0.1:0",
        f"--workers={workers}",
    ]
    return _timed_process(argv, scratch / "winspec.log", stop=True)


def run_floor(
    daemon: DockerDaemon, directory: Path, workers: int, size: int, *, bundle: bool = False
) -> Timed:
    """The floor client's process: list, inspect (and write ``size`` bytes unless 0, as a file
    or with ``bundle`` as a bundle's shape) each."""
    directory.mkdir()
    argv = [sys.executable, "-m", "tests.benchmarks.floor_client"]
    argv += [daemon.socket_path, str(directory), str(workers), str(size)]
    argv += ["bundle"] if bundle else []
    return _timed_process(argv, directory.parent / "floor.log", stop=False)


def bundle_files(root: Path) -> dict[str, dict[str, bytes]]:
    """Every bundle below ``root``: its files (``.digest`` aside) as read now."""
    bundles: dict[str, dict[str, bytes]] = {}
    for bundle in root.iterdir():
        if bundle.name.startswith("."):
            continue
        files = {}
        for path in bundle.rglob("*"):
            if path.is_file() and path.name != DIGEST_FILE:
                files[path.relative_to(bundle).as_posix()] = path.read_bytes()
        bundles[bundle.name] = files
    return bundles


def run_verify(root: Path, workers: int) -> tuple[float, int]:
    """Read back every bundle below ``root`` and compare it with its files (no drift expected);
    seconds, and the median size of a ``config.json``."""
    bundles = bundle_files(root)
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        drift = list(pool.map(lambda i: find_drift(root / i, bundles[i]), bundles))
    took = time.perf_counter() - began
    assert not any(drift), "drift in bundles nobody touched"
    return took, int(statistics.median(len(f[CONFIG_FILE]) for f in bundles.values()))


def compile_sources() -> None:
    """Byte-compile winspec's packages (and these benchmarks), as installing it does, so that no
    process started here compiles them, whatever ``PYTHONDONTWRITEBYTECODE`` says (aiohttp and
    the other libraries were compiled when installed)."""
    repo = Path(__file__).resolve().parents[2]
    for package in ("adapters", "controller", "tests"):
        compileall.compile_dir(repo / package, quiet=1)


def median_run(argv: list[str], times: int = 5) -> float:
    """Median seconds of ``argv`` run to its exit (output discarded)."""
    took = []
    for _ in range(times):
        began = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        took.append(time.perf_counter() - began)
    return statistics.median(took)


def _line(name: str, seconds: float, count: int, cpu: float | None = None) -> str:
    used = f"  CPU {cpu:5.2f} s" if cpu is not None else ""
    return f"{name:34} {seconds:8.2f} s  {count / seconds:9.0f} containers/s{used}"


def main(argv: list[str] | None = None) -> int:
    """Create the containers, run the phases, print, clean up."""
    parser = bench_parser(__doc__)
    parser.add_argument("--containers", type=int, default=1000, help="default 1000")
    parser.add_argument("--workers", type=int, default=4, help="winspec workers (default 4)")
    args = parser.parse_args(argv)
    compile_sources()
    with private_engine("bench-relist", args.dir) as (daemon, scratch):
        (scratch / "secrets").mkdir()
        with ThreadPoolExecutor(max_workers=8) as pool:
            names = [f"relist-{i:05d}" for i in range(args.containers)]
            list(pool.map(daemon.create_container, names))
        n, w = args.containers, args.workers
        # Every phase starts with nothing dirty on the file system (os.sync() first): a syncfs
        # barrier waits for all of it, and the engine's 1,000 new containers are a lot.
        os.sync()
        cold = run_winspec(daemon, scratch, n, w)
        written = len(list((scratch / "bundles").iterdir()))
        assert written >= n, written
        os.sync()
        warm = run_winspec(daemon, scratch, n, w)
        verify, size = run_verify(scratch / "bundles", w)
        os.sync()
        floor = run_floor(daemon, scratch / "floor", w, size)
        os.sync()
        inspect_only = run_floor(daemon, scratch / "floor-inspect", w, 0)
        os.sync()
        shape = run_floor(daemon, scratch / "floor-bundle", w, size, bundle=True)
        # `python -m adapters.cli`, not the console script: the code of the working directory.
        version_run = median_run([sys.executable, "-m", "adapters.cli", "--version"])
        bare = median_run([sys.executable, "-c", "pass"])
        version = daemon.call("GET", "/version")
    print(
        f"engine: dockerd {version.get('Version')} (vfs), {n} existing containers, "
        f"{w} workers; floor file {size} bytes (winspec's median config.json); "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("every figure from just before its process started (start-up included)")
    print(_line("winspec cold (no bundles yet)", cold.done, n, cold.cpu))
    print(_line("floor: list + inspect + write", floor.done, n, floor.cpu))
    print(_line("winspec warm (all up to date)", warm.done, n, warm.cpu))
    print(_line("floor: list + inspect", inspect_only.done, n, inspect_only.cpu))
    print(_line("floor: list + inspect + bundle", shape.done, n, shape.cpu))
    print(_line("verify only (read back, compare)", verify, n))
    print(
        f"start-up to the first container done: winspec cold {cold.first:.2f} s, warm "
        f"{warm.first:.2f} s; floor {floor.first:.2f} s, inspect-only {inspect_only.first:.2f} s"
    )
    print(
        f"start-up to exit: winspec --version {version_run:.3f} s; "
        f"python -c pass {bare:.3f} s (median of 5)"
    )
    print(
        f"verified {n / verify:.0f} bundles/s beside the write floor's "
        f"{n / max(floor.done - floor.first, 1e-9):.0f} files/s (after its first)"
    )
    print(
        f"ratio cold/floor {cold.done / floor.done:.2f}x, "
        f"warm/inspect-only {warm.done / inspect_only.done:.2f}x; "
        f"CPU {cold.cpu / floor.cpu:.2f}x, {warm.cpu / inspect_only.cpu:.2f}x"
    )
    # The relist that reads every bundle back (drift repair's check) is the warm one: a cold
    # relist finds no bundle to check.
    print(
        f"warm (every bundle read back and compared) / floor with write "
        f"{warm.done / floor.done:.2f}x; the writes (cold - warm) {cold.done - warm.done:.2f} s "
        f"beside the floor's (with write - inspect-only) {floor.done - inspect_only.done:.2f} s"
    )
    # What a bundle costs over one file, whoever writes it: the bound of the cold ratio.
    bundles, files = shape.done - inspect_only.done, floor.done - inspect_only.done
    print(
        f"the bundle's shape: cold / floor with bundle {cold.done / shape.done:.2f}x "
        f"(CPU {cold.cpu / shape.cpu:.2f}x); the floor's bundles (with bundle - inspect-only) "
        f"{bundles:.2f} s, {bundles / max(files, 1e-9):.2f}x its files'"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
