"""Tests of the Docker event source against a scripted engine over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from adapters.docker.client import DockerClient, RetryPolicy
from adapters.docker.events import (
    EVENT_FILTERS,
    DockerEventSource,
    EventSourceHooks,
    EventSourceSettings,
)
from tests.unit.docker.scripted import ScriptedEngine, answer_json, eventually

LIVE_A, LIVE_B, GONE = "a" * 64, "b" * 64, "c" * 64


def event_stream(
    events: list[dict[str, Any]], *, hold: float
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An /events handler: send ``events`` as JSON lines, keep the stream open ``hold`` s, end."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for event in events:
            await response.write(json.dumps(event).encode() + b"\n")
        await asyncio.sleep(hold)
        await response.write_eof()
        return response

    return handler


@dataclass
class Recorded:
    """What the source reported through its callbacks."""

    enqueued: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)
    synced: int = 0
    ready: list[bool] = field(default_factory=list)

    def hooks(self) -> EventSourceHooks:
        def synced() -> None:
            self.synced += 1

        return EventSourceHooks(
            on_event=self.events.append,
            on_restart=self.restarts.append,
            on_synced=synced,
            on_ready=self.ready.append,
        )


@asynccontextmanager
async def watching(
    engine: ScriptedEngine, settings: EventSourceSettings, bundles: list[str] | None = None
) -> AsyncIterator[Recorded]:
    """Run a DockerEventSource against ``engine`` for the duration of the block."""
    recorded = Recorded()

    async def bundle_ids() -> list[str]:
        return list(bundles or [])

    async with DockerClient(engine.host, env={}, retry=RetryPolicy(initial=0.01)) as client:
        source = DockerEventSource(
            client,
            enqueue=recorded.enqueued.append,
            bundle_ids=bundle_ids,
            settings=settings,
            hooks=recorded.hooks(),
        )
        task = asyncio.create_task(source.run())
        try:
            yield recorded
        finally:
            source.stop()
            await asyncio.wait_for(task, timeout=5)


async def test_relist_enqueues_live_containers_and_orphaned_bundles(
    engine: ScriptedEngine,
) -> None:
    """A list enqueues every container and every bundle whose container is gone, then syncs."""
    engine.on("/containers/json", answer_json([{"Id": LIVE_B}, {"Id": LIVE_A}, {"Names": []}]))
    recorded = Recorded()

    async def bundle_ids() -> list[str]:
        return [LIVE_A, GONE]

    async with DockerClient(engine.host, env={}) as client:
        source = DockerEventSource(
            client, enqueue=recorded.enqueued.append, bundle_ids=bundle_ids, hooks=recorded.hooks()
        )
        assert await source.relist() == 2

    assert recorded.enqueued == [LIVE_A, LIVE_B, GONE]
    assert recorded.synced == 1


async def test_stream_lists_first_then_enqueues_events_and_resumes_since(
    engine: ScriptedEngine,
) -> None:
    """Once the stream is open the source lists, enqueues each event's container, and after the
    stream ends reconnects asking for the events since the last one it saw."""
    events = [
        {"Type": "container", "Action": "create", "Actor": {"ID": LIVE_B}, "time": 1700000001},
        {"Type": "container", "Action": "destroy", "Actor": {"ID": GONE}, "time": 1700000002},
    ]
    queries: list[dict[str, str]] = []

    def recording(
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            queries.append(dict(request.query))
            return await handler(request)

        return wrapped

    engine.on(
        "/events",
        recording(event_stream(events, hold=0.0)),
        recording(event_stream([], hold=30.0)),
    )
    engine.on("/containers/json", answer_json([{"Id": LIVE_A}]))
    settings = EventSourceSettings(reconnect_initial=0.01)

    async with watching(engine, settings) as recorded:
        await eventually(lambda: len(queries) == 2 and recorded.ready[-1:] == [True], within=5)

    assert recorded.enqueued[:3] == [LIVE_A, LIVE_B, GONE]
    assert recorded.events == ["create", "destroy"]
    assert recorded.restarts == ["closed"]
    assert recorded.synced == 2  # the list after the first and after the second connection
    assert json.loads(queries[0]["filters"]) == EVENT_FILTERS
    assert "since" not in queries[0]
    assert queries[1]["since"] == "1700000002"
    # Stopping says not ready.
    assert recorded.ready[-1] is False


def _delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The reconnect delays the source logged, in order."""
    delays = []
    for record in caplog.records:
        if record.name == "adapters.docker.events" and str(record.msg).startswith(
            "restarting docker event stream"
        ):
            assert isinstance(record.args, tuple)
            delay = record.args[1]
            assert isinstance(delay, float)
            delays.append(delay)
    return delays


async def test_backoff_starts_afresh_after_a_stream_that_worked(
    engine: ScriptedEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream that stayed up past reconnect_max is reconnected after the initial delay again,
    not after a delay grown by earlier reconnects."""
    caplog.set_level(logging.INFO, logger="adapters.docker.events")
    engine.on("/events", event_stream([], hold=0.3))
    engine.on("/containers/json", answer_json([]))
    settings = EventSourceSettings(reconnect_initial=0.02, reconnect_max=0.1)

    async with watching(engine, settings) as recorded:
        await eventually(lambda: len(_delays(caplog)) >= 4, within=10)

    # Without the reset they would be 0.02, 0.04, 0.08, 0.1.
    assert _delays(caplog)[:4] == [0.02] * 4
    assert recorded.restarts[:4] == ["closed"] * 4


async def test_backoff_grows_while_streams_keep_failing_fast(
    engine: ScriptedEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream that ends as soon as it opens is reconnected after ever longer delays, up to
    reconnect_max."""
    caplog.set_level(logging.INFO, logger="adapters.docker.events")
    engine.on("/events", event_stream([], hold=0.0))
    engine.on("/containers/json", answer_json([]))
    settings = EventSourceSettings(reconnect_initial=0.02, reconnect_max=0.1)

    async with watching(engine, settings):
        await eventually(lambda: len(_delays(caplog)) >= 5, within=10)

    assert _delays(caplog)[:5] == pytest.approx([0.02, 0.04, 0.08, 0.1, 0.1])
