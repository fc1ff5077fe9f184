"""Tests of the Docker request resolver against a scripted engine over real HTTP (no mocks).

Each test scripts the inspects the resolver asks for (container, image, task, config) on a
:class:`ScriptedEngine`, points a real :class:`DockerClient` at it and checks the request the
resolver builds, what it asked for, and the kinds of dependency fetch it timed. Files the
resolver reads (``layerchain.json``, granted secrets, ``file://`` credential specs) live in a
temporary directory.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import adapters.docker.resolver as resolver_module
from adapters.docker.client import DockerClient, NotSwarmManagerError
from adapters.docker.resolver import (
    DEPENDENCY_KINDS,
    DockerRequestResolver,
    node_facts_from_info,
)
from adapters.docker.types import Info, decode
from adapters.retry import RetryPolicy
from controller.credspec import INVALID_VALUE
from controller.errors import PermanentError, RequestDecodeError, SpecError, TransientError
from controller.generate import generate
from controller.models import NodeFacts, NodeSettings, Request
from tests.unit.docker.scripted import ScriptedEngine, answer_json, serving

FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.05)
CID = "c" * 64
OTHER = "d" * 64
IMAGE_ID = "sha256:" + "1" * 64
TASK_ID = "t1a2s3k4i5d6x7y8z9w0v1u2q"
SECRET_ID = "s1e2c3r4e5t6i7d8x9y0z1w2v"
CONFIG_ID = "c1o2n3f4i5g6i7d8x9y0z1w2v"
RUNTIME_CONFIG_ID = "r1u2n3t4i5m6e7c8o9n0f1i2g"
SERVICE_ID = "s1e2r3v4i5c6e7i8d9x0y1z2w"
NODE_ID = "n1o2d3e4i5d6x7y8z9w0v1u2q"
CREDSPEC = '{"CmsPlugins":["ActiveDirectory"],"DomainJoinConfig":{"MachineAccountName":"web"}}'
NOT_A_MANAGER_503 = (
    "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster "
    "state. Please run this command on a manager node or promote the current node to a manager."
)


# -- engine documents ------------------------------------------------------------------------


def container_doc(
    cid: str = CID,
    *,
    image: str = IMAGE_ID,
    driver: dict[str, Any] | None = None,
    task: str | None = None,
    network_mode: str = "default",
    networks: dict[str, Any] | None = None,
    security_opt: list[str] | None = None,
) -> dict[str, Any]:
    """A container inspect as the engine shows it (only the fields the resolver reads)."""
    return {
        "Id": cid,
        "Name": "/web",
        "Path": "cmd.exe",
        "Args": [],
        "Image": image,
        "Config": {
            "Hostname": "web",
            "Labels": swarm_labels(task) if task else {},
        },
        "HostConfig": {"NetworkMode": network_mode, "SecurityOpt": security_opt},
        "NetworkSettings": {"Networks": networks or {}},
        "GraphDriver": driver or {"Name": "vfs", "Data": None},
    }


def swarm_labels(task: str = TASK_ID) -> dict[str, str]:
    """The labels the swarm puts on the container of ``task`` (a replica in slot 1)."""
    return {
        "com.docker.swarm.task.id": task,
        "com.docker.swarm.task.name": f"web.1.{task}",
        "com.docker.swarm.service.id": SERVICE_ID,
        "com.docker.swarm.service.name": "web",
        "com.docker.swarm.node.id": NODE_ID,
        "com.docker.swarm.task": "",
    }


def image_doc(image_id: str = IMAGE_ID, *, os: str = "windows") -> dict[str, Any]:
    """An image inspect with two layers (bottom first, as the engine lists them)."""
    return {
        "Id": image_id,
        "Os": os,
        "RootFS": {"Type": "layers", "Layers": ["sha256:base", "sha256:top"]},
    }


def task_doc(container: str | None = CID) -> dict[str, Any]:
    """A swarm task with one secret, one mounted config and one runtime-only config.

    ``container``: the container the task reports (None: it has not reported one yet).
    """
    return {
        "ID": TASK_ID,
        "ServiceID": SERVICE_ID,
        "NodeID": NODE_ID,
        "Slot": 1,
        "Status": {
            "State": "running" if container else "preparing",
            "ContainerStatus": {"ContainerID": container} if container else {},
        },
        "Spec": {
            "ContainerSpec": {
                "Secrets": [
                    {
                        "File": {"Name": "db-password", "UID": "0", "GID": "0", "Mode": 292},
                        "SecretID": SECRET_ID,
                        "SecretName": "db-password",
                    }
                ],
                "Configs": [
                    {
                        "File": {"Name": "C:\\app\\appsettings.json"},
                        "ConfigID": CONFIG_ID,
                        "ConfigName": "app-settings",
                    },
                    {"Runtime": {}, "ConfigID": RUNTIME_CONFIG_ID, "ConfigName": "credspec"},
                ],
            }
        },
    }


def config_doc(config_id: str, data: str) -> dict[str, Any]:
    """A swarm config inspect; ``data`` is the base64 text the engine sends."""
    return {"ID": config_id, "Spec": {"Name": "x", "Data": data}}


# -- the resolver under test -----------------------------------------------------------------


@dataclass
class Harness:
    """A resolver bound to a scripted engine, and the dependency fetches it timed."""

    resolver: DockerRequestResolver
    observed: list[str] = field(default_factory=list)

    async def resolve(self, key: str = CID) -> Request:
        """Resolve ``key``, which must exist."""
        request = await self.resolver.resolve(key)
        assert request is not None
        return request


def client_for(engine: ScriptedEngine) -> DockerClient:
    """A client for the scripted engine, with no TLS settings from the environment."""
    return DockerClient(engine.host, env={}, retry=FAST, timeout=5.0)


@asynccontextmanager
async def resolving(
    engine: ScriptedEngine,
    tmp_path: Path,
    *,
    daemon_root: str | None = None,
    swarm_engine: ScriptedEngine | None = None,
    swarm_worker: bool = False,
    reader: Any = None,
    clock: Any = None,
    task_settle: tuple[float, ...] = (),
) -> AsyncIterator[Harness]:
    """A resolver against ``engine`` (tasks and configs from ``swarm_engine`` when given).

    ``task_settle``: the pauses before asking again for a task naming no container (none by
    default, so a test sees each answer as one resolve).
    """
    observed: list[str] = []
    node = NodeFacts(daemon_root=daemon_root or str(tmp_path / "docker"))
    async with client_for(engine) as client:
        swarm = client_for(swarm_engine) if swarm_engine else None
        if swarm is not None:
            await swarm.open()
        try:
            resolver = DockerRequestResolver(
                client,
                node=node,
                bundle_root=str(tmp_path / "bundles"),
                secrets_dir=tmp_path / "secrets",
                observe=lambda kind, _seconds: observed.append(kind),
                swarm_client=swarm,
                swarm_worker=swarm_worker,
                reader=reader,
                task_settle=task_settle,
                **({"clock": clock} if clock else {}),
            )
            yield Harness(resolver, observed)
        finally:
            if swarm is not None:
                await swarm.close()


def script_container(engine: ScriptedEngine, doc: dict[str, Any], image: str = IMAGE_ID) -> None:
    """Answer the container's inspect and its image's inspect."""
    engine.on(f"/containers/{doc['Id']}/json", answer_json(doc))
    engine.on(f"/images/{image}/json", answer_json(image_doc(image)))


def script_task(engine: ScriptedEngine) -> None:
    """Answer the task inspect and the mounted config's inspect."""
    engine.on(f"/tasks/{TASK_ID}", answer_json(task_doc()))
    engine.on(f"/configs/{CONFIG_ID}", answer_json(config_doc(CONFIG_ID, "eyJhIjoxfQ==")))


def grant_secret(tmp_path: Path) -> None:
    """Put the secret where the swarm mounts the secrets granted to winspec."""
    (tmp_path / "secrets").mkdir(exist_ok=True)
    (tmp_path / "secrets" / "db-password").write_bytes(b"s3cr3t")


# -- layer folders (S12) ---------------------------------------------------------------------


async def test_windowsfilter_layer_chain_gives_parents_then_the_rw_layer(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """windowsfilter: layerchain.json's parents topmost first, the rw directory last; timed."""
    rw = tmp_path / "windowsfilter" / CID
    rw.mkdir(parents=True)
    parents = ["C:\\ProgramData\\docker\\windowsfilter\\top", "C:\\ProgramData\\docker\\base"]
    (rw / "layerchain.json").write_text(json.dumps(parents))
    doc = container_doc(driver={"Name": "windowsfilter", "Data": {"dir": str(rw)}})
    script_container(engine, doc)

    async with resolving(engine, tmp_path) as h:
        request = await h.resolve()

    assert request.layer_folders == [*parents, str(rw)]
    assert "layers" in h.observed


async def test_overlay2_gives_lower_dirs_then_the_upper_dir(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """overlay2: LowerDir's entries in order, then UpperDir last."""
    data = {"LowerDir": "/l/top:/l/mid:/l/base", "UpperDir": "/u/diff", "MergedDir": "/m"}
    script_container(engine, container_doc(driver={"Name": "overlay2", "Data": data}))

    async with resolving(engine, tmp_path) as h:
        request = await h.resolve()

    assert request.layer_folders == ["/l/top", "/l/mid", "/l/base", "/u/diff"]


async def test_a_driver_with_one_dir_gives_that_dir(engine: ScriptedEngine, tmp_path: Path) -> None:
    """A driver that shows only ``Dir`` gives that one directory."""
    script_container(engine, container_doc(driver={"Name": "btrfs", "Data": {"Dir": "/b/x"}}))

    async with resolving(engine, tmp_path) as h:
        request = await h.resolve()

    assert request.layer_folders == ["/b/x"]


async def test_vfs_falls_back_to_image_digests_reversed_then_the_container_id(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """vfs (no directories shown): the image's layer digests topmost first, then the id."""
    script_container(engine, container_doc())

    async with resolving(engine, tmp_path) as h:
        request = await h.resolve()

    assert request.layer_folders == ["sha256:top", "sha256:base", CID]
    assert "layers" not in h.observed  # nothing was read


async def test_missing_layerchain_is_transient(engine: ScriptedEngine, tmp_path: Path) -> None:
    """A windowsfilter layer without layerchain.json (not written yet) is a TransientError."""
    rw = tmp_path / "rw"
    rw.mkdir()
    script_container(
        engine, container_doc(driver={"Name": "windowsfilter", "Data": {"dir": str(rw)}})
    )

    async with resolving(engine, tmp_path) as h:
        with pytest.raises(TransientError, match=r"layerchain\.json does not exist"):
            await h.resolve()


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "cannot read layer chain"), ('{"a": 1}', "is not a list of paths")],
)
async def test_malformed_layerchain_is_permanent(
    engine: ScriptedEngine, tmp_path: Path, content: str, message: str
) -> None:
    """A layerchain.json that is not JSON, or not a list of paths, is a PermanentError."""
    rw = tmp_path / "rw"
    rw.mkdir()
    (rw / "layerchain.json").write_text(content)
    script_container(
        engine, container_doc(driver={"Name": "windowsfilter", "Data": {"dir": str(rw)}})
    )

    async with resolving(engine, tmp_path) as h:
        with pytest.raises(PermanentError, match=message):
            await h.resolve()


# -- networks (S15) --------------------------------------------------------------------------


async def test_shared_network_gives_the_shared_id_and_its_endpoints(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """container:<name> gives the shared container's id and endpoint ids (sorted by network)."""
    doc = container_doc(
        network_mode="container:sidecar",
        networks={"nat": {"EndpointID": "own-ep"}, "none": None},
    )
    script_container(engine, doc)
    shared = container_doc(OTHER, networks={"zeta": {"EndpointID": "ep-z"}, "alpha": None})
    shared["NetworkSettings"]["Networks"]["beta"] = {"EndpointID": "ep-b"}
    engine.on("/containers/sidecar/json", answer_json(shared))

    async with resolving(engine, tmp_path) as h:
        request = await h.resolve()

    assert request.network_shared_container_id == OTHER
    assert request.shared_endpoints == ["ep-b", "ep-z"]
    assert request.endpoints == {"nat": {"hnsid": "own-ep"}}
    assert "endpoints" in h.observed


async def test_shared_network_container_missing_is_permanent(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """Sharing the network of a container that does not exist is a PermanentError naming it."""
    script_container(engine, container_doc(network_mode="container:gone"))

    async with resolving(engine, tmp_path) as h:
        with pytest.raises(PermanentError, match="shares the network of gone"):
            await h.resolve()


# -- swarm tasks: secrets and configs --------------------------------------------------------


async def test_task_secret_and_config_payloads(engine: ScriptedEngine, tmp_path: Path) -> None:
    """A task's granted secret (from secrets_dir) and mounted config come with their payloads."""
    script_container(engine, container_doc(task=TASK_ID))
    script_task(engine)
    grant_secret(tmp_path)

    async with resolving(engine, tmp_path) as h:
        request = await h.resolve()

    [secret] = request.secrets
    assert (secret.secret_id, secret.secret_name, secret.target) == (
        SECRET_ID,
        "db-password",
        "db-password",
    )
    assert secret.data == b"s3cr3t"
    [config] = request.configs  # the runtime-only config is not mounted
    assert (config.config_id, config.config_name, config.target) == (
        CONFIG_ID,
        "app-settings",
        "C:\\app\\appsettings.json",
    )
    assert config.data == b'{"a":1}'
    assert engine.hits(f"/configs/{RUNTIME_CONFIG_ID}") == 0
    assert {"task", "secret", "config"} <= set(h.observed)


async def test_secret_not_granted_is_permanent_and_named(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A secret missing from secrets_dir is a PermanentError naming the secret and its id."""
    script_container(engine, container_doc(task=TASK_ID))
    script_task(engine)
    (tmp_path / "secrets").mkdir()

    async with resolving(engine, tmp_path) as h:
        with pytest.raises(PermanentError, match=f"'db-password' \\({SECRET_ID}\\) is not granted"):
            await h.resolve()


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_task_not_found_yet_is_transient_and_says_how_long(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A task the manager does not know (yet) is a TransientError saying how long it has waited."""
    script_container(engine, container_doc(task=TASK_ID))
    clock = FakeClock()

    async with resolving(engine, tmp_path, clock=clock) as h:
        with pytest.raises(TransientError, match=f"swarm task {TASK_ID} of container {CID} not"):
            await h.resolve()
        clock.now += 42
        with pytest.raises(TransientError, match="waiting for it for 42s"):
            await h.resolve()


async def test_task_without_its_container_yet_is_transient_then_resolves(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A task naming no container yet is transient (with the wait), then resolves once it does."""
    script_container(engine, container_doc(task=TASK_ID))
    engine.on(
        f"/tasks/{TASK_ID}",
        answer_json(task_doc(None)),
        answer_json(task_doc(None)),
        answer_json(task_doc()),
    )
    engine.on(f"/configs/{CONFIG_ID}", answer_json(config_doc(CONFIG_ID, "eyJhIjoxfQ==")))
    grant_secret(tmp_path)
    clock = FakeClock()

    async with resolving(engine, tmp_path, clock=clock) as h:
        with pytest.raises(TransientError, match="does not name its container yet"):
            await h.resolve()
        clock.now += 7
        with pytest.raises(TransientError, match="waiting for it for 7s"):
            await h.resolve()
        request = await h.resolve()
        assert [s.data for s in request.secrets] == [b"s3cr3t"]
        assert h.resolver._waiting == {}  # forgotten once resolved


async def test_a_task_naming_its_container_within_the_settle_pauses_resolves_at_once(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A task still "preparing" is asked again after short pauses, so one resolve succeeds."""
    script_container(engine, container_doc(task=TASK_ID))
    preparing = answer_json(task_doc(None))
    engine.on(f"/tasks/{TASK_ID}", preparing, preparing, answer_json(task_doc()))
    engine.on(f"/configs/{CONFIG_ID}", answer_json(config_doc(CONFIG_ID, "eyJhIjoxfQ==")))
    grant_secret(tmp_path)

    async with resolving(engine, tmp_path, task_settle=(0.01, 0.01, 0.01)) as h:
        request = await h.resolve()

    assert [s.data for s in request.secrets] == [b"s3cr3t"]
    assert engine.hits(f"/tasks/{TASK_ID}") == 3


async def test_the_settle_pauses_are_bounded_then_transient(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A task that still names no container after every pause is a TransientError."""
    script_container(engine, container_doc(task=TASK_ID))
    engine.on(f"/tasks/{TASK_ID}", answer_json(task_doc(None)))

    async with resolving(engine, tmp_path, task_settle=(0.01, 0.01)) as h:
        with pytest.raises(TransientError, match="does not name its container yet"):
            await h.resolve()

    assert engine.hits(f"/tasks/{TASK_ID}") == 3


async def test_waiting_containers_are_remembered_within_a_bound(
    engine: ScriptedEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait bookkeeping keeps at most WAITING_SIZE containers, forgetting the oldest first."""
    monkeypatch.setattr(resolver_module, "WAITING_SIZE", 2)
    ids = [c * 64 for c in "abc"]
    for cid in ids:
        script_container(engine, container_doc(cid, task=TASK_ID))
    async with resolving(engine, tmp_path) as h:
        for cid in ids:
            with pytest.raises(TransientError):
                await h.resolve(cid)
        assert list(h.resolver._waiting) == ids[1:]


FORGED_TASK_CASES = [
    pytest.param(
        {},
        {"Status": {"ContainerStatus": {"ContainerID": OTHER}}},
        f"the task runs container '{OTHER}'",
        id="another-container",
    ),
    pytest.param(
        {"com.docker.swarm.service.id": "x" * 25},
        {},
        "label com.docker.swarm.service.id is 'xxxxxxxxxxxxxxxxxxxxxxxxx' but the task's",
        id="service-label",
    ),
    pytest.param(
        {"com.docker.swarm.node.id": None},
        {},
        "label com.docker.swarm.node.id is None but the task's",
        id="no-node-label",
    ),
    pytest.param(
        {"com.docker.swarm.task.name": "web.2.other"},
        {},
        "label com.docker.swarm.task.name 'web.2.other' is not a name of this task",
        id="task-name-label",
    ),
    pytest.param(
        {},
        {"ID": "y" * 25},
        "the swarm answered with task 'yyyyyyyyyyyyyyyyyyyyyyyyy'",
        id="another-task-answered",
    ),
]


@pytest.mark.parametrize(("labels", "task_changes", "problem"), FORGED_TASK_CASES)
async def test_a_forged_task_label_is_permanent_and_resolves_no_payload(
    engine: ScriptedEngine,
    tmp_path: Path,
    labels: dict[str, Any],
    task_changes: dict[str, Any],
    problem: str,
) -> None:
    """A task label the task does not confirm: PermanentError naming the mismatch, no payload."""
    doc = container_doc(task=TASK_ID)
    for name, value in labels.items():
        if value is None:
            del doc["Config"]["Labels"][name]
        else:
            doc["Config"]["Labels"][name] = value
    script_container(engine, doc)
    engine.on(f"/tasks/{TASK_ID}", answer_json(task_doc() | task_changes))
    engine.on(f"/configs/{CONFIG_ID}", answer_json(config_doc(CONFIG_ID, "eyJhIjoxfQ==")))
    grant_secret(tmp_path)

    async with resolving(engine, tmp_path) as h:
        with pytest.raises(PermanentError) as caught:
            await h.resolve()

    message = str(caught.value)
    assert f"container {CID} claims swarm task {TASK_ID}" in message
    assert problem in message
    assert "no secrets or configs resolved" in message
    assert engine.hits(f"/configs/{CONFIG_ID}") == 0
    assert "secret" not in h.observed


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ([], "Expected `object`, got `array`"),
        ("task", "Expected `object`, got `str`"),
        ({"Spec": {"ContainerSpec": {"Secrets": {}}}}, "$.Spec.ContainerSpec.Secrets"),
        (
            {"Spec": {"ContainerSpec": {"Secrets": [{"SecretID": 7}]}}},
            "$.Spec.ContainerSpec.Secrets[0].SecretID",
        ),
        (
            {"Spec": {"ContainerSpec": {"Configs": [{"File": "x"}]}}},
            "$.Spec.ContainerSpec.Configs[0].File",
        ),
    ],
)
async def test_malformed_task_is_a_decode_error_naming_the_field(
    engine: ScriptedEngine, tmp_path: Path, body: Any, where: str
) -> None:
    """A task body of the wrong shape is a RequestDecodeError (permanent) naming what is wrong."""
    script_container(engine, container_doc(task=TASK_ID))
    engine.on(f"/tasks/{TASK_ID}", answer_json(body))

    async with resolving(engine, tmp_path) as h:
        with pytest.raises(RequestDecodeError) as caught:
            await h.resolve()

    assert f"invalid swarm task {TASK_ID} from the engine" in str(caught.value)
    assert where in str(caught.value)
    assert engine.hits(f"/tasks/{TASK_ID}") == 1  # not retried


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (config_doc(CONFIG_ID, "not base64!"), "Invalid base64 encoded string - at `$.Spec.Data`"),
        ({"Spec": {"Data": 5}}, "$.Spec.Data"),
        (["x"], "Expected `object`, got `array`"),
    ],
)
async def test_malformed_config_is_a_decode_error_naming_the_field(
    engine: ScriptedEngine, tmp_path: Path, body: Any, where: str
) -> None:
    """Config data that is not base64 (or a body of the wrong shape) is a RequestDecodeError."""
    script_container(engine, container_doc(task=TASK_ID))
    script_task(engine)
    engine.on(f"/configs/{CONFIG_ID}", answer_json(body))
    grant_secret(tmp_path)

    async with resolving(engine, tmp_path) as h:
        with pytest.raises(RequestDecodeError) as caught:
            await h.resolve()

    assert f"invalid swarm config {CONFIG_ID} from the engine" in str(caught.value)
    assert where in str(caught.value)


async def test_config_with_null_data_is_empty(engine: ScriptedEngine, tmp_path: Path) -> None:
    """A config whose Data is null (Go's nil []byte) has an empty payload."""
    script_container(engine, container_doc(task=TASK_ID))
    script_task(engine)
    engine.on(f"/configs/{CONFIG_ID}", answer_json({"ID": CONFIG_ID, "Spec": {"Data": None}}))
    grant_secret(tmp_path)

    async with resolving(engine, tmp_path) as h:
        request = await h.resolve()

    assert request.configs[0].data == b""


# -- swarm workers and --swarm-host ----------------------------------------------------------


async def test_worker_without_swarm_host_refuses_swarm_tasks(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """On a worker with no manager given, a swarm task is a PermanentError saying exactly so."""
    script_container(engine, container_doc(task=TASK_ID))
    script_task(engine)

    async with resolving(engine, tmp_path, swarm_worker=True) as h:
        with pytest.raises(PermanentError) as caught:
            await h.resolve()

    assert str(caught.value) == (
        f"container {CID} is a swarm task but this node is not a swarm manager; "
        "set --swarm-host to a manager's Engine API"
    )
    assert engine.hits(f"/tasks/{TASK_ID}") == 0


async def test_worker_still_resolves_containers_that_are_not_swarm_tasks(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """On a worker with no manager given, a plain container resolves as usual."""
    script_container(engine, container_doc())

    async with resolving(engine, tmp_path, swarm_worker=True) as h:
        request = await h.resolve()

    assert request.secrets == []


async def test_swarm_host_answers_tasks_and_configs(engine: ScriptedEngine, tmp_path: Path) -> None:
    """With a manager engine given, tasks and configs come from it, never from the node."""
    manager = ScriptedEngine()
    script_container(engine, container_doc(task=TASK_ID))
    not_manager = answer_json({"message": NOT_A_MANAGER_503}, 503)
    engine.on(f"/tasks/{TASK_ID}", not_manager)
    engine.on(f"/configs/{CONFIG_ID}", not_manager)
    script_task(manager)
    grant_secret(tmp_path)

    async with (
        serving(manager),
        resolving(engine, tmp_path, swarm_engine=manager, swarm_worker=True) as h,
    ):
        request = await h.resolve()

    assert [c.data for c in request.configs] == [b'{"a":1}']
    assert manager.hits(f"/tasks/{TASK_ID}") == 1
    assert manager.hits(f"/configs/{CONFIG_ID}") == 1
    assert engine.hits(f"/tasks/{TASK_ID}") == 0
    assert engine.hits(f"/configs/{CONFIG_ID}") == 0


async def test_engine_that_is_not_a_manager_is_permanent_not_retried(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A 503 "not a swarm manager" from the task inspect is permanent and asked only once."""
    script_container(engine, container_doc(task=TASK_ID))
    engine.on(f"/tasks/{TASK_ID}", answer_json({"message": NOT_A_MANAGER_503}, 503))

    async with resolving(engine, tmp_path) as h:
        with pytest.raises(NotSwarmManagerError, match="not a swarm manager"):
            await h.resolve()

    assert engine.hits(f"/tasks/{TASK_ID}") == 1


# -- credential specs (S21–S25) --------------------------------------------------------------


async def test_config_credential_spec_is_fetched_and_timed_as_credential_spec(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """config:// of a swarm task is fetched from the swarm, timed as credential_spec."""
    doc = container_doc(task=TASK_ID, security_opt=[f"credentialspec=config://{RUNTIME_CONFIG_ID}"])
    script_container(engine, doc)
    script_task(engine)
    encoded = "eyJDbXNQbHVnaW5zIjpbXX0="  # {"CmsPlugins":[]}
    engine.on(f"/configs/{RUNTIME_CONFIG_ID}", answer_json(config_doc(RUNTIME_CONFIG_ID, encoded)))
    grant_secret(tmp_path)

    async with resolving(engine, tmp_path) as h:
        request = await h.resolve()

    assert request.credential_specs.config == {RUNTIME_CONFIG_ID: '{"CmsPlugins":[]}'}
    assert h.observed.count("credential_spec") == 1
    assert h.observed.count("config") == 1  # the mounted config only
    assert generate(request).spec.windows.credentialSpec == '{"CmsPlugins":[]}'  # type: ignore[union-attr]


async def test_config_credential_spec_of_a_plain_container_is_left_to_the_generator(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """config:// outside a swarm task is not fetched; the generator reports the S22 error."""
    script_container(engine, container_doc(security_opt=[f"credentialspec=config://{CONFIG_ID}"]))

    async with resolving(engine, tmp_path) as h:
        request = await h.resolve()

    assert engine.hits(f"/configs/{CONFIG_ID}") == 0
    with pytest.raises(SpecError) as caught:
        generate(request)
    assert str(caught.value) == INVALID_VALUE


class ThreadRecordingReader:
    """A credential spec reader that records which thread read what."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def read_file(self, parts: tuple[str, ...], *, base: str, container_id: str) -> str:
        """Return a spec naming the file, noting the thread."""
        self.threads.append(threading.get_ident())
        return f'{{"file":"{"/".join(parts)}","container":"{container_id}"}}'

    def read_registry(self, name: str, *, container_id: str) -> str:
        """Return a spec naming the value, noting the thread."""
        self.threads.append(threading.get_ident())
        return f'{{"registry":"{name}"}}'


async def test_file_and_registry_specs_are_read_in_a_thread_into_the_map(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """file:// and registry:// are read off the event loop, keyed by the raw value; timed."""
    opts = ["credentialspec=file://sub/Web.json", "CredentialSpec=REGISTRY://web"]
    script_container(engine, container_doc(security_opt=opts))
    reader = ThreadRecordingReader()

    async with resolving(engine, tmp_path, reader=reader) as h:
        request = await h.resolve()

    assert request.credential_specs.file == {
        "sub/Web.json": f'{{"file":"sub/Web.json","container":"{CID}"}}'
    }
    assert request.credential_specs.registry == {"web": '{"registry":"web"}'}
    assert len(reader.threads) == 2
    assert threading.get_ident() not in reader.threads
    assert h.observed.count("credential_spec") == 2
    # The generator finds them in the map (no reader): the last option wins (S22).
    assert generate(request).spec.windows.credentialSpec == '{"registry":"web"}'  # type: ignore[union-attr]


async def test_file_spec_read_from_the_daemon_root_with_the_node_reader(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """The default reader reads file:// under <daemon root>/CredentialSpecs on this host."""
    specs = tmp_path / "docker" / "CredentialSpecs"
    specs.mkdir(parents=True)
    (specs / "web.json").write_text(CREDSPEC, encoding="utf-8")
    script_container(engine, container_doc(security_opt=["credentialspec=file://web.json"]))

    async with resolving(engine, tmp_path) as h:
        request = await h.resolve()

    assert request.credential_specs.file == {"web.json": CREDSPEC}
    assert generate(request).spec.windows.credentialSpec == CREDSPEC  # type: ignore[union-attr]


async def test_unreadable_file_spec_is_the_readers_permanent_error(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A file:// spec that cannot be read fails the resolve with the reader's SpecError."""
    (tmp_path / "docker" / "CredentialSpecs").mkdir(parents=True)
    script_container(engine, container_doc(security_opt=["credentialspec=file://missing.json"]))

    async with resolving(engine, tmp_path) as h:
        with pytest.raises(
            SpecError, match=f"missing.json'? for container {CID} could not be read"
        ):
            await h.resolve()


@pytest.mark.skipif(sys.platform == "win32", reason="checks the non-Windows behaviour")
async def test_registry_spec_off_windows_is_the_readers_permanent_error(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """registry:// on a host that is not Windows fails with the reader's clear SpecError."""
    script_container(engine, container_doc(security_opt=["credentialspec=registry://web"]))

    async with resolving(engine, tmp_path) as h:
        with pytest.raises(SpecError, match="only available on a Windows host"):
            await h.resolve()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["credentialspec"], "invalid security option: no equals sign in supplied value"),
        (["seccomp=x", "credentialspec=file://web.json"], "security option not supported: seccomp"),
        (["credentialspec=file://C:\\abs.json"], "file:// path cannot be absolute"),
        (["credentialspec=file://..\\..\\x.json"], "file:// path must be under"),
        # The first refused option stops resolving: the later unreadable file is never read,
        # so the generator reports the earlier option's rule, as it does on its own.
        (
            ["credentialspec=file://\\abs.json", "credentialspec=file://missing.json"],
            "file:// path cannot be absolute",
        ),
        (
            [f"credentialspec=config://{CONFIG_ID}", "credentialspec=registry://web"],
            INVALID_VALUE,
        ),
    ],
)
async def test_refused_options_are_left_to_the_generator(
    engine: ScriptedEngine, tmp_path: Path, options: list[str], message: str
) -> None:
    """Options S21–S23/S25 refuse are not raised by the resolver; generate() gives the rule text."""
    script_container(engine, container_doc(security_opt=options))
    reader = ThreadRecordingReader()

    async with resolving(engine, tmp_path, reader=reader) as h:
        request = await h.resolve()

    assert reader.threads == []
    with pytest.raises(SpecError, match=re.escape(message)):
        generate(request)


async def test_lcow_images_read_no_credential_specs(engine: ScriptedEngine, tmp_path: Path) -> None:
    """A Linux image ignores credential specs, so none is read."""
    doc = container_doc(security_opt=["credentialspec=file://web.json"])
    engine.on(f"/containers/{CID}/json", answer_json(doc))
    engine.on(f"/images/{IMAGE_ID}/json", answer_json(image_doc(os="linux")))
    reader = ThreadRecordingReader()

    async with resolving(engine, tmp_path, reader=reader) as h:
        request = await h.resolve()

    assert reader.threads == []
    assert request.credential_specs.file == {}


# -- the image cache -------------------------------------------------------------------------


async def test_image_inspect_is_cached_by_content_id(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A second resolve with the same sha256 image id does not inspect the image again."""
    script_container(engine, container_doc())

    async with resolving(engine, tmp_path) as h:
        await h.resolve()
        await h.resolve()

    assert engine.hits(f"/images/{IMAGE_ID}/json") == 1
    assert engine.hits(f"/containers/{CID}/json") == 2


async def test_image_ids_that_are_not_content_ids_are_not_cached(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """An image reference that is not a sha256 id may move, so it is inspected every time."""
    script_container(engine, container_doc(image="web:latest"), image="web:latest")

    async with resolving(engine, tmp_path) as h:
        await h.resolve()
        await h.resolve()

    assert engine.hits("/images/web:latest/json") == 2


async def test_image_cache_evicts_the_oldest_at_its_bound(
    engine: ScriptedEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for two images, a third evicts the oldest, which is then inspected again."""
    monkeypatch.setattr(resolver_module, "IMAGE_CACHE_SIZE", 2)
    ids = ["sha256:" + ch * 64 for ch in "abc"]
    for n, image in enumerate(ids):
        script_container(engine, container_doc(str(n) * 64, image=image), image=image)

    async with resolving(engine, tmp_path) as h:
        for n in (0, 1, 2, 0, 2):
            await h.resolve(str(n) * 64)

    assert [engine.hits(f"/images/{image}/json") for image in ids] == [2, 1, 1]


# -- what is timed ---------------------------------------------------------------------------


async def test_every_timed_kind_is_a_declared_dependency_kind(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A resolve touching every dependency times each under a kind the metrics declare."""
    rw = tmp_path / "rw"
    rw.mkdir()
    (rw / "layerchain.json").write_text('["C:\\\\base"]')
    (tmp_path / "docker" / "CredentialSpecs").mkdir(parents=True)
    (tmp_path / "docker" / "CredentialSpecs" / "web.json").write_text(CREDSPEC)
    doc = container_doc(
        task=TASK_ID,
        driver={"Name": "windowsfilter", "Data": {"dir": str(rw)}},
        network_mode=f"container:{OTHER}",
        security_opt=["credentialspec=file://web.json"],
    )
    script_container(engine, doc)
    engine.on(f"/containers/{OTHER}/json", answer_json(container_doc(OTHER)))
    script_task(engine)
    grant_secret(tmp_path)

    async with resolving(engine, tmp_path) as h:
        await h.resolve()

    assert set(h.observed) == {
        "container",
        "image",
        "layers",
        "endpoints",
        "task",
        "secret",
        "config",
        "credential_spec",
    }
    assert set(h.observed) <= set(DEPENDENCY_KINDS)


async def test_a_container_that_is_gone_resolves_to_none(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A 404 on the container inspect means the container is gone: None, not an error."""
    async with resolving(engine, tmp_path) as h:
        assert await h.resolver.resolve(CID) is None


# -- node facts from /info -------------------------------------------------------------------


WINDOWS_INFO = {
    "OSType": "windows",
    "NCPU": 4,
    "KernelVersion": "10.0 17763 (17763.1.amd64fre.rs5_release.180914-1434)",
    "Isolation": "process",
    "DockerRootDir": "C:\\ProgramData\\docker",
    "Swarm": {"LocalNodeState": "active", "ControlAvailable": True},
    "Name": "win01",
}


def info(**changes: Any) -> Info:
    """WINDOWS_INFO with ``changes``, decoded as the engine's JSON would be."""
    return decode(json.dumps({**WINDOWS_INFO, **changes}).encode(), Info, "/info")


def test_windows_info_gives_the_build_from_the_kernel_version() -> None:
    """A Windows engine: build 17763 from KernelVersion; NCPU, Isolation and root as shown."""
    facts = node_facts_from_info(info(), NodeSettings())
    assert facts.windows_build == 17763
    assert facts.cpu_count == 4
    assert facts.default_isolation == "process"
    assert facts.lcow_supported is False
    assert facts.daemon_root == "C:\\ProgramData\\docker"
    assert facts.dns_search is None


def test_windows_server_2022_build() -> None:
    """KernelVersion "10.0 20348 (...)" gives build 20348; hyperv isolation is kept."""
    facts = node_facts_from_info(
        info(
            KernelVersion="10.0 20348 (20348.1.amd64fre.fe_release.210507-1500)", Isolation="hyperv"
        ),
        NodeSettings(),
    )
    assert (facts.windows_build, facts.default_isolation) == (20348, "hyperv")


def test_linux_engine_is_an_lcow_node_with_the_default_build() -> None:
    """A Linux engine: LCOW supported, build 17763, isolation process (it shows none)."""
    facts = node_facts_from_info(
        info(OSType="linux", KernelVersion="6.1.0-18-amd64", Isolation="", NCPU=8), NodeSettings()
    )
    assert facts.lcow_supported is True
    assert facts.windows_build == 17763
    assert facts.default_isolation == "process"
    assert facts.cpu_count == 8


def test_overrides_win_over_info() -> None:
    """Every operator override beats what /info says."""
    overrides = NodeSettings(
        windows_build=20348,
        cpu_count=16,
        default_isolation="hyperv",
        lcow_supported=True,
        dns_search=("corp.example",),
        daemon_root="D:\\docker",
    )
    facts = node_facts_from_info(info(), overrides)
    assert facts == NodeFacts(
        windows_build=20348,
        cpu_count=16,
        default_isolation="hyperv",
        lcow_supported=True,
        dns_search=["corp.example"],
        daemon_root="D:\\docker",
    )
    assert node_facts_from_info(info(OSType="linux"), NodeSettings(lcow_supported=False)) == (
        NodeFacts(
            windows_build=17763,
            cpu_count=4,
            default_isolation="process",
            lcow_supported=False,
            daemon_root="C:\\ProgramData\\docker",
        )
    )


def test_sparse_info_gives_defaults() -> None:
    """An /info with none of the fields gives a Windows node of build 17763 with 1 CPU."""
    facts = node_facts_from_info(decode(b"{}", Info, "/info"), NodeSettings())
    assert (facts.windows_build, facts.cpu_count, facts.default_isolation) == (17763, 1, "process")
    assert facts.lcow_supported is False


@pytest.mark.parametrize(
    ("swarm", "worker"),
    [
        ({"LocalNodeState": "active", "ControlAvailable": False}, True),
        ({"LocalNodeState": "active", "ControlAvailable": True}, False),
        ({"LocalNodeState": "inactive", "ControlAvailable": False}, False),
        (None, False),
    ],
)
def test_worker_node_detection(swarm: dict[str, Any] | None, worker: bool) -> None:
    """An active swarm member without ControlAvailable is a worker; managers and loners not."""
    assert info(Swarm=swarm).swarm_worker is worker


@pytest.mark.parametrize(
    ("body", "where"),
    [(b'{"NCPU": "four"}', "$.NCPU"), (b"[]", "Expected `object`"), (b"<html>", "malformed")],
)
def test_malformed_info_is_a_decode_error(body: bytes, where: str) -> None:
    """An /info body of the wrong shape is a RequestDecodeError naming what is wrong."""
    with pytest.raises(RequestDecodeError, match="invalid /info from the engine") as caught:
        decode(body, Info, "/info")
    assert where in str(caught.value)
