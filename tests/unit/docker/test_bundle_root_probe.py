"""Docker mode's start-up probe of the bundle root, against a scripted engine over real HTTP."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from adapters.bundles import fsops, local
from adapters.docker.mode import ATOMIC_REPLACE_WARNING, DockerMode
from controller.settings import load_settings
from tests.unit.docker.scripted import ScriptedEngine, answer_json, event_stream

API = "/v1.41"
INFO = {"OSType": "linux", "NCPU": 2, "KernelVersion": "6.1.0", "DockerRootDir": "/var/lib/docker"}


async def _start_and_stop(engine: ScriptedEngine, tmp_path: Path) -> None:
    """Run Docker mode against an engine with no containers until it has started, then stop."""
    engine.on("/version", answer_json({"ApiVersion": "1.41"}))
    engine.on(f"{API}/info", answer_json(INFO))
    engine.on(f"{API}/containers/json", answer_json([]))
    engine.on(f"{API}/events", event_stream([], hold=60.0))
    (tmp_path / "secrets").mkdir()
    settings = {
        "docker_host": engine.host,
        "bundle_root": str(tmp_path / "bundles"),
        "secrets_dir": str(tmp_path / "secrets"),
        "listen": "127.0.0.1:0",
        "shutdown_timeout": 1.0,
    }
    mode = DockerMode(load_settings(settings))
    task = asyncio.create_task(mode.run())
    try:
        async with asyncio.timeout(10):
            started = asyncio.create_task(mode.started.wait())
            await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            if task.done():
                task.result()
    finally:
        mode.request_stop()
        await asyncio.wait_for(task, timeout=10)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == ATOMIC_REPLACE_WARNING]


async def test_a_bundle_root_without_atomic_swap_is_warned_about_at_start(
    engine: ScriptedEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Where directories cannot be exchanged, start-up logs one warning naming the bundle root."""
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(fsops, "exchange", lambda first, second: False)

    await _start_and_stop(engine, tmp_path)

    [record] = _warnings(caplog)
    assert record.levelno == logging.WARNING
    assert getattr(record, "bundle_root", None) == str(tmp_path / "bundles")


async def test_a_bundle_root_with_atomic_swap_gets_no_warning(
    engine: ScriptedEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Where directories can be exchanged (Linux, ext4/xfs/btrfs/tmpfs), there is no warning."""
    if not local.atomic_replace_supported(tmp_path):
        pytest.skip("this file system cannot swap directories atomically")
    caplog.set_level(logging.WARNING)

    await _start_and_stop(engine, tmp_path)

    assert _warnings(caplog) == []
