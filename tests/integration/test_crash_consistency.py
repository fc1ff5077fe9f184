"""Crash consistency of Docker mode against a real engine.

``winspec run`` (a real child process) is SIGKILLed at random moments, some during its start-up
and relist, most while it is busy, and restarted each time, while a thread keeps creating,
updating (``POST /containers/{id}/update``), renaming, starting and removing containers and
scaling a swarm service whose tasks carry a secret and a config. Once the operations stop and
the last restart has settled, every live container must have exactly one bundle whose files
are byte for byte what the controller's resolver, generator and bundle builder give for it now
(and a ``.digest`` under the root's key), with no ``.tmp-``/``.old-`` leftover and no bundle of a
removed container.

The short form runs in the normal suite (5 kills, at least 100 operations). The long form (25
kills, at least 1,000 operations) runs with ``WINSPEC_LONG_TESTS=1``; ``WINSPEC_CRASH_SEED``
replays one sequence (the seed is printed on failure).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.dockerd import DockerDaemon
from tests.integration.winspec_process import WinspecProcess, wait_consistent

pytestmark = pytest.mark.docker

LONG = os.environ.get("WINSPEC_LONG_TESTS", "") == "1"
KILLS = 25 if LONG else 5
MIN_OPERATIONS = 1000 if LONG else 100
SEED = int(os.environ.get("WINSPEC_CRASH_SEED") or random.SystemRandom().randrange(2**32))


@dataclass
class Operations:
    """The containers this test made and what it has done to them."""

    engine: DockerDaemon
    rng: random.Random
    service_id: str
    live: list[str] = field(default_factory=list)
    started: set[str] = field(default_factory=set)
    # Which CPU option each container uses: Docker refuses Nano CPUs beside CPU shares on
    # Windows (so do the rules), while a Linux engine takes both.
    nano: dict[str, bool] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)
    count: int = 0

    def step(self) -> None:
        """One random operation on the engine."""
        ops = ["create"] * 4
        if self.live:
            ops += ["update"] * 3 + ["rename", "start"] + ["remove"] * 2
        if self.rng.random() < 0.02:
            ops = ["scale"]
        op = self.rng.choice(ops)
        getattr(self, f"_{op}")()
        self.done[op] = self.done.get(op, 0) + 1
        self.count += 1

    def _name(self) -> str:
        return f"crash-{uuid.uuid4().hex[:12]}"

    def _create(self) -> None:
        nano = self.rng.random() < 0.5
        host_config: dict[str, object] = {}
        if self.rng.random() < 0.5:
            if nano:
                host_config["NanoCpus"] = self.rng.choice([1, 2]) * 500_000_000
            else:
                host_config["CpuShares"] = self.rng.choice([256, 512, 1024])
        cid = self.engine.create_container(
            self._name(),
            Cmd=["/pause"],
            Env=[f"N={self.rng.randrange(10**6)}"],
            Labels={"suite": "crash", "n": str(self.count)},
            HostConfig=host_config,
        )
        self.live.append(cid)
        self.nano[cid] = nano

    def _update(self) -> None:
        cid = self.rng.choice(self.live)
        # Only what a Windows engine takes too (a Linux engine adds MemorySwap to a memory
        # limit, which the Windows rules refuse); a restart policy changes no spec.
        cpu: dict[str, object] = (
            {"NanoCpus": self.rng.choice([1, 3]) * 250_000_000}
            if self.nano[cid]
            else {"CpuShares": self.rng.choice([128, 512, 2048])}
        )
        restart = {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2}}
        body = cpu if self.rng.random() < 0.8 else restart
        self.engine.call("POST", f"/containers/{cid}/update", body)

    def _rename(self) -> None:
        cid = self.rng.choice(self.live)
        self.engine.call("POST", f"/containers/{cid}/rename", query={"name": self._name()})

    def _start(self) -> None:
        waiting = [cid for cid in self.live if cid not in self.started]
        if waiting:
            cid = self.rng.choice(waiting)
            self.engine.start_container(cid)
            self.started.add(cid)

    def _remove(self) -> None:
        cid = self.live.pop(self.rng.randrange(len(self.live)))
        self.started.discard(cid)
        self.engine.remove_container(cid)

    def _scale(self) -> None:
        service = self.engine.call("GET", f"/services/{self.service_id}")
        spec = service["Spec"]
        spec["Mode"]["Replicated"]["Replicas"] = self.rng.randint(1, 3)
        self.engine.call(
            "POST",
            f"/services/{self.service_id}/update",
            spec,
            query={"version": str(service["Version"]["Index"])},
        )


def _run_operations(
    ops: Operations, stop: threading.Event, abort: threading.Event, errors: list[BaseException]
) -> None:
    try:
        while not abort.is_set() and not (stop.is_set() and ops.count >= MIN_OPERATIONS):
            ops.step()
            time.sleep(ops.rng.uniform(0.0, 0.02))
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)


@pytest.mark.timeout(1800 if LONG else 240)
def test_sigkill_at_random_moments_leaves_exactly_the_generated_bundles(
    fresh_dockerd: DockerDaemon, tmp_path: Path
) -> None:
    """SIGKILLed at random moments amid creates/updates/renames/removals, restarts converge."""
    engine = fresh_dockerd
    rng = random.Random(SEED)
    proc = WinspecProcess(engine, tmp_path)
    secret_name, config_name = f"crash-secret-{SEED}", f"crash-config-{SEED}"
    engine.create_secret(secret_name, b"crash-secret-payload")
    engine.create_config(config_name, b"crash=config\n")
    (proc.secrets_dir / secret_name).write_bytes(b"crash-secret-payload")
    service_id = engine.create_service(
        "crash-svc",
        secrets=[(secret_name, "app-secret")],
        configs=[(config_name, "C:\\app\\app.conf")],
        replicas=2,
    )
    ops = Operations(engine, rng, service_id)
    stop, abort = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    worker = threading.Thread(target=_run_operations, args=(ops, stop, abort, errors), daemon=True)
    kills_before_ready = 0
    try:
        worker.start()
        for kill in range(KILLS):
            proc.start()
            # Every third kill (at least one) lands in start-up: the sweep, the relist.
            if kill % 3 == 1:
                time.sleep(rng.uniform(0.3, 1.5))
                kills_before_ready += proc.readyz() != 200
            else:
                proc.wait_ready()
                time.sleep(rng.uniform(0.0, 1.0))
            proc.kill()
            assert not errors, f"seed {SEED}: an engine operation failed: {errors[0]!r}"
        stop.set()
        worker.join(timeout=600)
        assert not worker.is_alive()
        assert not errors, f"seed {SEED}: an engine operation failed: {errors[0]!r}"
        assert ops.count >= MIN_OPERATIONS
        assert {"create", "update", "rename", "remove"} <= ops.done.keys(), ops.done

        proc.start()
        proc.wait_ready()
        asyncio.run(wait_consistent(proc, within=300 if LONG else 90, context=f"seed {SEED}: "))
        assert proc.stop() == 0, proc.log_tail()
    finally:
        abort.set()
        worker.join(timeout=30)
        proc.close()
    print(
        f"seed {SEED}: {ops.count} operations {ops.done}, {KILLS} kills "
        f"({kills_before_ready} before ready), {len(ops.live)} of ours live at the end"
    )
