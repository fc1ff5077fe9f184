"""The private dockerd fixtures start a real, usable engine."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.dockerd import PAUSE_COMMAND, TEST_IMAGE, DockerDaemon
from tests.support.waiting import wait_for


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _running_task(
    daemon: DockerDaemon, service_id: str, *, not_id: str | None = None
) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        for task in daemon.tasks(service_id):
            if (
                task["ID"] != not_id
                and task["Status"]["State"] == "running"
                and task["DesiredState"] == "running"
            ):
                return task
        return None

    return wait_for(running, 60, what=f"a running task of {service_id}")


@pytest.mark.docker
def test_engine_answers_ping_and_reports_swarm_active(dockerd: DockerDaemon) -> None:
    """The fixture's engine answers /_ping and reports swarm active."""
    assert dockerd.api("GET", "/_ping") == (200, b"OK")
    swarm = dockerd.info()["Swarm"]
    assert swarm["LocalNodeState"] == "active"
    assert swarm["ControlAvailable"] is True


@pytest.mark.docker
def test_engine_is_private(dockerd: DockerDaemon) -> None:
    """GET /info reports the vfs driver and the fixture's own data root."""
    info = dockerd.info()
    assert info["OSType"] == "linux"
    assert info["Driver"] == "vfs"
    assert info["DockerRootDir"] == dockerd.data_root
    assert dockerd.host == "unix://" + dockerd.socket_path
    assert Path(dockerd.pidfile).read_text().strip() == str(dockerd.pid)


@pytest.mark.docker
def test_imported_image_runs_hello(dockerd: DockerDaemon) -> None:
    """A container of the imported test image runs its CMD /hello, which prints hello."""
    image = dockerd.call("GET", f"/images/{TEST_IMAGE}/json")
    assert image["Config"]["Cmd"] == ["/hello"]
    container_id = dockerd.create_container(_unique("hello"))
    try:
        dockerd.start_container(container_id)
        status = dockerd.call("POST", f"/containers/{container_id}/wait", timeout=30)
        assert status["StatusCode"] == 0
        logs = dockerd.call(
            "GET", f"/containers/{container_id}/logs", query={"stdout": "1", "stderr": "1"}
        )
        assert logs.endswith(b"hello\n")
    finally:
        dockerd.remove_container(container_id)


@pytest.mark.docker
def test_container_create_emits_create_event(dockerd: DockerDaemon) -> None:
    """A container created through the API emits a create event on /events."""
    since = time.time() - 1
    name = _unique("evt")
    container_id = dockerd.create_container(name, Labels={"winspec.test": "events"})
    try:

        def create_event() -> dict[str, Any] | None:
            for event in dockerd.events(
                since, filters={"type": ["container"], "container": [container_id]}
            ):
                if event["Action"] == "create":
                    return event
            return None

        event = wait_for(create_event, 10, what="the create event")
        assert event["Actor"]["ID"] == container_id
        assert event["Actor"]["Attributes"]["name"] == name
        assert event["Actor"]["Attributes"]["image"] == TEST_IMAGE
        assert event["Actor"]["Attributes"]["winspec.test"] == "events"
        assert event["scope"] == "local"
    finally:
        dockerd.remove_container(container_id)


@pytest.mark.docker
def test_service_with_secret_and_config_gets_task_container(dockerd: DockerDaemon) -> None:
    """A swarm service with a secret and a config gets a running task container with both files."""
    secret, config = _unique("secret"), _unique("config")
    secret_id = dockerd.create_secret(secret, b"s3cr3t")
    config_id = dockerd.create_config(config, b"key=value\n")
    service_id = dockerd.create_service(_unique("svc"), secrets=[secret], configs=[config])
    try:
        task = _running_task(dockerd, service_id)
        spec = task["Spec"]["ContainerSpec"]
        assert spec["Secrets"][0]["SecretID"] == secret_id
        assert spec["Configs"][0]["ConfigID"] == config_id
        container_id = task["Status"]["ContainerStatus"]["ContainerID"]
        container = dockerd.inspect_container(container_id)
        assert container["Config"]["Labels"]["com.docker.swarm.task.id"] == task["ID"]
        # A service's ContainerSpec.Command becomes the container's Entrypoint (Args -> Cmd).
        assert container["Config"]["Entrypoint"] == list(PAUSE_COMMAND)
        pid = task["Status"]["ContainerStatus"]["PID"]
        root = Path(f"/proc/{pid}/root")
        assert (root / "run/secrets" / secret).read_bytes() == b"s3cr3t"
        assert (root / config).read_bytes() == b"key=value\n"
    finally:
        dockerd.remove_service(service_id)


@pytest.mark.docker
def test_restart_keeps_swarm_and_reschedules_task(fresh_dockerd: DockerDaemon) -> None:
    """After an engine restart the swarm is still active and the service runs in a new container."""
    service_id = fresh_dockerd.create_service(_unique("svc"))
    before = _running_task(fresh_dockerd, service_id)
    socket_path, data_root = fresh_dockerd.socket_path, fresh_dockerd.data_root

    fresh_dockerd.restart()

    assert (fresh_dockerd.socket_path, fresh_dockerd.data_root) == (socket_path, data_root)
    assert fresh_dockerd.swarm_state() == "active"
    assert fresh_dockerd.call("GET", f"/services/{service_id}")["ID"] == service_id
    # Until the restarted agent reports, the manager still shows the old task as running.
    after = _running_task(fresh_dockerd, service_id, not_id=before["ID"])
    assert fresh_dockerd.call("GET", f"/tasks/{before['ID']}")["DesiredState"] == "shutdown"
    old_container = before["Status"]["ContainerStatus"]["ContainerID"]
    assert after["Status"]["ContainerStatus"]["ContainerID"] != old_container


@pytest.mark.docker
def test_stop_ends_daemon_and_cleans_up(fresh_dockerd: DockerDaemon) -> None:
    """stop() ends dockerd and its containers, removes its directory, and may be called twice."""
    container_id = fresh_dockerd.create_container(_unique("pause"), Cmd=list(PAUSE_COMMAND))
    fresh_dockerd.start_container(container_id)
    container_pid = fresh_dockerd.inspect_container(container_id)["State"]["Pid"]
    daemon_pid = fresh_dockerd.pid
    assert daemon_pid is not None

    fresh_dockerd.stop()
    fresh_dockerd.stop()

    assert not fresh_dockerd.running
    assert fresh_dockerd.pid is None
    assert not os.path.exists(fresh_dockerd.base_dir)
    for pid in (daemon_pid, container_pid):
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in _state(pid)


def _state(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line
    except OSError:
        return "gone"
    return ""
