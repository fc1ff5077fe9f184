"""Docker mode end to end against a real private dockerd (tests/dockerd.py).

The controller runs in-process (:class:`adapters.docker_mode.DockerMode`, its own metrics registry,
a temporary bundle root and secrets directory, HTTP on 127.0.0.1 at a free port) while the test
drives the engine through the fixture's own synchronous API client, from a thread so the event
loop keeps running. ``winspec run`` itself runs as a real subprocess for the exit-code and
signal tests. Every wait is a bounded poll: nothing sleeps for a fixed long time.

The session engine is shared with other tests, so every test names its objects uniquely,
removes them afterwards and measures counters as differences from a baseline taken once the
controller has settled (the initial list may reconcile other tests' leftovers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from adapters.bundles.local import KEY_FILE
from adapters.docker.mode import CONTROLLER_NAME, DockerMode
from controller.settings import load_settings
from tests.dockerd import PAUSE_COMMAND, DockerDaemon
from tests.processes import clean_env, free_port, http_status, winspec_run_command
from tests.schema import SKIP_REASON, schema_available, strict_roundtrip, validate_spec
from tests.support.waiting import eventually, wait_for

pytestmark = pytest.mark.docker

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
INTERNAL_SECRETS = "C:\\ProgramData\\Docker\\internal\\secrets"
INTERNAL_CONFIGS = "C:\\ProgramData\\Docker\\internal\\configs"


def _unique(prefix: str) -> str:
    return f"winspec-{prefix}-{uuid.uuid4().hex[:10]}"


def metric_sum(registry: CollectorRegistry, name: str, /, **labels: str) -> float:
    """The sum of every sample called ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@dataclass
class Harness:
    """One DockerMode running in this event loop, with its bundle root and secrets directory."""

    engine: DockerDaemon
    mode: DockerMode
    task: asyncio.Task[None]
    root: Path
    secrets_dir: Path

    @property
    def url(self) -> str:
        """Base URL of its /metrics, /healthz and /readyz."""
        return f"http://127.0.0.1:{self.mode.http_port}"

    def metric(self, name: str, /, **labels: str) -> float:
        """A metric of this controller's registry (summed over labels not given)."""
        return metric_sum(self.mode.registry, name, **labels)

    def terminal_errors(self) -> float:
        """controller_runtime_terminal_reconcile_errors_total of the Docker controller."""
        return self.metric(
            "controller_runtime_terminal_reconcile_errors_total", controller=CONTROLLER_NAME
        )

    def bundle(self, container_id: str) -> Path:
        """Where the bundle of a container lives."""
        return self.root / container_id

    async def bundle_written(self, container_id: str, within: float = 30.0) -> Path:
        """Wait until the container's config.json exists; its bundle directory."""
        config = self.bundle(container_id) / "config.json"
        self._check_alive()
        await eventually(
            lambda: self._check_alive() or config.is_file(),
            within=within,
            what=f"the bundle of {container_id[:12]}",
        )
        return self.bundle(container_id)

    async def bundle_removed(self, container_id: str, within: float = 30.0) -> None:
        """Wait until the container's bundle directory is gone."""
        path = self.bundle(container_id)
        await eventually(
            lambda: self._check_alive() or not path.exists(),
            within=within,
            what=f"the bundle of {container_id[:12]} to be removed",
        )

    async def settled(self, within: float = 60.0) -> None:
        """Wait until ready with an empty queue and no reconcile running."""

        def idle() -> bool:
            self._check_alive()
            return (
                self.mode.health.is_ready()
                and self.metric("workqueue_depth", name=CONTROLLER_NAME) == 0
                and self.metric("controller_runtime_active_workers", controller=CONTROLLER_NAME)
                == 0
            )

        # Twice, a little apart: a key handed from the list to a worker is never both queued
        # and active, but it can fall between two scrapes of the two gauges.
        await eventually(idle, within=within, what="the controller to settle")
        await asyncio.sleep(0.1)
        await eventually(idle, within=within, what="the controller to settle")

    def _check_alive(self) -> bool:
        if self.task.done():
            exc = self.task.exception()
            raise AssertionError(f"DockerMode.run() ended early: {exc!r}") from exc
        return False

    # The fixture's client is synchronous: run it in a thread so the controller keeps going.

    async def create_container(self, name: str | None = None, **config: Any) -> str:
        """Create a container on the engine (not started); its id."""
        return await asyncio.to_thread(self.engine.create_container, name, **config)

    async def remove_container(self, container_id: str) -> None:
        """Remove a container from the engine."""
        await asyncio.to_thread(self.engine.remove_container, container_id)


def _settings(engine: DockerDaemon, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Settings for a test run: its own bundle root and (existing) secrets directory."""
    (tmp_path / "secrets").mkdir(exist_ok=True)
    return {
        "docker_host": engine.host,
        "bundle_root": str(tmp_path / "bundles"),
        "secrets_dir": str(tmp_path / "secrets"),
        "listen": "127.0.0.1:0",
        "log_format": "console",
        "log_level": "debug",
        "retry_attempts": 3,
        "api_timeout": 10.0,
        "shutdown_timeout": 5.0,
        **overrides,
    }


@contextlib.asynccontextmanager
async def running(engine: DockerDaemon, tmp_path: Path, **overrides: Any) -> AsyncIterator[Harness]:
    """Run DockerMode against ``engine`` for the duration of the block, then stop it cleanly."""
    settings = load_settings(_settings(engine, tmp_path, **overrides))
    mode = DockerMode(settings)
    task = asyncio.create_task(mode.run(), name="docker-mode")
    started = asyncio.create_task(mode.started.wait())
    await asyncio.wait({task, started}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if not mode.started.is_set():
        if task.done():
            task.result()  # raises what stopped it
        task.cancel()
        raise AssertionError("DockerMode did not start within 30s")
    harness = Harness(engine, mode, task, Path(settings.bundle_root), Path(settings.secrets_dir))
    try:
        yield harness
    finally:
        mode.request_stop()
        await asyncio.wait_for(task, timeout=30)


def _files(directory: Path) -> dict[str, Path]:
    """Every file below ``directory`` by relative POSIX path."""
    return {p.relative_to(directory).as_posix(): p for p in directory.rglob("*") if p.is_file()}


def _visible(files: dict[str, Path]) -> set[str]:
    """The bundle's files without the writer's own bookkeeping (dot files such as .digest)."""
    return {name for name in files if not name.rsplit("/", 1)[-1].startswith(".")}


def _assert_owner_only(directory: Path) -> None:
    for path in [directory, *directory.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        expected = 0o700 if path.is_dir() else 0o600
        assert mode == expected, f"{path} has mode {oct(mode)}, expected {oct(expected)}"


def _validate(config: dict[str, Any]) -> bool:
    """Validate against the OCI schema when its files are there; whether it did."""
    if not schema_available():
        return False
    validate_spec(config)
    return True


def _service_containers(engine: DockerDaemon, service_id: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = engine.call(
        "GET",
        "/containers/json",
        query={"all": "1", "filters": {"label": [f"com.docker.swarm.service.id={service_id}"]}},
    )
    return listed


def _remove_service_and_wait(engine: DockerDaemon, service_id: str) -> None:
    """Remove a service and wait until its task containers are gone, so no later test sees them."""
    engine.remove_service(service_id)
    wait_for(
        lambda: not _service_containers(engine, service_id),
        60,
        what=f"the containers of service {service_id} to go",
    )


def _running_task_container(engine: DockerDaemon, service_id: str, *, not_id: str) -> str | None:
    """The container of a running task of the service other than ``not_id``, if any."""
    for task in engine.tasks(service_id):
        container = task.get("Status", {}).get("ContainerStatus", {}).get("ContainerID")
        if container and container != not_id and task["Status"]["State"] == "running":
            return str(container)
    return None


def _remove_all(engine: DockerDaemon, container_ids: Iterable[str]) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(engine.remove_container, container_ids))


# -- bundles for containers ------------------------------------------------------------------


async def test_plain_create_writes_a_valid_bundle(dockerd: DockerDaemon, tmp_path: Path) -> None:
    """A plain `docker create` gets a bundle: schema-valid config.json, links.json, mode 0600."""
    async with running(dockerd, tmp_path) as h:
        await h.settled()
        written_before = h.metric("winspec_bundles_written_total", result="written")
        cid = await h.create_container(
            _unique("plain"), Hostname="winspec-plain", Cmd=["/hello", "with space"]
        )
        try:
            bundle = await h.bundle_written(cid)
            inspected = dockerd.inspect_container(cid)

            files = _files(bundle)
            assert _visible(files) == {"config.json", "links.json"}
            strict_roundtrip(files["config.json"].read_bytes())
            config = json.loads(files["config.json"].read_bytes())
            assert config["hostname"] == inspected["Config"]["Hostname"] == "winspec-plain"
            assert config["process"]["args"] == inspected["Config"]["Cmd"]
            assert config["process"]["args"] == ["/hello", "with space"]
            assert json.loads(files["links.json"].read_bytes()) == {"links": []}
            _assert_owner_only(bundle)
            # The file is published a moment before the reconciler counts it.
            await eventually(
                lambda: (
                    h.metric("winspec_bundles_written_total", result="written")
                    >= written_before + 1
                ),
                within=30,
                what="the write to be counted",
            )
            validated = _validate(config)
        finally:
            await h.remove_container(cid)
    if not validated:
        pytest.skip(f"bundle checked, but not against the OCI schema: {SKIP_REASON}")


async def test_container_removal_removes_its_bundle(dockerd: DockerDaemon, tmp_path: Path) -> None:
    """Removing a container removes its bundle and counts it as removed."""
    async with running(dockerd, tmp_path) as h:
        cid = await h.create_container(_unique("removed"))
        try:
            await h.bundle_written(cid)
            await h.settled()
            removed_before = h.metric("winspec_bundles_written_total", result="removed")
        finally:
            await h.remove_container(cid)
        await h.bundle_removed(cid)
        await eventually(
            lambda: (
                h.metric("winspec_bundles_written_total", result="removed") >= removed_before + 1
            ),
            within=30,
            what="the removal to be counted",
        )
        assert not any(p.name.startswith((".tmp-", ".old-")) for p in h.root.iterdir())


async def test_swarm_service_with_secret_and_config(dockerd: DockerDaemon, tmp_path: Path) -> None:
    """A swarm task's bundle carries its secret and config payloads, their mounts and link map."""
    secret_name, config_name = _unique("secret"), _unique("config")
    secret_data, config_data = b"s3cr3t-\x00\xff-bytes", b"key=value\n"
    secret_id = dockerd.create_secret(secret_name, secret_data)
    config_id = dockerd.create_config(config_name, config_data)
    async with running(dockerd, tmp_path) as h:
        # Where the swarm mounts the secrets granted to winspec's own service.
        (h.secrets_dir / secret_name).write_bytes(secret_data)
        service_id = await asyncio.to_thread(
            dockerd.create_service,
            _unique("svc"),
            secrets=[(secret_name, "app-secret")],
            configs=[(config_name, "C:\\app\\app.conf")],
        )
        try:
            task = await asyncio.to_thread(dockerd.wait_for_task_container, service_id)
            cid = task["Status"]["ContainerStatus"]["ContainerID"]
            bundle = await h.bundle_written(cid)

            files = _files(bundle)
            assert _visible(files) == {
                "config.json",
                "links.json",
                f"secrets/{secret_id}",
                f"configs/{config_id}",
            }
            assert files[f"secrets/{secret_id}"].read_bytes() == secret_data
            assert files[f"configs/{config_id}"].read_bytes() == config_data
            _assert_owner_only(bundle)

            config = json.loads(files["config.json"].read_bytes())
            mounts = {m["destination"]: m for m in config["mounts"]}
            assert mounts[INTERNAL_SECRETS]["source"] == str(bundle / "secrets")
            assert mounts[INTERNAL_CONFIGS]["source"] == str(bundle / "configs")
            assert "ro" in mounts[INTERNAL_SECRETS]["options"]
            assert "ro" in mounts[INTERNAL_CONFIGS]["options"]
            destinations = [m["destination"] for m in config["mounts"]]
            assert destinations[-2:] == [INTERNAL_SECRETS, INTERNAL_CONFIGS]
            assert config["process"]["args"] == list(PAUSE_COMMAND)

            links = json.loads(files["links.json"].read_bytes())["links"]
            assert links == [
                {
                    "kind": "secret",
                    "target": "C:\\ProgramData\\Docker\\secrets\\app-secret",
                    "source": f"{INTERNAL_SECRETS}\\{secret_id}",
                },
                {
                    "kind": "config",
                    "target": "C:\\app\\app.conf",
                    "source": f"{INTERNAL_CONFIGS}\\{config_id}",
                },
            ]
            _validate(config)
        finally:
            await asyncio.to_thread(_remove_service_and_wait, dockerd, service_id)
            await h.bundle_removed(cid)


async def test_secret_not_granted_is_a_terminal_error(
    dockerd: DockerDaemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A task whose secret winspec was not granted gets no bundle but a terminal error."""
    # A terminal error for each reconcile (logged once), and the controller keeps working.
    secret_name = _unique("ungranted")
    dockerd.create_secret(secret_name, b"not for winspec")
    async with running(dockerd, tmp_path) as h:
        await h.settled()
        terminal_before = h.terminal_errors()
        service_id = await asyncio.to_thread(
            dockerd.create_service, _unique("svc"), secrets=[secret_name]
        )
        try:
            task = await asyncio.to_thread(dockerd.wait_for_task_container, service_id)
            cid = task["Status"]["ContainerStatus"]["ContainerID"]
            await eventually(
                lambda: h.terminal_errors() >= terminal_before + 1,
                within=30,
                what="the terminal reconcile error",
            )
            assert not h.bundle(cid).exists()
            assert any(
                getattr(r, "key", None) == cid
                and "is not granted to winspec" in str(getattr(r, "error", ""))
                for r in caplog.records
            )

            # The controller goes on: a plain container created afterwards gets its bundle.
            plain = await h.create_container(_unique("after-ungranted"))
            try:
                await h.bundle_written(plain)
            finally:
                await h.remove_container(plain)
            await h.settled()
            # The task's container is created and started: a reconcile per watched event (or
            # one, when the start folded into the waiting create), each refused and never
            # retried; logged at error level once.
            assert terminal_before + 1 <= h.terminal_errors() <= terminal_before + 2
            assert not h.bundle(cid).exists()
            logged = [
                r
                for r in caplog.records
                if getattr(r, "key", None) == cid and r.levelno == logging.ERROR
            ]
            assert len(logged) == 1
        finally:
            await asyncio.to_thread(_remove_service_and_wait, dockerd, service_id)


async def test_forged_task_label_gets_no_payloads_and_a_terminal_error(
    dockerd: DockerDaemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A container copying another task's swarm labels gets no bundle; the real task's does."""
    # Anyone who may create a container can write the labels; only the task knows its container.
    secret_name, secret_data = _unique("victim"), b"victim-secret"
    secret_id = dockerd.create_secret(secret_name, secret_data)
    async with running(dockerd, tmp_path) as h:
        (h.secrets_dir / secret_name).write_bytes(secret_data)
        await h.settled()
        terminal_before = h.terminal_errors()
        service_id = await asyncio.to_thread(
            dockerd.create_service, _unique("svc"), secrets=[secret_name]
        )
        forged = ""
        try:
            task = await asyncio.to_thread(dockerd.wait_for_task_container, service_id)
            genuine = task["Status"]["ContainerStatus"]["ContainerID"]
            bundle = await h.bundle_written(genuine)
            assert (bundle / "secrets" / secret_id).read_bytes() == secret_data

            labels = (await asyncio.to_thread(dockerd.inspect_container, genuine))["Config"][
                "Labels"
            ]
            assert labels["com.docker.swarm.task.id"] == task["ID"]
            forged = await h.create_container(_unique("forger"), Labels=labels)
            await eventually(
                lambda: h.terminal_errors() >= terminal_before + 1,
                within=30,
                what="the terminal reconcile error of the forged container",
            )
            await h.settled()
            assert not h.bundle(forged).exists()
            errors = [
                str(getattr(r, "error", ""))
                for r in caplog.records
                if getattr(r, "key", None) == forged and hasattr(r, "error")
            ]
            assert errors
            assert f"claims swarm task {task['ID']}" in errors[0]
            assert f"the task runs container '{genuine}'" in errors[0]
            # The genuine task's bundle is untouched and still carries its secret.
            assert (h.bundle(genuine) / "secrets" / secret_id).read_bytes() == secret_data
            assert all(
                secret_data not in p.read_bytes() for p in h.root.rglob("*") if forged in str(p)
            )
        finally:
            if forged:
                await h.remove_container(forged)
            await asyncio.to_thread(_remove_service_and_wait, dockerd, service_id)


async def test_a_linked_secret_is_a_terminal_error_and_never_copied(
    dockerd: DockerDaemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A granted secret that is a link to a file elsewhere: terminal error, no bundle, no copy."""
    secret_name = _unique("linked")
    dockerd.create_secret(secret_name, b"the real secret")
    outside = tmp_path / "shadow"
    outside.write_bytes(b"root:$6$planted-outside")
    async with running(dockerd, tmp_path) as h:
        (h.secrets_dir / secret_name).symlink_to(outside)
        await h.settled()
        terminal_before = h.terminal_errors()
        service_id = await asyncio.to_thread(
            dockerd.create_service, _unique("svc"), secrets=[secret_name]
        )
        try:
            task = await asyncio.to_thread(dockerd.wait_for_task_container, service_id)
            cid = task["Status"]["ContainerStatus"]["ContainerID"]
            await eventually(
                lambda: h.terminal_errors() >= terminal_before + 1,
                within=30,
                what="the terminal reconcile error",
            )
            await h.settled()
            assert not h.bundle(cid).exists()
            assert not any(
                b"planted-outside" in p.read_bytes() for p in h.root.rglob("*") if p.is_file()
            )
            assert any(
                getattr(r, "key", None) == cid
                and f"secret {secret_name!r}" in str(getattr(r, "error", ""))
                and "is a symbolic link" in str(getattr(r, "error", ""))
                for r in caplog.records
            )
        finally:
            await asyncio.to_thread(_remove_service_and_wait, dockerd, service_id)


async def test_refused_container_is_a_terminal_error_counted_once(
    dockerd: DockerDaemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A container S20 refuses (PidsLimit) gets no bundle and one terminal error, never retried."""
    # Docker accepts the container; the terminal error is never retried and the controller
    # continues.
    async with running(dockerd, tmp_path) as h:
        await h.settled()
        terminal_before = h.terminal_errors()
        errors_before = h.metric(
            "controller_runtime_reconcile_errors_total", controller=CONTROLLER_NAME
        )
        retries_before = h.metric("workqueue_retries_total", name=CONTROLLER_NAME)
        bad = await h.create_container(_unique("pids"), HostConfig={"PidsLimit": 100})
        try:
            await eventually(
                lambda: h.terminal_errors() >= terminal_before + 1,
                within=30,
                what="the terminal reconcile error",
            )
            refused = [
                r for r in caplog.records if getattr(r, "key", None) == bad and hasattr(r, "error")
            ]
            assert [getattr(r, "error", None) for r in refused] == [
                "invalid option: Windows does not support PidsLimit"
            ]

            good = await h.create_container(_unique("after-pids"))
            try:
                await h.bundle_written(good)
            finally:
                await h.remove_container(good)
            await h.settled()
            assert not h.bundle(bad).exists()
            assert h.terminal_errors() == terminal_before + 1
            assert (
                h.metric("controller_runtime_reconcile_errors_total", controller=CONTROLLER_NAME)
                == errors_before + 1
            )
            assert h.metric("workqueue_retries_total", name=CONTROLLER_NAME) == retries_before
        finally:
            await h.remove_container(bad)


async def test_update_the_rules_refuse_removes_the_stale_bundle(
    dockerd: DockerDaemon, tmp_path: Path
) -> None:
    """A docker update the rules refuse (S20 PidsLimit) removes the container's earlier bundle."""
    async with running(dockerd, tmp_path) as h:
        container = await h.create_container(_unique("stale"))
        try:
            await h.bundle_written(container)
            terminal_before = h.terminal_errors()
            await asyncio.to_thread(
                dockerd.call, "POST", f"/containers/{container}/update", {"PidsLimit": 100}
            )
            await h.bundle_removed(container)
            await eventually(
                lambda: h.terminal_errors() >= terminal_before + 1,
                within=30,
                what="the terminal reconcile error",
            )
            assert h.metric("winspec_bundles_written_total", result="removed") >= 1, (
                "the removal is counted"
            )
        finally:
            await h.remove_container(container)


@pytest.mark.timeout(300)
async def test_start_after_200_containers_relists_and_sweeps(
    dockerd: DockerDaemon, tmp_path: Path
) -> None:
    """Started after 200 containers exist, the controller writes all 200 bundles and sweeps."""
    # All 200 come from its first list; the sweep removes a bundle whose container is gone and a
    # leftover temporary directory.
    names = [_unique(f"relist{i:03d}") for i in range(200)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(dockerd.create_container, names))
    try:
        root = tmp_path / "bundles"
        dead = uuid.uuid4().hex + uuid.uuid4().hex
        (root / dead).mkdir(parents=True)
        (root / dead / "config.json").write_text("{}")
        leftover = root / f".tmp-{dead}-abc123"
        leftover.mkdir()
        (leftover / "config.json").write_text("{")

        async with running(dockerd, tmp_path) as h:
            # The leftover goes before anything else runs.
            assert not leftover.exists()
            await eventually(
                lambda: all((root / cid / "config.json").is_file() for cid in ids),
                within=180,
                interval=0.1,
                what="all 200 bundles",
            )
            await h.bundle_removed(dead)
            await h.settled()
            assert h.metric("winspec_bundles_written_total", result="written") >= 200
            assert h.metric("winspec_bundles_written_total", result="removed") >= 1
            assert not [
                p.name for p in root.iterdir() if p.name.startswith(".") and p.name != KEY_FILE
            ]
    finally:
        await asyncio.to_thread(_remove_all, dockerd, ids)


async def test_periodic_resync_restores_a_bundle_deleted_out_of_band(
    dockerd: DockerDaemon, tmp_path: Path
) -> None:
    """A bundle deleted behind the controller's back comes back at the next resync."""
    async with running(dockerd, tmp_path, resync_interval=0.5) as h:
        cid = await h.create_container(_unique("resync"))
        try:
            bundle = await h.bundle_written(cid)
            await h.settled()
            written = h.metric("winspec_bundles_written_total", result="written")
            # One rename takes the whole bundle away at once: deleting file by file could race
            # a resync that is rewriting it at that moment.
            gone = tmp_path / "deleted-bundle"
            bundle.rename(gone)
            shutil.rmtree(gone)
            await h.bundle_written(cid, within=15)
            await h.settled()
            # Written again, not found unchanged: no event came, so a resync put it back. (The
            # sync timestamp proves nothing here: a resync that ran just before the rename may
            # be the one whose queued key restores the bundle.)
            assert h.metric("winspec_bundles_written_total", result="written") == written + 1
        finally:
            await h.remove_container(cid)


def _damage_bundle(bundle: Path, kind: str) -> None:
    """Damage a written bundle on disk, its .digest untouched, with drift of ``kind``."""
    if kind == "modified":
        # A hand edit, saved the way an editor saves: a new file renamed over the old.
        edited = (bundle / "config.json").read_bytes().replace(b"{", b'{"edited": 1, ', 1)
        (bundle / "edit.tmp").write_bytes(edited)
        (bundle / "edit.tmp").rename(bundle / "config.json")
    elif kind == "missing":
        (bundle / "links.json").unlink()
    else:
        (bundle / "stray.json").write_bytes(b"{}")


@pytest.mark.parametrize("kind", ["modified", "missing", "extra"])
async def test_drift_is_repaired_at_start_up_and_at_resync(
    dockerd: DockerDaemon, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """A bundle damaged on disk is repaired at start-up and at resync, counted by kind, logged."""
    # Damaged (its .digest intact) first while winspec is stopped, then while it runs.
    cid = await asyncio.to_thread(dockerd.create_container, _unique(f"drift-{kind}"))
    try:
        async with running(dockerd, tmp_path) as h:
            bundle = await h.bundle_written(cid)
            await h.settled()
        intact = {name: path.read_bytes() for name, path in _files(bundle).items()}
        _damage_bundle(bundle, kind)
        caplog.set_level(logging.WARNING, logger="controller.reconcile")
        async with running(dockerd, tmp_path, resync_interval=0.5) as h:
            await h.settled()
            await eventually(
                lambda: h.metric("winspec_bundle_drift_total", kind=kind) >= 1,
                within=15,
                what="the drift at start-up to be counted",
            )
            assert {name: path.read_bytes() for name, path in _files(bundle).items()} == intact
            _damage_bundle(bundle, kind)
            await eventually(
                lambda: h.metric("winspec_bundle_drift_total", kind=kind) >= 2,
                within=15,
                what="the drift at resync to be counted",
            )
            await h.settled()
            assert {name: path.read_bytes() for name, path in _files(bundle).items()} == intact
            others = {"modified", "missing", "extra"} - {kind}
            assert all(h.metric("winspec_bundle_drift_total", kind=k) == 0 for k in others)
        repairs = [
            (getattr(r, "key", None), getattr(r, "drift", None))
            for r in caplog.records
            if r.getMessage().startswith("bundle drift repaired")
        ]
        assert repairs == [(cid, kind)] * 2
    finally:
        await asyncio.to_thread(dockerd.remove_container, cid)


async def test_idle_watchdog_restarts_the_stream_without_losing_events(
    dockerd: DockerDaemon, tmp_path: Path
) -> None:
    """A silent event stream is restarted by the watchdog and later creates still get bundles."""
    async with running(dockerd, tmp_path, idle_timeout=0.3) as h:
        await eventually(
            lambda: h.metric("winspec_watch_restarts_total", source="docker", reason="idle") >= 2,
            within=15,
            what="two idle restarts",
        )
        cid = await h.create_container(_unique("after-idle"))
        try:
            await h.bundle_written(cid, within=15)
        finally:
            await h.remove_container(cid)
        await h.bundle_removed(cid, within=15)


@pytest.mark.timeout(240)
async def test_engine_restart_reconnects_and_catches_up(
    fresh_dockerd: DockerDaemon, tmp_path: Path
) -> None:
    """After the engine restarts the controller reconnects, catches up and is ready again."""
    # The watch restart is counted; catching up covers containers created and removed since,
    # by us and by the swarm.
    engine = fresh_dockerd
    async with (
        running(engine, tmp_path) as h,
        aiohttp.ClientSession() as http,
    ):
        before = await h.create_container(_unique("before"))
        kept = await h.create_container(_unique("kept"))
        service_id = await asyncio.to_thread(engine.create_service, _unique("svc"))
        task = await asyncio.to_thread(engine.wait_for_task_container, service_id)
        old_task_container = task["Status"]["ContainerStatus"]["ContainerID"]
        for cid in (before, kept, old_task_container):
            await h.bundle_written(cid)
        await h.settled()
        restarts_before = h.metric("winspec_watch_restarts_total", source="docker")

        statuses: set[int] = set()

        async def watch_readyz() -> None:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{h.url}/readyz") as response:
                        statuses.add(response.status)
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch_readyz())
        try:
            await asyncio.to_thread(engine.restart)
            # Changes made as soon as the engine is back, whether the controller has
            # reconnected yet or not.
            after = await h.create_container(_unique("after"))
            await h.remove_container(before)

            await h.bundle_written(after, within=60)
            await h.bundle_removed(before, within=60)
            assert (h.bundle(kept) / "config.json").is_file()
            # The swarm replaces the service's task with a new container after the restart.
            replacement = await asyncio.to_thread(
                wait_for,
                lambda: _running_task_container(engine, service_id, not_id=old_task_container),
                60,
                what="the replacement task container",
            )
            await h.bundle_written(replacement, within=60)
            assert h.metric("winspec_watch_restarts_total", source="docker") > restarts_before
            await eventually(h.mode.health.is_ready, within=60, what="ready again")
            # While the engine was away /readyz said so; now it says ready again.
            assert 503 in statuses
            statuses.clear()
            await eventually(lambda: statuses == {200}, within=10, what="/readyz 200")
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await h.remove_container(after)
        await h.bundle_removed(after, within=30)


async def test_metrics_and_probes_over_http(dockerd: DockerDaemon, tmp_path: Path) -> None:
    """/metrics shows the reconciles, queue adds and written bundles; /healthz and /readyz 200."""
    async with running(dockerd, tmp_path) as h, aiohttp.ClientSession() as http:
        async with http.get(f"{h.url}/healthz") as response:
            assert response.status == 200

        async def readyz() -> int:
            async with http.get(f"{h.url}/readyz") as response:
                return response.status

        deadline = time.monotonic() + 30
        while await readyz() != 200:
            assert time.monotonic() < deadline, "/readyz never became 200"
            await asyncio.sleep(0.02)

        cid = await h.create_container(_unique("metrics"))
        try:
            await h.bundle_written(cid)
            await h.settled()
            async with http.get(f"{h.url}/metrics") as response:
                assert response.status == 200
                body = await response.text()
        finally:
            await h.remove_container(cid)

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }

    def value(name: str, /, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("controller_runtime_reconcile_total", controller=CONTROLLER_NAME, result="success")
    assert value("workqueue_adds_total", name=CONTROLLER_NAME) > 0
    assert value("winspec_bundles_written_total", result="written") > 0
    assert value("winspec_events_received_total", source="docker", type="create") > 0
    assert value("winspec_last_sync_timestamp_seconds", source="docker") > 0
    assert value("controller_runtime_max_concurrent_reconciles", controller=CONTROLLER_NAME) == 4


# -- `winspec run` as a process --------------------------------------------------------------


def test_unreachable_engine_exits_1_with_one_clear_line(tmp_path: Path) -> None:
    """`winspec run` with no engine warns at once, retries, then exits 1 with one clear line."""
    # The line names the endpoint, and there is no traceback. Before it, one warning at the
    # first failed attempt (the user who stops winspec during the retries sees that).
    host = "unix:///nonexistent/docker.sock"
    started = time.monotonic()
    proc = subprocess.run(
        winspec_run_command(
            "--docker-host",
            host,
            "--retry-attempts",
            "2",
            "--bundle-root",
            str(tmp_path / "bundles"),
            "--listen",
            "127.0.0.1:0",
        ),
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    elapsed = time.monotonic() - started

    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert elapsed < 10
    assert len(lines) == 2, proc.stderr
    warning = json.loads(lines[0])
    assert (warning["level"], warning["event"]) == (
        "warning",
        "cannot reach the Docker engine yet; retrying (no bundle is written until it answers)",
    )
    assert warning["docker_host"] == host
    assert lines[1].startswith("winspec: ")
    assert host in lines[1]
    assert "2 attempts" in lines[1]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_sigterm_stops_winspec_run_gracefully(dockerd: DockerDaemon, tmp_path: Path) -> None:
    """`winspec run` against a live engine becomes ready, and on SIGTERM exits 0 in time."""
    port = free_port()
    log = tmp_path / "winspec.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            winspec_run_command(
                "--docker-host",
                dockerd.host,
                "--bundle-root",
                str(tmp_path / "bundles"),
                "--secrets-dir",
                str(tmp_path / "secrets"),
                "--listen",
                f"127.0.0.1:{port}",
                "--log-format",
                "console",
                "--shutdown-timeout",
                "5",
            ),
            cwd=REPO,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while http_status(f"http://127.0.0.1:{port}/readyz") != 200:
            assert proc.poll() is None, f"winspec run exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"never ready:\n{log.read_text()}"
            time.sleep(0.05)
        assert http_status(f"http://127.0.0.1:{port}/healthz") == 200

        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=15)
        took = time.monotonic() - stopping
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert returncode == 0, output
    assert took < 10
    assert "shutting down" in output
    assert "stopped" in output
    assert "Traceback" not in output
    assert http_status(f"http://127.0.0.1:{port}/healthz") is None
