"""Hostile-input corpus of the Docker adapter: traversal in every id and name the resolver puts
into an Engine API path, and links and special files in ``--secrets-dir``.

The path cases run against a scripted engine over real HTTP with a negotiated API version, so
the recorded request paths show whether anything left the version prefix. The secrets cases
plant real links, FIFOs, directories, sockets and (when allowed) devices in a temporary
directory.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from adapters.docker.client import DockerClient
from adapters.docker.paths import IdKind, api_path, check_path, is_valid
from adapters.docker.resolver import DockerRequestResolver
from adapters.docker.secrets import (
    MAX_SECRET_BYTES,
    read_secret,
    windows_link_allowed,
)
from adapters.retry import RetryPolicy
from controller.errors import PermanentError
from controller.models import NodeFacts
from tests.unit.docker.scripted import ScriptedEngine, answer_json
from tests.unit.docker.test_resolver import (
    CID,
    CONFIG_ID,
    IMAGE_ID,
    SECRET_ID,
    TASK_ID,
    config_doc,
    container_doc,
    image_doc,
    task_doc,
)

API = "/v1.41"
TRAVERSALS = [
    "../secrets",
    "..",
    ".",
    "",
    "../../../v1.41/secrets",
    "%2e%2e",
    "..%2fsecrets",
    "a/../../secrets",
    "x/..",
    "abc?x=1",
    "abc#frag",
    "abc\x00",
    "abc\n",
    "C:\\Windows\\secrets",
    "a" * 25 + "/",
    "/" + "a" * 24,
]
SECRET_NAMES = ["../shadow", "..", ".", "", "a/b", "a\\b", "a\x00b", "/etc/shadow", "x" * 65, "-a"]


# -- paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(IdKind))
@pytest.mark.parametrize("value", TRAVERSALS)
def test_no_traversal_fits_any_id_grammar(kind: IdKind, value: str) -> None:
    """No traversal, separator, query or control character fits the grammar of any kind of id."""
    assert not is_valid(kind, value)
    with pytest.raises(PermanentError, match=f"invalid {kind.value}"):
        api_path("things", kind, value)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (IdKind.TASK, TASK_ID),
        (IdKind.CONTAINER, CID),
        (IdKind.CONTAINER, "web.1.x"),
        (IdKind.CONTAINER, "c" * 12),
        (IdKind.IMAGE, IMAGE_ID),
        (IdKind.IMAGE, "registry.example:5000/team/app:1.0"),
        (IdKind.IMAGE, "app@sha256:" + "a" * 64),
        (IdKind.NETWORK, "my_net-1.a"),
    ],
)
def test_real_ids_and_names_fit_and_are_quoted_into_one_segment(kind: IdKind, value: str) -> None:
    """Docker's real ids and names fit their grammar and become exactly one quoted segment."""
    path = api_path("things", kind, value, "json")
    assert check_path(path) == path
    assert len(path.split("/")) == 4


@pytest.mark.parametrize(
    "path",
    ["/a/../b", "/a/./b", "//a", "/a//b", "/a?b", "/a#b", "a", "/a/%2e%2e/b", "/a/%2E.", "/"],
)
def test_the_client_refuses_paths_that_could_leave_the_prefix(path: str) -> None:
    """check_path refuses dot segments (quoted or not), empty segments, queries and fragments."""
    with pytest.raises(PermanentError, match="refused Engine API path"):
        check_path(path)


@asynccontextmanager
async def negotiated(
    engine: ScriptedEngine, tmp_path: Path
) -> AsyncIterator[DockerRequestResolver]:
    """A resolver whose client has negotiated API 1.41 with the scripted engine."""
    engine.on("/version", answer_json({"ApiVersion": "1.41"}))
    async with DockerClient(
        engine.host, env={}, retry=RetryPolicy(attempts=2, initial=0.01, maximum=0.02)
    ) as client:
        await client.negotiate()
        yield DockerRequestResolver(
            client,
            node=NodeFacts(daemon_root=str(tmp_path / "docker")),
            bundle_root=str(tmp_path / "bundles"),
            secrets_dir=tmp_path / "secrets",
        )


def _script(engine: ScriptedEngine, doc: dict[str, Any], task: dict[str, Any] | None) -> None:
    engine.on(f"{API}/containers/{CID}/json", answer_json(doc))
    engine.on(f"{API}/images/{IMAGE_ID}/json", answer_json(image_doc()))
    if task is not None:
        engine.on(f"{API}/tasks/{TASK_ID}", answer_json(task))
    engine.on(f"{API}/configs/{CONFIG_ID}", answer_json(config_doc(CONFIG_ID, "e30=")))


def _hostile_documents(value: str) -> dict[str, tuple[dict[str, Any], dict[str, Any] | None]]:
    """Container and task documents with ``value`` in each id or name the resolver requests."""
    task_label = container_doc(task=TASK_ID)
    task_label["Config"]["Labels"]["com.docker.swarm.task.id"] = value
    image = container_doc(image=value)
    shared = container_doc(network_mode=f"container:{value}")
    credspec = container_doc(security_opt=[f"credentialspec=config://{value}"], task=TASK_ID)
    config = task_doc()
    config["Spec"]["ContainerSpec"]["Configs"][0]["ConfigID"] = value
    secret = task_doc()
    secret["Spec"]["ContainerSpec"]["Secrets"][0]["SecretID"] = value
    secret_name = task_doc()
    secret_name["Spec"]["ContainerSpec"]["Secrets"][0]["SecretName"] = value
    plain_task = task_doc()
    plain_task["Spec"]["ContainerSpec"] = {}
    return {
        "task label": (task_label, task_doc()),
        "image id": (image, None),
        "shared network container": (shared, None),
        "config:// credential spec": (credspec, plain_task),
        "task config id": (container_doc(task=TASK_ID), config),
        "task secret id": (container_doc(task=TASK_ID), secret),
        "task secret name": (container_doc(task=TASK_ID), secret_name),
    }


PLACES = list(_hostile_documents("x"))


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("value", ["../secrets", "../../../secrets", "..", "a/../../x", "%2e%2e"])
async def test_traversal_in_any_id_is_permanent_and_never_leaves_the_prefix(
    engine: ScriptedEngine, tmp_path: Path, place: str, value: str
) -> None:
    """Traversal in any id or name the resolver uses is a PermanentError; no path leaves /v1.41."""
    doc, task = _hostile_documents(value)[place]
    _script(engine, doc, task)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "db-password").write_bytes(b"pw")
    async with negotiated(engine, tmp_path) as resolver:
        with pytest.raises(PermanentError):
            await resolver.resolve(CID)
    assert engine.seen[0] == "/version"
    assert engine.seen[1:], "the container was inspected"
    for path in engine.seen[1:]:
        assert path.startswith(f"{API}/"), path
        assert "/secrets" not in path, path
        assert ".." not in path, path


async def test_a_task_label_of_dot_dot_secrets_asks_for_no_secret_list(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """The issue's example: task id ``../secrets`` is refused; GET /v1.41/secrets never happens."""
    doc = container_doc(task="../secrets")
    _script(engine, doc, None)
    engine.on(f"{API}/secrets", answer_json([{"ID": SECRET_ID}]))
    async with negotiated(engine, tmp_path) as resolver:
        with pytest.raises(PermanentError, match=r"invalid swarm task id '\.\./secrets'"):
            await resolver.resolve(CID)
    assert engine.hits(f"{API}/secrets") == 0


# -- secrets directory ------------------------------------------------------------------------


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    """An empty secrets directory, and an outside file a link could point at."""
    directory = tmp_path / "secrets"
    directory.mkdir()
    (tmp_path / "shadow").write_bytes(b"root:$6$outside")
    return directory


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_unusable_secret_names_are_refused_before_they_become_paths(
    secrets_dir: Path, name: str
) -> None:
    """A secret name with a separator, dot segment, NUL, or outside the grammar is refused."""
    with pytest.raises(PermanentError, match="unusable name"):
        read_secret(str(secrets_dir), name, SECRET_ID)


def test_a_link_to_an_outside_file_is_refused(secrets_dir: Path) -> None:
    """A secret that is a link to a file elsewhere (the issue's /etc/shadow) is refused, named."""
    (secrets_dir / "db").symlink_to(secrets_dir.parent / "shadow")
    with pytest.raises(PermanentError, match=r"secret 'db' .* is a symbolic link to .*shadow"):
        read_secret(str(secrets_dir), "db", SECRET_ID)


def test_a_link_to_a_device_is_refused(secrets_dir: Path) -> None:
    """A secret that is a link to /dev/null (a device) is refused as a link."""
    (secrets_dir / "db").symlink_to("/dev/null")
    with pytest.raises(PermanentError, match="is a symbolic link to '/dev/null'"):
        read_secret(str(secrets_dir), "db", SECRET_ID)


def test_a_dangling_link_is_refused_as_a_link(secrets_dir: Path) -> None:
    """A link to nothing is refused as a link, not reported as a secret that is not granted."""
    (secrets_dir / "db").symlink_to(secrets_dir / "nowhere")
    with pytest.raises(PermanentError, match="is a symbolic link"):
        read_secret(str(secrets_dir), "db", SECRET_ID)


@pytest.mark.timeout(10)
def test_a_fifo_is_refused_without_blocking(secrets_dir: Path) -> None:
    """A FIFO with no writer is refused at once (opened non-blocking), never read."""
    os.mkfifo(secrets_dir / "db")
    with pytest.raises(PermanentError, match=r"secret 'db' .* is a FIFO, not a regular file"):
        read_secret(str(secrets_dir), "db", SECRET_ID)


def test_a_directory_is_refused(secrets_dir: Path) -> None:
    """A directory where a secret should be is refused, named."""
    (secrets_dir / "db").mkdir()
    with pytest.raises(PermanentError, match="is a directory, not a regular file"):
        read_secret(str(secrets_dir), "db", SECRET_ID)


def test_a_socket_is_refused(secrets_dir: Path) -> None:
    """A unix socket where a secret should be is refused as a special file."""
    path = secrets_dir / "db"
    if len(str(path)) > 100:
        pytest.skip("the temporary path is too long for a unix socket")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(PermanentError, match="special file"):
            read_secret(str(secrets_dir), "db", SECRET_ID)


def test_a_device_node_is_refused(secrets_dir: Path) -> None:
    """A character device (like /dev/null) planted in the directory is refused, named."""
    try:
        os.mknod(secrets_dir / "db", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating device nodes is not allowed here (not root, or no CAP_MKNOD)")
    with pytest.raises(PermanentError, match="is a character device, not a regular file"):
        read_secret(str(secrets_dir), "db", SECRET_ID)


def test_an_oversized_secret_is_refused(secrets_dir: Path) -> None:
    """A file larger than a swarm secret can be is refused, with both sizes named."""
    (secrets_dir / "db").write_bytes(b"x" * (MAX_SECRET_BYTES + 1))
    with pytest.raises(PermanentError, match=f"{MAX_SECRET_BYTES + 1} bytes, more than"):
        read_secret(str(secrets_dir), "db", SECRET_ID)


def test_a_regular_secret_is_read(secrets_dir: Path) -> None:
    """A plain regular file is read whole, bytes as they are."""
    (secrets_dir / "db").write_bytes(b"\x00pw\xff")
    assert read_secret(str(secrets_dir), "db", SECRET_ID) == b"\x00pw\xff"


def test_an_allowed_link_is_followed_once_to_a_regular_file(secrets_dir: Path) -> None:
    """A link the rule allows (Docker's own on Windows) is read; its target must be regular."""
    internal = secrets_dir.parent / "internal"
    internal.mkdir()
    (internal / SECRET_ID).write_bytes(b"granted")
    (secrets_dir / "db").symlink_to(internal / SECRET_ID)
    allowed = str(internal / SECRET_ID)
    assert read_secret(str(secrets_dir), "db", SECRET_ID, link_allowed=allowed.__eq__) == b"granted"

    os.mkfifo(internal / "fifo")
    (secrets_dir / "other").symlink_to(internal / "fifo")
    with pytest.raises(PermanentError, match="is a FIFO"):
        read_secret(str(secrets_dir), "other", SECRET_ID, link_allowed=lambda _t: True)

    (internal / "hop").symlink_to(secrets_dir.parent / "shadow")
    (secrets_dir / "chain").symlink_to(internal / "hop")
    with pytest.raises(PermanentError, match="itself a link"):
        read_secret(str(secrets_dir), "chain", SECRET_ID, link_allowed=lambda _t: True)


async def test_the_resolver_refuses_a_linked_secret_and_writes_nothing(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """Through the resolver, a granted secret that is a link is a PermanentError naming it."""
    _script(engine, container_doc(task=TASK_ID), task_doc())
    (tmp_path / "secrets").mkdir()
    (tmp_path / "shadow").write_bytes(b"outside")
    (tmp_path / "secrets" / "db-password").symlink_to(tmp_path / "shadow")
    async with negotiated(engine, tmp_path) as resolver:
        with pytest.raises(PermanentError, match=r"'db-password' .* is a symbolic link"):
            await resolver.resolve(CID)


WINDOWS_LINK_CASES = [
    ("C:\\ProgramData\\Docker\\internal\\secrets\\" + SECRET_ID, None, True),
    ("c:\\programdata\\docker\\INTERNAL\\Secrets\\" + SECRET_ID, None, True),
    ("\\\\?\\C:\\ProgramData\\Docker\\internal\\secrets\\" + SECRET_ID, None, True),
    ("D:\\docker\\internal\\secrets\\" + SECRET_ID, "D:\\docker", True),
    ("D:\\docker\\internal\\secrets\\" + SECRET_ID, None, False),
    ("C:\\ProgramData\\Docker\\internal\\secrets\\" + "x" * 25, None, False),
    ("C:\\ProgramData\\Docker\\internal\\secrets", None, False),
    ("C:\\ProgramData\\Docker\\internal\\secrets\\..\\..\\secrets\\" + SECRET_ID, None, False),
    ("C:\\ProgramData\\Docker\\internal\\secrets\\sub\\..\\" + SECRET_ID, None, False),
    ("C:\\Windows\\System32\\config\\SAM", None, False),
    ("internal\\secrets\\" + SECRET_ID, None, False),
    ("\\ProgramData\\Docker\\internal\\secrets\\" + SECRET_ID, None, False),
    ("\\\\server\\share\\internal\\secrets\\" + SECRET_ID, "\\\\server\\share", True),
    ("C:\\ProgramData\\Docker\\internal\\secrets\\" + SECRET_ID + "\x00", None, False),
]


@pytest.mark.parametrize(("target", "daemon_root", "allowed"), WINDOWS_LINK_CASES)
def test_windows_link_rule(target: str, daemon_root: str | None, allowed: bool) -> None:
    """Only a link to exactly <internal secrets>\\<this secret's id> is Docker's own."""
    assert windows_link_allowed(target, secret_id=SECRET_ID, daemon_root=daemon_root) is allowed


# -- layerchain.json ----------------------------------------------------------------------------


def _plant_link(rw: Path, outside: Path) -> None:
    (rw / "layerchain.json").symlink_to(outside)


def _plant_fifo(rw: Path, _outside: Path) -> None:
    os.mkfifo(rw / "layerchain.json")


def _plant_dir(rw: Path, _outside: Path) -> None:
    (rw / "layerchain.json").mkdir()


def _plant_deep(rw: Path, _outside: Path) -> None:
    (rw / "layerchain.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)


def _plant_huge(rw: Path, _outside: Path) -> None:
    (rw / "layerchain.json").write_bytes(b" " * (1024 * 1024 + 1))


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("plant", "message"),
    [
        (_plant_link, "is a symbolic link"),
        (_plant_fifo, "is a FIFO"),
        (_plant_dir, "is a directory"),
        (_plant_deep, "cannot read layer chain"),
        (_plant_huge, "more than the 1048576 allowed"),
    ],
    ids=["link", "fifo", "directory", "deep", "huge"],
)
async def test_a_hostile_layerchain_is_a_permanent_error(
    engine: ScriptedEngine, tmp_path: Path, plant: Any, message: str
) -> None:
    """layerchain.json that is a link, FIFO, directory, too deep or too big: PermanentError."""
    rw = tmp_path / "rw"
    rw.mkdir()
    outside = tmp_path / "outside.json"
    outside.write_text('["C:\\\\outside"]')
    plant(rw, outside)
    doc = container_doc(driver={"Name": "windowsfilter", "Data": {"dir": str(rw)}})
    _script(engine, doc, None)
    async with negotiated(engine, tmp_path) as resolver:
        with pytest.raises(PermanentError, match=message):
            await resolver.resolve(CID)


async def test_a_nul_in_the_layer_directory_is_a_permanent_error(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A layer directory with a NUL byte (from the inspect) is a PermanentError, not ValueError."""
    doc = container_doc(driver={"Name": "windowsfilter", "Data": {"dir": "C:\\x\x00y"}})
    _script(engine, doc, None)
    async with negotiated(engine, tmp_path) as resolver:
        with pytest.raises(PermanentError, match="invalid path"):
            await resolver.resolve(CID)


@pytest.mark.parametrize("key", ["../secrets", "..", "", "a/b", "x?all=1"])
async def test_a_hostile_key_is_refused_before_any_request(
    engine: ScriptedEngine, tmp_path: Path, key: str
) -> None:
    """A queue key that is no container id or name is a PermanentError; nothing is requested."""
    async with negotiated(engine, tmp_path) as resolver:
        with pytest.raises(PermanentError, match="invalid container id or name"):
            await resolver.resolve(key)
    assert engine.seen == ["/version"]


async def test_an_inspect_naming_an_invalid_id_is_refused(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """A container inspect whose Id is not 64 hex digits (a hostile engine) is refused."""
    doc = container_doc()
    doc["Id"] = "../../escape"
    _script(engine, doc, None)
    async with negotiated(engine, tmp_path) as resolver:
        with pytest.raises(PermanentError, match="has an invalid id"):
            await resolver.resolve(CID)
