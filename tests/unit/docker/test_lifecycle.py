"""Tests of Docker mode's start-up and shutdown (adapters.docker.mode, adapters.runtime) against
a scripted engine.

DockerMode runs in-process against the real HTTP server of tests/unit/docker/scripted.py, with
its own registry, a temporary bundle root and HTTP on 127.0.0.1 at a free port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.cli import main
from adapters.docker.mode import DockerMode
from adapters.runtime import CANCEL_GRACE_SECONDS, SHUTDOWN_MARGIN_SECONDS, ListenError, finish
from controller.settings import load_settings
from tests.support.waiting import eventually
from tests.unit.docker.scripted import ScriptedEngine, answer_json, event_stream

ROOT = Path(__file__).resolve().parents[3]
API = "/v1.41"
INFO = {"OSType": "linux", "NCPU": 2, "KernelVersion": "6.1.0", "DockerRootDir": "/var/lib/docker"}


def script_engine(engine: ScriptedEngine) -> None:
    """Answer what Docker mode asks at start: version, info, the list and a quiet stream."""
    engine.on("/version", answer_json({"ApiVersion": "1.41"}))
    engine.on(f"{API}/info", answer_json(INFO))
    engine.on(f"{API}/containers/json", answer_json([]))
    engine.on(f"{API}/events", event_stream([], hold=60.0))


def mode_for(engine: ScriptedEngine, tmp_path: Path, **overrides: Any) -> DockerMode:
    """A DockerMode for the scripted engine with fast, test-sized settings."""
    (tmp_path / "secrets").mkdir(exist_ok=True)
    settings = {
        "docker_host": engine.host,
        "bundle_root": str(tmp_path / "bundles"),
        "secrets_dir": str(tmp_path / "secrets"),
        "listen": "127.0.0.1:0",
        "retry_attempts": 2,
        "shutdown_timeout": 1.0,
        **overrides,
    }
    return DockerMode(load_settings(settings))


@asynccontextmanager
async def started(mode: DockerMode) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``mode`` until the block ends; the block gets its task once it has started."""
    task = asyncio.create_task(mode.run())
    try:
        await eventually(lambda: mode.started.is_set() or task.done(), within=10)
        if task.done():
            task.result()
        yield task
    finally:
        if not task.done():
            mode.request_stop()
            await asyncio.wait({task}, timeout=30)


async def port_closed(port: int) -> bool:
    """Whether nothing accepts connections on 127.0.0.1:``port`` any more."""
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


def metric(mode: DockerMode, name: str, **labels: str) -> float:
    """One sample of the mode's registry (0 when absent)."""
    return mode.registry.get_sample_value(name, labels) or 0.0


async def test_shutdown_during_a_slow_list_is_bounded_and_complete(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A stop during an endless list ends run() in shutdown_timeout + SHUTDOWN_MARGIN_SECONDS."""
    # run() ends normally and the HTTP port is released.
    script_engine(engine)

    async def slow_list(_request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(60)
        return web.json_response([])

    engine.on(f"{API}/containers/json", slow_list)
    mode = mode_for(engine, tmp_path, api_timeout=60.0)
    async with started(mode) as task:
        await eventually(lambda: engine.hits(f"{API}/containers/json") == 1, within=10)
        port = mode.http_port
        assert port is not None
        loop = asyncio.get_running_loop()
        asked = loop.time()
        mode.request_stop()
        await asyncio.wait({task}, timeout=30)
        took = loop.time() - asked

    assert task.done()
    assert task.exception() is None
    assert took <= mode.settings.shutdown_timeout + SHUTDOWN_MARGIN_SECONDS
    assert await port_closed(port)


async def test_stop_while_the_engine_is_unreachable_returns_at_once(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A stop while start-up retries an unreachable engine ends run() at once, without an error."""
    # It ends without having started; /healthz is answered meanwhile.
    engine.on("/version", answer_json({"message": "starting"}, status=503))
    mode = mode_for(engine, tmp_path, retry_attempts=1000)
    task = asyncio.create_task(mode.run())
    try:
        await eventually(lambda: engine.hits("/version") >= 2, within=10)
        assert mode.http_port is not None
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{mode.http_port}/healthz") as response,
        ):
            assert response.status == 200
        loop = asyncio.get_running_loop()
        asked = loop.time()
        mode.request_stop()
        await asyncio.wait({task}, timeout=30)
        took = loop.time() - asked
    finally:
        task.cancel()
    assert task.done()
    assert task.exception() is None
    assert took < 3 * CANCEL_GRACE_SECONDS + 1.0
    assert not mode.started.is_set()
    assert await port_closed(mode.http_port)


async def test_a_busy_listen_port_fails_before_connecting(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A listen address already in use raises ListenError naming it; the engine is never asked."""
    script_engine(engine)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        mode = mode_for(engine, tmp_path, listen=f"127.0.0.1:{port}")
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}"):
            await mode.run()
    assert engine.seen == []


async def test_the_info_call_is_counted_as_its_own_api(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A retried GET /info counts in winspec_api_retries_total{api="info"}, not "version"."""
    script_engine(engine)
    engine.on(f"{API}/info", answer_json({"message": "busy"}, status=503), answer_json(INFO))
    mode = mode_for(engine, tmp_path, retry_attempts=3)
    async with started(mode):
        pass

    assert metric(mode, "winspec_api_retries_total", api="info") == 1
    assert metric(mode, "winspec_api_retries_total", api="version") == 0


async def test_start_update_rename_and_network_event_types_are_pre_declared(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """winspec_events_received_total has a 0 series for every watched event type from start."""
    script_engine(engine)
    mode = mode_for(engine, tmp_path)
    async with started(mode):
        exposed = {
            sample.labels["type"]
            for family in mode.registry.collect()
            for sample in family.samples
            if sample.name == "winspec_events_received_total"
        }
    assert exposed == {"create", "start", "update", "rename", "destroy", "connect", "disconnect"}


# -- finish(): one bounded shutdown step ------------------------------------------------------


async def test_finish_returns_a_failed_tasks_exception_without_raising() -> None:
    """finish() hands back the exception a task ended with instead of raising it."""

    async def fails() -> None:
        raise OSError("disk gone")

    task = asyncio.ensure_future(fails())
    exc = await finish(task, within=1.0, what="test")
    assert isinstance(exc, OSError)


async def test_finish_cancels_a_task_that_overruns() -> None:
    """A task still running at the deadline is cancelled and finish() returns soon after."""
    task = asyncio.ensure_future(asyncio.sleep(60))
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await finish(task, within=0.05, what="test") is None
    assert task.cancelled()
    assert loop.time() - began < 0.05 + CANCEL_GRACE_SECONDS


async def test_finish_warns_of_an_overrun_but_not_of_a_cancel_asked_for_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An overrun step is logged as a warning; a step given no time is cancelled quietly."""
    with caplog.at_level(logging.DEBUG, logger="winspec"):
        await finish(asyncio.ensure_future(asyncio.sleep(60)), within=0.01, what="slow")
        await finish(asyncio.ensure_future(asyncio.sleep(60)), within=0, what="at-once")
    overruns = [r for r in caplog.records if r.getMessage().startswith("cancelling a shutdown")]
    assert [(r.levelno, getattr(r, "step", None)) for r in overruns] == [(logging.WARNING, "slow")]


async def test_finish_abandons_a_task_that_ignores_cancellation() -> None:
    """A task that swallows its cancellation is abandoned after the grace, not awaited forever."""
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                continue

    task = asyncio.ensure_future(stubborn())
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await finish(task, within=0.05, what="test") is None
    assert loop.time() - began < 0.05 + CANCEL_GRACE_SECONDS + 0.2
    assert not task.done()
    release.set()
    task.cancel()
    await asyncio.wait({task}, timeout=1)


def test_the_documented_shutdown_margin_is_the_real_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """docs/docker-mode.md, `winspec run --help` and `winspec agent --help` state the margin."""
    stated = f"plus {SHUTDOWN_MARGIN_SECONDS:g} s"
    page = (ROOT / "docs" / "docker-mode.md").read_text()
    assert stated in " ".join(page.split())
    for command in ("run", "agent"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert stated in " ".join(capsys.readouterr().out.split()), command


async def test_sigterm_during_a_slow_list_exits_0_in_time(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """SIGTERM during an endless list: `winspec run` exits 0 within --shutdown-timeout + margin."""
    # No traceback either.
    script_engine(engine)

    async def slow_list(_request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(60)
        return web.json_response([])

    engine.on(f"{API}/containers/json", slow_list)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WINSPEC_", "DOCKER_"))}
    (tmp_path / "secrets").mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters.cli",
        "run",
        "--docker-host",
        engine.host,
        "--bundle-root",
        str(tmp_path / "bundles"),
        "--secrets-dir",
        str(tmp_path / "secrets"),
        "--listen",
        "127.0.0.1:0",
        "--api-timeout",
        "60",
        "--shutdown-timeout",
        "1",
        cwd=ROOT,
        env=env | {"PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(lambda: engine.hits(f"{API}/containers/json") == 1, within=30)
        loop = asyncio.get_running_loop()
        asked = loop.time()
        proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        took = loop.time() - asked
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = err.decode()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert '"stopped"' in stderr
    assert took <= 1 + SHUTDOWN_MARGIN_SECONDS
