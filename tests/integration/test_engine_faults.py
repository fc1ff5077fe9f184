"""Engine faults while containers are being created, against a real dockerd and a real
``winspec run`` process.

Beside tests/integration/test_docker_mode.py (an engine restart with the controller idle, a
silent stream restarted by the watchdog), these fault the engine in the middle of a stream of
creates and removals: dockerd stopped and started again, and dockerd frozen with SIGSTOP (the
socket still accepts connections, nothing answers) and thawed with SIGCONT. Afterwards nothing
is lost (the bundle root is exactly what the generator gives for every container, none for
removed ones), ``/readyz`` said 503 while the stream was down and 200 after, and the retries
were bounded and counted in ``/metrics`` (``winspec_api_retries_total``,
``winspec_watch_restarts_total``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.dockerd import DockerAPIError, DockerDaemon
from tests.integration.winspec_process import WinspecProcess, wait_consistent
from tests.support.waiting import wait_for

pytestmark = pytest.mark.docker

IDLE_TIMEOUT = 2.0
OPTIONS = ("--idle-timeout", "2", "--api-timeout", "2", "--retry-attempts", "3")
#: Upper bounds: retries that kept going would pass these many times over.
MAX_WATCH_RESTARTS = 15
MAX_API_RETRIES = 200


@dataclass
class Load:
    """Creates (and every fourth time removes) containers from a thread until stopped."""

    engine: DockerDaemon
    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failures: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Create a container every ~50 ms; an engine that is away only counts a failure."""
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                if n % 4 == 0 and self.created:
                    cid = self.created.pop(0)
                    self.engine.remove_container(cid)
                    self.removed.append(cid)
                else:
                    cid = self.engine.create_container(f"fault-{uuid.uuid4().hex[:12]}")
                    self.created.append(cid)
            except (OSError, DockerAPIError):
                self.failures += 1
                time.sleep(0.1)
            time.sleep(0.02)


class Readiness:
    """Samples /readyz from a thread: (monotonic time, status) pairs."""

    def __init__(self, proc: WinspecProcess) -> None:
        self.proc = proc
        self.samples: list[tuple[float, int | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        """Sample every 50 ms until stopped."""
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), self.proc.readyz()))
            time.sleep(0.05)

    def between(self, start: float, end: float) -> set[int | None]:
        """The statuses seen from ``start`` to ``end``."""
        return {status for at, status in self.samples if start <= at <= end}


def _under_fault(engine: DockerDaemon, tmp_path: Path, fault: str) -> dict[str, object]:
    """Run winspec under load, apply ``fault`` mid-stream, check the outcome; the figures."""
    proc = WinspecProcess(engine, tmp_path, *OPTIONS)
    load = Load(engine)
    ready = Readiness(proc)
    threads = [threading.Thread(target=t.run, daemon=True) for t in (load, ready)]
    try:
        proc.start()
        proc.wait_ready()
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        restarts_before = proc.metric("winspec_watch_restarts_total", source="docker")
        began = time.monotonic()
        if fault == "restart":
            assert engine.pid is not None
            os.kill(engine.pid, signal.SIGTERM)
            wait_for(lambda: not engine.running, 30, what="dockerd to exit")
            stopped = time.monotonic()
            time.sleep(2.0)
            down_until = time.monotonic()
            engine.start()
            # Gone from its exit to its start (the stream ends at once: a closed socket).
            must_be_down = (stopped + 0.5, down_until)
        else:
            assert engine.pid is not None
            # A burst first, so that inspects of the last creates are in flight when it freezes.
            for _ in range(5):
                load.created.append(engine.create_container(f"burst-{uuid.uuid4().hex[:12]}"))
            os.kill(engine.pid, signal.SIGSTOP)
            frozen = time.monotonic()
            try:
                time.sleep(3 * IDLE_TIMEOUT + 1)
            finally:
                os.kill(engine.pid, signal.SIGCONT)
            down_until = time.monotonic()
            # Noticed within two idle timeouts of the freeze (not of the burst before it, which
            # takes seconds on a loaded machine): one for the quiet stream, one for its re-open.
            must_be_down = (frozen + 2 * IDLE_TIMEOUT + 1.0, down_until - 0.2)
        time.sleep(2.0)
        load.stop.set()
        threads[0].join(timeout=120)
        proc.wait_ready(within=60)
        asyncio.run(wait_consistent(proc, within=90))
        ready.stop.set()
        threads[1].join(timeout=10)

        assert load.created, "no container created"
        seen_down = ready.between(*must_be_down)
        assert seen_down == {503}, f"/readyz while the stream was down: {seen_down}"
        assert ready.samples[-1][1] == 200
        restarts = proc.metric("winspec_watch_restarts_total", source="docker") - restarts_before
        retries = proc.metric("winspec_api_retries_total")
        assert 1 <= restarts <= MAX_WATCH_RESTARTS, restarts
        assert retries <= MAX_API_RETRIES, retries
        assert proc.stop() == 0, proc.log_tail()
        return {
            "created": len(load.created) + len(load.removed),
            "removed": len(load.removed),
            "failed": load.failures,
            "restarts": restarts,
            "retries": retries,
            "down_for": round(down_until - began, 1),
        }
    finally:
        load.stop.set()
        ready.stop.set()
        proc.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fault", ["restart", "freeze"])
def test_engine_fault_mid_stream_loses_nothing(
    fresh_dockerd: DockerDaemon, tmp_path: Path, fault: str
) -> None:
    """dockerd restarted or frozen amid creates/removals: no bundle lost, /readyz 503 then 200."""
    figures = _under_fault(fresh_dockerd, tmp_path, fault)
    print(f"{fault}: {figures}")
