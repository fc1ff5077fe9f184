"""A node agent SIGKILLed while a bundle is being delivered to it, then started again.

Central delivery (``--delivery agent``) against the real kube-apiserver and a real ``winspec
agent`` over HTTPS on loopback (see ``test_remote_delivery.py``). Each test kills the agent at a
point chosen by a deterministic trigger, never a sleep:

* mid-body: a TCP relay (``tests/relay.py``) in front of the agent passes the first 64 KiB of
  the upload through and holds the rest; once it holds, the agent has part of the body;
* mid-write: the agent runs through ``tests/agent_pause.py``, which stops its bundle writer at
  one step and drops a marker file; once the marker is there, the agent is inside that step.

Then the agent starts again on the same port and bundle root. Throughout, a thread keeps
reading ``<root>/<namespace>/<name>`` and fails the test on any bundle it sees that is not
complete with a ``.digest`` matching its files; afterwards the leftovers of the killed write
are gone, the controller's retry has delivered, the resource is Ready with the agent's digest,
and the retry is counted in ``winspec_api_retries_total{api="agent_put"}``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.bundles.local import DIGEST_FILE, KEY_FILE, TEMP_PREFIX
from adapters.kubernetes.mode import ClusterMode
from controller.bundle import CONFIG_FILE, SECRETS_DIR, BundleContent
from tests.agent import AgentProcess
from tests.bundlewatch import BundleWatch
from tests.clustermode import api, eventually, metric, ready_object, secret, wc_path
from tests.clustermode import windows_container as _wc
from tests.integration.test_remote_delivery import (
    Delivery,
    _agent_pod,
    _leftovers,
    _node,
    make_delivery,
)
from tests.kube import KubeCluster
from tests.relay import Relay

pytestmark = pytest.mark.kube

HELD_AFTER = 64 * 1024


@pytest.fixture(scope="module")
def delivery(kube: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Delivery:
    """Accounts, TLS files and the controller's token, in a namespace of this module's own."""
    return make_delivery(kube, f"killed-{secrets.token_hex(4)}", tmp_path_factory.mktemp("kill"))


def test_the_bundle_watch_tells_whole_from_torn(tmp_path: Path) -> None:
    """The watch counts a bundle matching its .digest, flags a missing file and a wrong one."""
    root = tmp_path / "ns"
    root.mkdir()
    key = os.urandom(32)
    (root / KEY_FILE).write_bytes(key)
    bundle = root / "b"
    content = BundleContent(files={CONFIG_FILE: b"{}", f"{SECRETS_DIR}/s": b"x"})
    (bundle / SECRETS_DIR).mkdir(parents=True)
    (bundle / CONFIG_FILE).write_bytes(b"{}")
    (bundle / SECRETS_DIR / "s").write_bytes(b"x")
    watch = BundleWatch(bundle)
    assert watch.check() == "torn"  # no .digest yet
    (bundle / DIGEST_FILE).write_text(content.keyed_digest(key) + "\n")
    assert watch.check() == "whole"
    (bundle / SECRETS_DIR / "s").write_bytes(b"y")
    assert watch.check() == "torn"
    (bundle / SECRETS_DIR / "s").unlink()
    assert watch.check() == "torn"
    assert (watch.whole, len(watch.torn)) == (1, 3)


@dataclass
class KillNode:
    """A node whose agent the test kills: its name, its agent and the agent's bundle root."""

    name: str
    agent: AgentProcess
    root: Path


@pytest.fixture
def node(delivery: Delivery, tmp_path: Path) -> Iterator[KillNode]:
    """A Node object and an agent (not started, no Pod object yet) with its own bundle root."""
    name = f"win-{secrets.token_hex(3)}-k"
    _node(delivery.kube, name)
    root = tmp_path / "node" / "bundles"
    root.parent.mkdir()
    agent = delivery.agent(root)
    try:
        yield KillNode(name, agent, root)
    finally:
        agent.stop()
        delivery.kube.api(
            "DELETE",
            f"/api/v1/namespaces/{delivery.namespace}/pods/agent-{name}",
            expect=(200, 404),
        )


@dataclass
class Run:
    """A delivery under way: the controller, the watch on the bundle, where it is, and the
    file the paused agent drops inside its write."""

    mode: ClusterMode
    watch: BundleWatch
    bundle: Path
    marker: Path
    payload: bytes


@asynccontextmanager
async def _watched(
    kube: KubeCluster,
    d: Delivery,
    node: KillNode,
    ns: str,
    name: str,
    tmp_path: Path,
    *,
    pause: str | None = None,
    via: int | None = None,
    size: int = 4096,
) -> AsyncIterator[Run]:
    """The agent started (stopping at ``pause``, a point of tests/agent_pause.py), its Pod
    (declaring port ``via``, else the agent's), cluster mode delivering for ``ns``, a watch on
    the bundle ``name``, and the resource created with a Secret of ``size`` random bytes; after
    the block, the watch saw the bundle whole and never torn."""
    marker = tmp_path / "paused"
    await asyncio.to_thread(node.agent.start, pause=None if pause is None else (pause, marker))
    _agent_pod(d, node.name, via or node.agent.port)
    bundle = node.root / ns / name
    with BundleWatch(bundle) as watch:
        # A deadline well above a kill's timing: the kill, not the deadline, ends the attempt.
        async with d.central(tmp_path, [ns], agent_timeout=20.0, resync_interval=1.0) as mode:
            payload = os.urandom(size)
            await _create(kube, ns, name, payload, node.name)
            yield Run(mode, watch, bundle, marker, payload)
    assert watch.torn == []
    assert watch.whole > 0


async def _create(kube: KubeCluster, ns: str, name: str, payload: bytes, node: str) -> None:
    """A Secret holding ``payload`` and a resource on ``node`` that mounts it."""
    await api(kube, "POST", f"/api/v1/namespaces/{ns}/secrets", secret(name, {"data": payload}))
    ref = {"secretName": name, "key": "data", "target": "data"}
    await api(kube, "POST", wc_path(ns), _wc(name, nodeName=node, secrets=[ref]))


async def _restart_and_deliver(
    kube: KubeCluster,
    run: Run,
    node: KillNode,
    ns: str,
    name: str,
    *,
    killed: list[str],
    generation: int | None = None,
) -> dict[str, Any]:
    """Start the agent again; check what the kill left is swept and the retry delivers whole."""
    await asyncio.to_thread(node.agent.start)
    # Swept before the agent serves: the killed write's own leftovers are gone now.
    assert not [n for n in killed if (node.root / ns / n).exists()]
    obj = await eventually(ready_object(kube, ns, name, generation=generation), within=60)
    assert obj["status"]["digest"] == (run.bundle / DIGEST_FILE).read_text().strip()
    assert [p.read_bytes() for p in (run.bundle / SECRETS_DIR).iterdir()] == [run.payload]
    assert _leftovers(node.root) == []
    assert metric(run.mode, "winspec_api_retries_total", api="agent_put") >= 1
    return obj


async def test_agent_killed_mid_body_then_the_retry_delivers(
    kube: KubeCluster, kube_namespace: str, delivery: Delivery, node: KillNode, tmp_path: Path
) -> None:
    """Agent SIGKILLed with part of a PUT body received: nothing written, the retry delivers."""
    ns, name = kube_namespace, "mid-body"
    async with Relay(node.agent.port).serving() as relay:
        relay.hold_after(HELD_AFTER)
        big = 512 * 1024
        async with _watched(
            kube, delivery, node, ns, name, tmp_path, via=relay.port, size=big
        ) as run:
            await asyncio.wait_for(relay.holding.wait(), timeout=60)
            await asyncio.to_thread(node.agent.kill)
            assert not run.bundle.exists()
            assert _leftovers(node.root) == []
            await _restart_and_deliver(kube, run, node, ns, name, killed=[])


async def test_agent_killed_inside_its_write_before_the_swap(
    kube: KubeCluster, kube_namespace: str, delivery: Delivery, node: KillNode, tmp_path: Path
) -> None:
    """Agent SIGKILLed with the new version in .tmp-: never visible, swept, the retry delivers."""
    ns, name = kube_namespace, "mid-write"
    async with _watched(kube, delivery, node, ns, name, tmp_path, pause="_make_durable") as run:
        await eventually(run.marker.exists, within=60)
        killed = _leftovers(node.root)
        assert [n for n in killed if n.startswith(f"{TEMP_PREFIX}{name}-")]
        await asyncio.to_thread(node.agent.kill)
        assert not run.bundle.exists()
        assert _leftovers(node.root) == killed
        await _restart_and_deliver(kube, run, node, ns, name, killed=killed)


async def test_agent_killed_after_its_write_before_it_answers(
    kube: KubeCluster, kube_namespace: str, delivery: Delivery, node: KillNode, tmp_path: Path
) -> None:
    """Killed with the bundle durable but unacknowledged: the retry finds it, Ready, unchanged."""
    ns, name = kube_namespace, "unanswered"
    async with _watched(kube, delivery, node, ns, name, tmp_path, pause="answer") as run:
        await eventually(run.marker.exists, within=60)
        written = (run.bundle / DIGEST_FILE).read_text().strip()
        version = os.stat(run.bundle).st_ino
        await asyncio.to_thread(node.agent.kill)
        assert run.watch.check() == "whole"
        obj = await _restart_and_deliver(kube, run, node, ns, name, killed=[])
        assert obj["status"]["digest"] == written
        # The retry found the content in place: answered unchanged, nothing rewritten.
        assert os.stat(run.bundle).st_ino == version
        assert metric(run.mode, "winspec_bundles_written_total", result="unchanged") >= 1


async def test_agent_killed_inside_an_update_after_the_swap(
    kube: KubeCluster, kube_namespace: str, delivery: Delivery, node: KillNode, tmp_path: Path
) -> None:
    """Killed between swap and carry-back: bundle whole, original payloads restored, Ready."""
    ns, name = kube_namespace, "mid-update"
    async with _watched(kube, delivery, node, ns, name, tmp_path, pause="_finish_carry") as run:
        bundle = run.bundle
        first = await eventually(ready_object(kube, ns, name), within=60)
        original = os.stat(bundle / SECRETS_DIR).st_ino
        await api(
            kube,
            "PATCH",
            wc_path(ns, name),
            {"spec": {"args": ["echo updated"]}},
            content_type="application/merge-patch+json",
        )
        await eventually(run.marker.exists, within=60)
        killed = _leftovers(node.root)
        assert (bundle / SECRETS_DIR).is_symlink()  # the stand-in: inside the carry-back
        await asyncio.to_thread(node.agent.kill)
        assert killed
        assert (bundle / SECRETS_DIR).is_symlink()
        # Whole while the agent is down, its payloads read through the stand-in.
        assert run.watch.check() == "whole"
        obj = await _restart_and_deliver(kube, run, node, ns, name, killed=killed, generation=2)
        assert not (bundle / SECRETS_DIR).is_symlink()
        assert os.stat(bundle / SECRETS_DIR).st_ino == original
        assert b"echo updated" in (bundle / CONFIG_FILE).read_bytes()
        assert obj["status"]["digest"] != first["status"]["digest"]
