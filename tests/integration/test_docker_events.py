"""The Docker event source and Docker mode against a real private dockerd (tests/dockerd.py):
resuming a stream after the last event, and the events that change a container after create.

Shares the session engine with other tests: objects get unique names and are removed, counters
are compared with a baseline taken once the controller has settled.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters.docker.client import DockerClient
from adapters.docker.events import DockerEventSource, EventSourceSettings
from controller.metrics import RESULT_SUCCESS
from controller.ports import SourceHooks
from tests.dockerd import DockerDaemon
from tests.integration.test_docker_mode import CONTROLLER_NAME, _unique, running
from tests.support.waiting import eventually

pytestmark = pytest.mark.docker


@dataclass
class Delivered:
    """What the source passed on, telling the ids an event enqueued from those a list did."""

    events: list[tuple[str, str]] = field(default_factory=list)  # (action, container id)
    restarts: list[str] = field(default_factory=list)
    ready: list[bool] = field(default_factory=list)
    _action: str | None = None

    def on_event(self, action: str) -> None:
        # The source reports an event's action and then, at once, enqueues its container.
        self._action = action

    def enqueue(self, cid: str) -> None:
        if self._action is not None:
            self.events.append((self._action, cid))
            self._action = None

    def hooks(self) -> SourceHooks:
        return SourceHooks(
            on_event=self.on_event, on_restart=self.restarts.append, on_ready=self.ready.append
        )


async def test_reconnect_does_not_deliver_the_last_event_again(dockerd: DockerDaemon) -> None:
    """A stream re-opened after an event does not get that event again from the engine."""
    # Here the idle watchdog re-opens the stream; the source resumes one nanosecond after
    # the event's timeNano.
    delivered = Delivered()

    async def no_bundles() -> list[str]:
        return []

    async with DockerClient(dockerd.host, env={}) as client:
        await client.negotiate()
        source = DockerEventSource(
            client,
            enqueue=delivered.enqueue,
            bundle_ids=no_bundles,
            settings=EventSourceSettings(idle_timeout=0.5, reconnect_initial=0.05),
            hooks=delivered.hooks(),
        )
        task = asyncio.create_task(source.run())
        cid = ""
        try:
            await eventually(lambda: delivered.ready[-1:] == [True], within=30, what="the stream")
            cid = await asyncio.to_thread(dockerd.create_container, _unique("since"))
            await eventually(
                lambda: ("create", cid) in delivered.events, within=30, what="the create event"
            )
            restarts = len(delivered.restarts)
            # Two reconnects after the event, each given the idle timeout to deliver anything.
            await eventually(
                lambda: len(delivered.restarts) >= restarts + 2,
                within=15,
                what="two reconnects",
            )
        finally:
            source.stop()
            await asyncio.wait_for(task, timeout=10)
            if cid:
                await asyncio.to_thread(dockerd.remove_container, cid)

    assert delivered.events.count(("create", cid)) == 1, delivered.events


async def test_starting_a_container_reconciles_it_at_once(
    dockerd: DockerDaemon, tmp_path: Path
) -> None:
    """A container start counts as type="start" and is reconciled at once (LCOW: no S14 change)."""
    # Its /hello runs and exits. On this Linux engine the bundle is LCOW, which nothing of the
    # start changes (S14's ignoreFlushesDuringBoot is Windows-only), so the reconcile finds it
    # unchanged.
    async with running(dockerd, tmp_path) as h:  # resync every 300 s: not within this test
        cid = await h.create_container(_unique("start"))
        try:
            config = await h.bundle_written(cid) / "config.json"
            before = config.read_bytes()
            await h.settled()
            starts = h.metric("winspec_events_received_total", source="docker", type="start")
            reconciles = h.metric(
                "controller_runtime_reconcile_total",
                controller=CONTROLLER_NAME,
                result=RESULT_SUCCESS,
            )
            unchanged = h.metric("winspec_bundles_written_total", result="unchanged")

            await asyncio.to_thread(dockerd.start_container, cid)

            await eventually(
                lambda: (
                    h.metric("winspec_events_received_total", source="docker", type="start")
                    == starts + 1
                ),
                within=15,
                what="the start event",
            )
            await eventually(
                lambda: h.metric("winspec_bundles_written_total", result="unchanged") > unchanged,
                within=15,
                what="the reconcile after the start",
            )
            await h.settled()
            assert (
                h.metric(
                    "controller_runtime_reconcile_total",
                    controller=CONTROLLER_NAME,
                    result=RESULT_SUCCESS,
                )
                > reconciles
            )
            assert config.read_bytes() == before
            assert json.loads(before)["process"]["args"] == ["/hello"]
        finally:
            await h.remove_container(cid)
        await h.bundle_removed(cid)
