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

from adapters.docker.client import DockerClient
from adapters.docker.events import (
    EVENT_FILTERS,
    EVENT_TYPES,
    DockerEventSource,
    EventSourceSettings,
    resume_since,
)
from adapters.retry import RetryPolicy
from controller.errors import RequestDecodeError
from controller.ports import SourceHooks
from tests.support.waiting import eventually
from tests.unit.docker.scripted import ScriptedEngine, answer_json, event_stream

LIVE_A, LIVE_B, GONE = "a" * 64, "b" * 64, "c" * 64


@dataclass
class Recorded:
    """What the source reported through its callbacks."""

    enqueued: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)
    synced: int = 0
    ready: list[bool] = field(default_factory=list)

    def hooks(self) -> SourceHooks:
        def synced() -> None:
            self.synced += 1

        return SourceHooks(
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
    """Once the stream is open the source lists, enqueues each event's container, then resumes."""
    # After the stream ends it reconnects asking for the events since the last one it saw.
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
    """The reconnect delays the source logged (as the record's delay_seconds field), in order."""
    delays = []
    for record in caplog.records:
        if record.name == "adapters.docker.events" and hasattr(record, "delay_seconds"):
            delay = record.delay_seconds
            assert isinstance(delay, float)
            delays.append(delay)
    return delays


async def test_backoff_starts_afresh_after_a_stream_that_worked(
    engine: ScriptedEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream that stayed up past reconnect_max is reconnected after the initial delay again."""
    # Not after a delay grown by earlier reconnects.
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
    """Fast-failing streams are reconnected after ever longer delays, up to reconnect_max."""
    # Each stream here ends as soon as it opens.
    caplog.set_level(logging.INFO, logger="adapters.docker.events")
    engine.on("/events", event_stream([], hold=0.0))
    engine.on("/containers/json", answer_json([]))
    settings = EventSourceSettings(reconnect_initial=0.02, reconnect_max=0.1)

    async with watching(engine, settings):
        await eventually(lambda: len(_delays(caplog)) >= 5, within=10)

    assert _delays(caplog)[:5] == pytest.approx([0.02, 0.04, 0.08, 0.1, 0.1])


# -- review fixes: since, watched events, robustness, readiness, stopping, logs ----------------

NETWORK = "e" * 64


@pytest.mark.parametrize(
    ("time_nano", "since"),
    [
        (1700000002000000123, "1700000002.000000124"),
        (1700000002999999999, "1700000003.000000000"),
        (1700000002000000000, "1700000002.000000001"),
    ],
)
def test_resume_since_is_one_nanosecond_after_the_last_event(time_nano: int, since: str) -> None:
    """The since of a reconnect is the last event's timeNano plus 1 ns, as SECONDS.NANOSECONDS."""
    assert resume_since(time_nano) == since


async def test_reconnect_asks_for_events_after_the_last_one_to_the_nanosecond(
    engine: ScriptedEngine,
) -> None:
    """After a reconnect the source asks for events from 1 ns after the last event's timeNano."""
    # Not from the start of its second, which would deliver that event again.
    events = [
        {
            "Type": "container",
            "Action": "create",
            "Actor": {"ID": LIVE_B},
            "time": 1700000002,
            "timeNano": 1700000002123456789,
        }
    ]
    queries: list[dict[str, str]] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        queries.append(dict(request.query))
        # The first stream sends the event and ends; the next one stays open.
        first = len(queries) == 1
        return await event_stream(events if first else [], hold=0.0 if first else 30.0)(request)

    engine.on("/events", answer)
    engine.on("/containers/json", answer_json([]))
    async with watching(engine, EventSourceSettings(reconnect_initial=0.01)):
        await eventually(lambda: len(queries) >= 2, within=5)

    assert "since" not in queries[0]
    assert queries[1]["since"] == "1700000002.123456790"


async def test_start_update_rename_and_network_events_enqueue_their_container(
    engine: ScriptedEngine,
) -> None:
    """Start/update/rename and network connect/disconnect events enqueue their container."""
    # They are asked for; a network event's container is Actor.Attributes.container. Other and
    # malformed events are skipped.

    def container(action: str, cid: str) -> dict[str, Any]:
        return {"Type": "container", "Action": action, "Actor": {"ID": cid}}

    def network(action: str, cid: str | None) -> dict[str, Any]:
        attributes = {"name": "net", "type": "bridge"} | ({"container": cid} if cid else {})
        return {
            "Type": "network",
            "Action": action,
            "Actor": {"ID": NETWORK, "Attributes": attributes},
        }

    events = [
        container("start", LIVE_A),
        container("update", LIVE_A),
        container("rename", LIVE_B),
        network("create", None),  # the filter lets network create/destroy through too
        network("connect", LIVE_B),
        network("disconnect", LIVE_A),
        network("destroy", None),
        container("die", LIVE_A),  # not watched
        {"Type": "container", "Action": "start", "Actor": ["not", "an", "object"]},
        {"Type": "container", "Action": "start", "Actor": {"ID": 42}},
        {"Type": "network", "Action": "connect", "Actor": {"ID": NETWORK}},
    ]
    queries: list[dict[str, str]] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        queries.append(dict(request.query))
        return await event_stream(events, hold=30.0)(request)

    engine.on("/events", answer)
    engine.on("/containers/json", answer_json([]))
    async with watching(engine, EventSourceSettings()) as recorded:
        await eventually(lambda: len(recorded.events) >= 5, within=5)
        await asyncio.sleep(0.05)  # nothing else is coming from the skipped events

    assert recorded.events == ["start", "update", "rename", "connect", "disconnect"]
    assert recorded.enqueued == [LIVE_A, LIVE_A, LIVE_B, LIVE_B, LIVE_A]
    assert json.loads(queries[0]["filters"]) == {
        "type": ["container", "network"],
        "event": ["create", "start", "update", "rename", "destroy", "connect", "disconnect"],
    }
    assert EVENT_TYPES == (
        "create",
        "start",
        "update",
        "rename",
        "destroy",
        "connect",
        "disconnect",
    )


@pytest.mark.parametrize("body", [None, {"Id": LIVE_A}, [{"Id": 5}], "containers"])
async def test_relist_refuses_a_body_that_is_not_a_container_list(
    engine: ScriptedEngine, body: object
) -> None:
    """A container list body that is not a list of string Ids raises a RequestDecodeError."""
    # Cases: null, an object, a non-string Id, a string. The error names the engine; not a
    # TypeError, nor silently listing nothing.
    engine.on("/containers/json", answer_json(body))
    recorded = Recorded()

    async def bundle_ids() -> list[str]:
        return []

    async with DockerClient(engine.host, env={}) as client:
        source = DockerEventSource(client, enqueue=recorded.enqueued.append, bundle_ids=bundle_ids)
        with pytest.raises(RequestDecodeError, match="invalid container list") as caught:
            await source.relist()
    assert engine.host in str(caught.value)
    assert recorded.enqueued == []


async def test_periodic_resync_survives_an_unexpected_exception(
    engine: ScriptedEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A resync failing with a non-WinspecError is logged with its traceback; the next one runs."""
    engine.on("/events", event_stream([], hold=30.0))
    engine.on("/containers/json", answer_json([{"Id": LIVE_A}]))
    calls = 0

    async def bundle_ids() -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first periodic resync (the first call is the stream's list)
            raise OSError("bundle root unreadable")
        return []

    recorded = Recorded()
    async with DockerClient(engine.host, env={}) as client:
        source = DockerEventSource(
            client,
            enqueue=recorded.enqueued.append,
            bundle_ids=bundle_ids,
            settings=EventSourceSettings(resync_interval=0.05),
            hooks=recorded.hooks(),
        )
        task = asyncio.create_task(source.run())
        try:
            await eventually(lambda: recorded.synced >= 3, within=5)
        finally:
            source.stop()
            await asyncio.wait_for(task, timeout=5)

    failures = [
        r for r in caplog.records if r.getMessage() == "periodic resync failed unexpectedly"
    ]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert "bundle root unreadable" in getattr(failures[0], "error", "")


async def test_idle_restart_keeps_the_source_ready(engine: ScriptedEngine) -> None:
    """A working stream restarted for being idle is re-opened at once and stays ready."""
    # It is never reported not ready; stopping the source does report not ready.
    engine.on("/events", event_stream([], hold=30.0))
    engine.on("/containers/json", answer_json([]))
    settings = EventSourceSettings(idle_timeout=0.1, reconnect_initial=5.0)

    async with watching(engine, settings) as recorded:
        await eventually(lambda: recorded.restarts.count("idle") >= 2, within=5)
        ready_while_running = list(recorded.ready)

    assert ready_while_running
    assert all(ready_while_running)
    assert recorded.ready[-1] is False


async def test_a_failed_stream_reports_not_ready_until_listed_again(engine: ScriptedEngine) -> None:
    """A failed stream (HTTP 500) makes the source not ready until the next stream and list."""
    # The next good stream and list make it ready again.
    engine.on(
        "/events",
        event_stream([], hold=0.0),
        answer_json({"message": "boom"}, status=500),
        event_stream([], hold=30.0),
    )
    engine.on("/containers/json", answer_json([]))
    settings = EventSourceSettings(reconnect_initial=0.01)

    async with watching(engine, settings) as recorded:
        await eventually(lambda: recorded.restarts == ["closed", "error"] and recorded.synced == 2)
        await eventually(lambda: recorded.ready[-1:] == [True])

    assert recorded.ready[:5] == [True, False, False, True, False]


async def _start_source(
    engine: ScriptedEngine, client: DockerClient, settings: EventSourceSettings, recorded: Recorded
) -> tuple[DockerEventSource, asyncio.Task[None]]:
    async def bundle_ids() -> list[str]:
        return []

    source = DockerEventSource(
        client,
        enqueue=recorded.enqueued.append,
        bundle_ids=bundle_ids,
        settings=settings,
        hooks=recorded.hooks(),
    )
    return source, asyncio.create_task(source.run())


async def test_stop_during_a_slow_list_returns_at_once(engine: ScriptedEngine) -> None:
    """Stopping while the list after (re)connecting hangs returns at once, not when it answers."""

    async def slow_list(_request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.json_response([])

    engine.on("/events", event_stream([], hold=30.0))
    engine.on("/containers/json", slow_list)
    recorded = Recorded()
    async with DockerClient(engine.host, env={}, timeout=60.0) as client:
        source, task = await _start_source(engine, client, EventSourceSettings(), recorded)
        await eventually(lambda: engine.hits("/containers/json") == 1, within=5)
        loop = asyncio.get_running_loop()
        asked = loop.time()
        source.stop()
        await asyncio.wait_for(task, timeout=5)
        took = loop.time() - asked

    assert took < 0.5
    assert recorded.synced == 0


async def test_stop_during_the_reconnect_delay_returns_at_once(engine: ScriptedEngine) -> None:
    """Stopping while waiting to reconnect returns within a moment, not after the delay."""
    engine.on("/events", event_stream([], hold=0.0))
    engine.on("/containers/json", answer_json([]))
    recorded = Recorded()
    async with DockerClient(engine.host, env={}) as client:
        settings = EventSourceSettings(reconnect_initial=30.0)
        source, task = await _start_source(engine, client, settings, recorded)
        await eventually(lambda: recorded.restarts == ["closed"], within=5)
        loop = asyncio.get_running_loop()
        asked = loop.time()
        source.stop()
        await asyncio.wait_for(task, timeout=5)
        took = loop.time() - asked

    assert took < 0.5


async def test_cancelling_the_source_mid_stream_cancels_cleanly(engine: ScriptedEngine) -> None:
    """Cancelling run() while it waits for an event ends it cancelled and closes the stream."""
    # No RuntimeError from closing a stream still being read; the stream's connection is closed.
    ended: list[str] = []
    engine.on("/events", event_stream([], hold=30.0, ended=ended))
    engine.on("/containers/json", answer_json([]))
    recorded = Recorded()
    async with DockerClient(engine.host, env={}) as client:
        _source, task = await _start_source(engine, client, EventSourceSettings(), recorded)
        await eventually(lambda: recorded.ready == [True], within=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5)
        await eventually(lambda: ended == ["cancelled"], within=5)


async def test_log_records_carry_their_values_as_fields(
    engine: ScriptedEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """The source's log lines have constant messages with reason, delay and error in fields."""
    # So JSON logs keep them structured, rather than %-formatted into the text.
    caplog.set_level(logging.INFO, logger="adapters.docker.events")
    engine.on("/events", answer_json({"message": "boom"}, status=500))
    engine.on("/containers/json", answer_json([]))

    async with watching(engine, EventSourceSettings(reconnect_initial=0.01)) as recorded:
        await eventually(lambda: len(recorded.restarts) >= 2, within=5)

    mine = [r for r in caplog.records if r.name == "adapters.docker.events"]
    assert mine
    assert all(not r.args for r in mine)
    failed = [r for r in mine if r.getMessage() == "docker event stream failed"]
    restarting = [r for r in mine if r.getMessage() == "restarting docker event stream"]
    assert failed
    assert "HTTP 500 boom" in getattr(failed[0], "error", "")
    assert restarting
    assert getattr(restarting[0], "reason", None) == "error"
    assert getattr(restarting[0], "delay_seconds", None) == 0.01
