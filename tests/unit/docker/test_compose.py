"""Docker mode wiring of ``--swarm-host``: DockerMode against scripted engines over real HTTP.

The node's engine is a swarm *worker* (``/info`` says ``Swarm.ControlAvailable`` false): it
answers 503 "not a swarm manager" for tasks and configs, as a real worker does. With
``swarm_host`` set, tasks and configs come from a second scripted engine, the manager, spoken
to in its own negotiated API version; without it, a swarm-task container is refused once with
a permanent error and the worker is never asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from adapters.docker.mode import CONTROLLER_NAME, DockerMode, EngineUnreachableError
from controller.settings import load_settings
from tests.support.waiting import eventually
from tests.unit.docker.scripted import ScriptedEngine, answer_json, serving

CID = "e" * 64
IMAGE_ID = "sha256:" + "2" * 64
TASK_ID = "t1a2s3k4i5d6x7y8z9w0v1u2q"
SECRET_ID = "s1e2c3r4e5t6i7d8x9y0z1w2v"
CONFIG_ID = "c1o2n3f4i5g6i7d8x9y0z1w2v"
SERVICE_ID = "s1e2r3v4i5c6e7i8d9x0y1z2w"
NODE_ID = "n1o2d3e4i5d6x7y8z9w0v1u2q"
NODE_API, MANAGER_API = "/v1.41", "/v1.30"
NOT_A_MANAGER = answer_json(
    {
        "message": "This node is not a swarm manager. Worker nodes can't be used to view or modify "
        "cluster state. Please run this command on a manager node or promote the current node to "
        "a manager."
    },
    503,
)


async def _held_open_events(request: web.Request) -> web.StreamResponse:
    """An /events stream that stays open (cancelled when the client goes away)."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await asyncio.sleep(3600)
    return response


def script_worker_node(engine: ScriptedEngine) -> None:
    """A worker node's engine with one swarm-task container; tasks and configs answer 503."""
    v = NODE_API
    engine.on("/version", answer_json({"ApiVersion": "1.43"}))
    engine.on(
        f"{v}/info",
        answer_json(
            {
                "OSType": "linux",
                "NCPU": 2,
                "KernelVersion": "6.1.0",
                "DockerRootDir": "/var/lib/docker",
                "Swarm": {"LocalNodeState": "active", "ControlAvailable": False},
            }
        ),
    )
    engine.on(f"{v}/events", _held_open_events)
    engine.on(f"{v}/containers/json", answer_json([{"Id": CID}]))
    engine.on(
        f"{v}/containers/{CID}/json",
        answer_json(
            {
                "Id": CID,
                "Name": "/web.1.x",
                "Path": "cmd.exe",
                "Image": IMAGE_ID,
                "Config": {
                    "Labels": {
                        "com.docker.swarm.task.id": TASK_ID,
                        "com.docker.swarm.service.id": SERVICE_ID,
                        "com.docker.swarm.node.id": NODE_ID,
                    }
                },
                "HostConfig": {"NetworkMode": "default"},
                "GraphDriver": {"Name": "vfs"},
            }
        ),
    )
    engine.on(
        f"{v}/images/{IMAGE_ID}/json",
        answer_json({"Id": IMAGE_ID, "Os": "windows", "RootFS": {"Layers": ["sha256:base"]}}),
    )
    engine.on(f"{v}/tasks/{TASK_ID}", NOT_A_MANAGER)
    engine.on(f"{v}/configs/{CONFIG_ID}", NOT_A_MANAGER)


def script_manager(engine: ScriptedEngine) -> None:
    """A manager's engine (an older API) that knows the task and its config."""
    v = MANAGER_API
    engine.on("/version", answer_json({"ApiVersion": "1.30"}))
    task: dict[str, Any] = {
        "ID": TASK_ID,
        "ServiceID": SERVICE_ID,
        "NodeID": NODE_ID,
        "Slot": 1,
        "Status": {"State": "running", "ContainerStatus": {"ContainerID": CID}},
        "Spec": {
            "ContainerSpec": {
                "Secrets": [{"File": {"Name": "db"}, "SecretID": SECRET_ID, "SecretName": "db"}],
                "Configs": [
                    {"File": {"Name": "C:\\app\\a.json"}, "ConfigID": CONFIG_ID, "ConfigName": "a"}
                ],
            }
        },
    }
    engine.on(f"{v}/tasks/{TASK_ID}", answer_json(task))
    engine.on(f"{v}/configs/{CONFIG_ID}", answer_json({"ID": CONFIG_ID, "Spec": {"Data": "e30="}}))


@contextlib.asynccontextmanager
async def running(
    node: ScriptedEngine, tmp_path: Path, **overrides: Any
) -> AsyncIterator[DockerMode]:
    """DockerMode against the node engine for the duration of the block."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "db").write_bytes(b"pw")
    settings = load_settings(
        {
            "docker_host": node.host,
            "bundle_root": str(tmp_path / "bundles"),
            "secrets_dir": str(secrets),
            "listen": "127.0.0.1:0",
            "retry_attempts": 2,
            "api_timeout": 5.0,
            "shutdown_timeout": 2.0,
            **overrides,
        }
    )
    mode = DockerMode(settings)
    task = asyncio.create_task(mode.run())
    try:
        async with asyncio.timeout(10):
            started = asyncio.create_task(mode.started.wait())
            await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            if task.done():
                task.result()
        yield mode
    finally:
        mode.request_stop()
        await asyncio.wait_for(task, timeout=10)


def _terminal_errors(mode: DockerMode) -> float | None:
    return mode.registry.get_sample_value(
        "controller_runtime_terminal_reconcile_errors_total", {"controller": CONTROLLER_NAME}
    )


async def test_worker_with_swarm_host_gets_tasks_and_configs_from_the_manager(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """--swarm-host: the bundle of a worker's swarm task is written from the manager's data."""
    manager = ScriptedEngine()
    script_worker_node(engine)
    script_manager(manager)

    async with serving(manager), running(engine, tmp_path, swarm_host=manager.host) as mode:
        config = tmp_path / "bundles" / CID / "config.json"
        await eventually(config.is_file, within=5.0)
        assert _terminal_errors(mode) == 0

    assert manager.seen[0] == "/version"  # the manager's own version, negotiated
    assert manager.hits(f"{MANAGER_API}/tasks/{TASK_ID}") >= 1
    assert manager.hits(f"{MANAGER_API}/configs/{CONFIG_ID}") >= 1
    assert engine.hits(f"{NODE_API}/tasks/{TASK_ID}") == 0
    assert engine.hits(f"{NODE_API}/configs/{CONFIG_ID}") == 0
    bundle = tmp_path / "bundles" / CID
    assert (bundle / "configs" / CONFIG_ID).read_bytes() == b"{}"
    assert (bundle / "secrets" / SECRET_ID).read_bytes() == b"pw"
    assert json.loads(config.read_bytes())["ociVersion"] == "1.0.2"


async def test_worker_without_swarm_host_refuses_swarm_tasks_once(
    engine: ScriptedEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No --swarm-host on a worker: a warning at start, then one terminal error, no 503 retries."""
    caplog.set_level(logging.WARNING)
    script_worker_node(engine)

    async with running(engine, tmp_path) as mode:
        await eventually(lambda: _terminal_errors(mode) == 1, within=5.0)

    assert engine.hits(f"{NODE_API}/tasks/{TASK_ID}") == 0
    assert not (tmp_path / "bundles" / CID).exists()
    messages = [r.getMessage() for r in caplog.records]
    assert any("swarm worker and no --swarm-host is set" in m for m in messages)


async def test_unreachable_swarm_host_stops_the_start(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A --swarm-host that cannot be reached at start is an EngineUnreachableError naming it."""
    script_worker_node(engine)
    with socket.socket() as sock:  # a port nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    with pytest.raises(EngineUnreachableError, match=r"swarm manager \(--swarm-host\)"):
        async with running(engine, tmp_path, swarm_host=f"tcp://127.0.0.1:{port}"):
            pass
