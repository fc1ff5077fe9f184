"""Checked, percent-quoted Engine API paths against a real private dockerd (tests/dockerd.py).

Every id and name winspec puts into a path is quoted into one segment: these tests show a real
engine still finds each object that way (image ids and references with ``:`` and ``/``,
container ids and names, swarm tasks and configs), and that a hostile task label on a real
container is refused by its grammar before any request.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.docker.client import DockerClient
from adapters.docker.paths import IdKind, api_path
from adapters.docker.resolver import DockerRequestResolver
from controller.errors import PermanentError
from controller.models import NodeFacts
from tests.dockerd import TEST_IMAGE, DockerDaemon

pytestmark = pytest.mark.docker


@pytest.fixture
async def client(dockerd: DockerDaemon) -> AsyncIterator[DockerClient]:
    """A negotiated client of the session engine."""
    async with DockerClient(dockerd.host, env={}) as engine_client:
        await engine_client.negotiate()
        yield engine_client


async def _inspect(client: DockerClient, path: str) -> dict[str, object]:
    body = json.loads(await client.get_raw(path, api="inspect"))
    assert isinstance(body, dict)
    return body


async def test_quoted_image_ids_and_references_find_the_image(
    dockerd: DockerDaemon, client: DockerClient
) -> None:
    """An image id, its bare hex, a tag and a registry reference with '/' and a port all resolve."""
    image_id = dockerd.call("GET", f"/images/{TEST_IMAGE}/json")["Id"]
    repo = f"localhost:5000/team-{uuid.uuid4().hex[:8]}/app"
    dockerd.call("POST", f"/images/{TEST_IMAGE}/tag", query={"repo": repo, "tag": "1.0"})
    try:
        for ref in (image_id, image_id.split(":", 1)[1], TEST_IMAGE, f"{repo}:1.0"):
            body = await _inspect(client, api_path("images", IdKind.IMAGE, ref, "json"))
            assert body["Id"] == image_id, ref
    finally:
        dockerd.call("DELETE", f"/images/{repo}:1.0", expect=(200, 404))


async def test_quoted_container_ids_names_tasks_and_configs_are_found(
    dockerd: DockerDaemon, client: DockerClient
) -> None:
    """A container by id, short id and name, a swarm config and a task resolve through api_path."""
    name = f"paths-{uuid.uuid4().hex[:8]}"
    cid = await asyncio.to_thread(dockerd.create_container, name)
    config_id = dockerd.create_config(f"cfg-{uuid.uuid4().hex[:8]}", b"x")
    service_id = await asyncio.to_thread(dockerd.create_service, f"svc-{uuid.uuid4().hex[:8]}")
    try:
        for ref in (cid, cid[:12], name):
            body = await _inspect(client, api_path("containers", IdKind.CONTAINER, ref, "json"))
            assert body["Id"] == cid, ref
        config = await _inspect(client, api_path("configs", IdKind.CONFIG, config_id))
        assert config["ID"] == config_id
        task = await asyncio.to_thread(dockerd.wait_for_task_container, service_id)
        got = await _inspect(client, api_path("tasks", IdKind.TASK, task["ID"]))
        assert got["ServiceID"] == service_id
    finally:
        dockerd.remove_service(service_id)
        dockerd.remove_container(cid)


async def test_a_traversal_task_label_on_a_real_container_is_refused_by_its_grammar(
    dockerd: DockerDaemon, client: DockerClient
) -> None:
    """A real container labelled com.docker.swarm.task.id=../secrets: refused before any request."""
    cid = await asyncio.to_thread(
        dockerd.create_container,
        f"forger-{uuid.uuid4().hex[:8]}",
        Labels={"com.docker.swarm.task.id": "../secrets"},
    )
    try:
        resolver = DockerRequestResolver(
            client,
            node=NodeFacts(),
            bundle_root="/nonexistent/bundles",
            secrets_dir=Path("/nonexistent/secrets"),  # nothing may be read here
        )
        with pytest.raises(PermanentError, match=r"invalid swarm task id '\.\./secrets'"):
            await resolver.resolve(cid)
    finally:
        dockerd.remove_container(cid)
