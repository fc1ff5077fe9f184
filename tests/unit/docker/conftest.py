"""Fixtures of the Docker adapter tests: scripted engines on TCP and on a unix socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.docker.scripted import ScriptedEngine, serving


@pytest.fixture
async def engine() -> AsyncIterator[ScriptedEngine]:
    """A scripted engine on 127.0.0.1 at a free TCP port."""
    scripted = ScriptedEngine()
    async with serving(scripted):
        yield scripted


@pytest.fixture
async def unix_engine(tmp_path: Path) -> AsyncIterator[ScriptedEngine]:
    """A scripted engine on a unix socket in a temporary directory."""
    scripted = ScriptedEngine()
    async with serving(scripted, unix_socket=tmp_path / "docker.sock"):
        yield scripted
