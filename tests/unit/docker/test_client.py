"""Tests of the Docker Engine API client against a real local HTTP server (no mocks).

The server (tests/unit/docker/scripted.py) is aiohttp's, on 127.0.0.1 (any free port) or a
unix socket in a temporary directory; each test scripts the answers of the routes it needs and
reads back what the client asked for.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from adapters.docker.client import (
    DEFAULT_NPIPE_HOST,
    DEFAULT_UNIX_HOST,
    DockerAPIError,
    DockerClient,
    Endpoint,
    NotSwarmManagerError,
    default_host,
    parse_host,
    tls_context,
)
from adapters.retry import RetryPolicy
from controller.errors import NotFoundError, PermanentError, TransientError
from tests.unit.docker.scripted import ScriptedEngine, answer_json

FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.05)


def client_for(
    engine: ScriptedEngine,
    *,
    retry: RetryPolicy = FAST,
    on_retry: Callable[[str], None] | None = None,
) -> DockerClient:
    """A client for the scripted engine with no TLS settings from the environment."""
    return DockerClient(engine.host, env={}, retry=retry, on_retry=on_retry, timeout=5.0)


# -- version negotiation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "chosen"),
    [("1.43", "1.41"), ("1.41", "1.41"), ("1.30", "1.30"), ("1.24", "1.24")],
)
async def test_negotiate_picks_the_older_of_server_and_client(
    engine: ScriptedEngine, server: str, chosen: str
) -> None:
    """negotiate() speaks min(server version, 1.41) and prefixes later paths with it."""
    engine.on("/version", answer_json({"ApiVersion": server}))
    engine.on(f"/v{chosen}/info", answer_json({"OSType": "windows"}))

    async with client_for(engine) as client:
        assert await client.negotiate() == chosen
        assert client.api_version == chosen
        assert await client.get_json("/info", api="version") == {"OSType": "windows"}

    assert engine.seen == ["/version", f"/v{chosen}/info"]


async def test_negotiate_refuses_an_engine_older_than_1_24(engine: ScriptedEngine) -> None:
    """An engine speaking API 1.23 is refused with a PermanentError naming the version."""
    engine.on("/version", answer_json({"ApiVersion": "1.23"}))

    async with client_for(engine) as client:
        with pytest.raises(PermanentError, match=r"1\.23 is older than the minimum 1\.24"):
            await client.negotiate()


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (None, PermanentError, "did not answer GET /version like a Docker engine"),
        (["1.41"], PermanentError, "did not answer GET /version like a Docker engine"),
        ({"ApiVersion": 1.41}, PermanentError, "did not answer GET /version like a Docker engine"),
        ({"ApiVersion": "latest"}, PermanentError, "reports API version 'latest'"),
        ({"ApiVersion": "1"}, PermanentError, "reports API version '1'"),
    ],
)
async def test_negotiate_refuses_an_answer_that_is_not_a_version(
    engine: ScriptedEngine, body: object, error: type[Exception], message: str
) -> None:
    """A /version body without a MAJOR.MINOR ApiVersion is a PermanentError naming the endpoint."""
    # Also when the body is not an object; never an AttributeError or ValueError.
    engine.on("/version", answer_json(body))

    async with client_for(engine) as client:
        with pytest.raises(error, match=message) as caught:
            await client.negotiate()
    assert engine.host in str(caught.value)
    assert client.api_version is None


async def test_negotiate_over_a_unix_socket(unix_engine: ScriptedEngine) -> None:
    """The client reaches an engine on a unix:// socket and negotiates there too."""
    unix_engine.on("/version", answer_json({"ApiVersion": "1.41"}))
    unix_engine.on("/v1.41/containers/json", answer_json([{"Id": "a" * 64}]))

    async with client_for(unix_engine) as client:
        await client.negotiate()
        listed = await client.get_json("/containers/json", api="container_list")

    assert listed == [{"Id": "a" * 64}]


# -- error mapping -------------------------------------------------------------------------


async def test_404_raises_not_found_with_the_engine_message(engine: ScriptedEngine) -> None:
    """A 404 raises NotFoundError carrying the engine's message, without retrying."""
    engine.on("/containers/x/json", answer_json({"message": "No such container: x"}, 404))

    async with client_for(engine) as client:
        with pytest.raises(NotFoundError, match="No such container: x"):
            await client.get_json("/containers/x/json", api="container_inspect")

    assert engine.hits("/containers/x/json") == 1


async def test_400_raises_a_permanent_docker_api_error(engine: ScriptedEngine) -> None:
    """A 400 raises DockerAPIError, a PermanentError, with status and message, not retried."""
    engine.on("/containers/create", answer_json({"message": "bad parameter"}, 400))

    async with client_for(engine) as client:
        with pytest.raises(DockerAPIError, match="HTTP 400 bad parameter") as caught:
            await client.request_json("POST", "/containers/create", api="create", body={})

    assert isinstance(caught.value, PermanentError)
    assert engine.hits("/containers/create") == 1


async def test_503_twice_then_200_succeeds_after_two_retries(engine: ScriptedEngine) -> None:
    """Two 503s then a 200: the call succeeds and on_retry was called twice with the API name."""
    unavailable = answer_json({"message": "busy"}, 503)
    engine.on("/info", unavailable, unavailable, answer_json({"ID": "node"}))
    retried: list[str] = []

    async with client_for(engine, on_retry=retried.append) as client:
        assert await client.get_json("/info", api="version") == {"ID": "node"}

    assert retried == ["version", "version"]
    assert engine.hits("/info") == 3


async def test_429_retry_after_is_honoured(engine: ScriptedEngine) -> None:
    """A 429 with Retry-After: 0.1 makes the client wait at least 0.1 s before retrying."""
    engine.on(
        "/info",
        answer_json({"message": "slow down"}, 429, headers={"Retry-After": "0.1"}),
        answer_json({"ID": "node"}),
    )

    async with client_for(engine) as client:
        started = time.monotonic()
        assert await client.get_json("/info", api="version") == {"ID": "node"}
        elapsed = time.monotonic() - started

    assert elapsed >= 0.1
    assert engine.hits("/info") == 2


async def test_persistent_500_gives_up_with_a_chained_transient_error(
    engine: ScriptedEngine,
) -> None:
    """A 500 on every attempt raises TransientError after `attempts` tries, chained to the cause."""
    engine.on("/info", answer_json({"message": "boom"}, 500))
    retried: list[str] = []

    async with client_for(engine, on_retry=retried.append) as client:
        with pytest.raises(TransientError, match="gave up after 3 attempts") as caught:
            await client.get_json("/info", api="version")

    assert engine.hits("/info") == FAST.attempts
    assert len(retried) == FAST.attempts - 1
    assert engine.host.removeprefix("tcp://") in str(caught.value)
    cause = caught.value.__cause__
    assert isinstance(cause, TransientError)
    assert "HTTP 500 boom" in str(cause)


@pytest.mark.parametrize(
    "message",
    [
        "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster "
        "state. Please run this command on a manager node or promote the current node to a "
        "manager.",
        'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to '
        "connect this node to swarm and try again.",
    ],
)
async def test_503_not_a_swarm_manager_is_permanent_and_not_retried(
    engine: ScriptedEngine, message: str
) -> None:
    """A 503 saying "not a swarm manager" raises NotSwarmManagerError at once, naming the engine."""
    engine.on("/tasks/t1", answer_json({"message": message}, 503))
    retried: list[str] = []

    async with client_for(engine, on_retry=retried.append) as client:
        with pytest.raises(NotSwarmManagerError) as caught:
            await client.get_raw("/tasks/t1", api="task_inspect")

    assert isinstance(caught.value, PermanentError)
    assert str(caught.value) == f"Docker engine at {engine.host}: GET /tasks/t1: HTTP 503 {message}"
    assert engine.hits("/tasks/t1") == 1
    assert retried == []


async def test_connection_refused_is_transient() -> None:
    """A TCP port nobody listens on raises TransientError, not an aiohttp error."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The port is free again and nobody listens on it.
    client = DockerClient(f"tcp://127.0.0.1:{port}", env={}, retry=FAST, timeout=2.0)
    async with client:
        with pytest.raises(TransientError, match="connection failed") as caught:
            await client.get_json("/version", api="version", versioned=False)

    assert caught.value.__cause__ is not None


async def test_missing_unix_socket_is_transient(tmp_path: Path) -> None:
    """A unix socket that does not exist raises TransientError naming the endpoint."""
    host = f"unix://{tmp_path}/absent.sock"
    async with DockerClient(host, env={}, retry=FAST) as client:
        with pytest.raises(TransientError, match=f"Docker engine at {host}"):
            await client.negotiate()


async def test_invalid_json_is_transient(engine: ScriptedEngine) -> None:
    """A 200 whose body is not JSON raises TransientError (a truncated answer may pass)."""
    engine.on("/info", lambda _r: web.Response(text="{not json", content_type="application/json"))

    async with client_for(engine) as client:
        with pytest.raises(TransientError, match="invalid JSON"):
            await client.get_json("/info", api="version")


async def test_client_used_before_open_is_a_programming_error(engine: ScriptedEngine) -> None:
    """Calling the API before open() raises RuntimeError, not a remote-call error."""
    client = client_for(engine)
    with pytest.raises(RuntimeError, match="before open"):
        await client.get_json("/info", api="version")


# -- the event stream ----------------------------------------------------------------------


async def test_events_yields_a_marker_then_decoded_events(engine: ScriptedEngine) -> None:
    """events() yields {} once the stream is open, then each JSON line, skipping junk lines."""
    lines = [
        {"Type": "container", "Action": "create", "Actor": {"ID": "a" * 64}, "time": 1},
        {"Type": "container", "Action": "destroy", "Actor": {"ID": "b" * 64}, "time": 2},
    ]
    body = (json.dumps(lines[0]) + "\n\nnot json\n" + json.dumps(lines[1]) + "\n").encode()
    received_query: dict[str, str] = {}

    def stream(request: web.Request) -> web.StreamResponse:
        received_query.update(request.query)
        return web.Response(body=body, content_type="application/json")

    engine.on("/events", stream)
    filters = {"type": ["container"], "event": ["create", "destroy"]}

    async with client_for(engine) as client:
        got = [event async for event in client.events(filters=filters, since="5")]

    assert got == [{}, *lines]
    assert json.loads(received_query["filters"]) == filters
    assert received_query["since"] == "5"


async def test_events_error_status_is_transient(engine: ScriptedEngine) -> None:
    """An /events answer other than 200 raises TransientError with the status."""
    engine.on("/events", answer_json({"message": "nope"}, 500))

    async with client_for(engine) as client:
        with pytest.raises(TransientError, match="HTTP 500 nope"):
            await anext(client.events(filters={}))


# -- endpoints and TLS ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:///var/run/docker.sock", Endpoint("unix", "/var/run/docker.sock")),
        ("unix:///tmp/d/docker.sock", Endpoint("unix", "/tmp/d/docker.sock")),
        ("npipe:////./pipe/docker_engine", Endpoint("npipe", r"\\.\pipe\docker_engine")),
        ("npipe:////./pipe/other", Endpoint("npipe", r"\\.\pipe\other")),
        ("tcp://10.0.0.5:2376", Endpoint("tcp", "10.0.0.5:2376")),
        ("tcp://docker.example:2375", Endpoint("tcp", "docker.example:2375")),
        ("http://127.0.0.1:9999", Endpoint("tcp", "127.0.0.1:9999")),
        ("tcp://[::1]:2376", Endpoint("tcp", "[::1]:2376")),
    ],
)
def test_parse_host_accepts_docker_host_forms(text: str, expected: Endpoint) -> None:
    """parse_host understands the unix://, npipe:// and tcp:// forms DOCKER_HOST takes."""
    endpoint = parse_host(text)
    assert endpoint == expected
    if expected.scheme != "npipe":
        assert endpoint.display.removeprefix("tcp://") in text


def test_parse_host_tcp_default_port_follows_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    """tcp:// without a port means 2375, or 2376 when DOCKER_TLS_VERIFY is set."""
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    assert parse_host("tcp://docker.example") == Endpoint("tcp", "docker.example:2375")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    assert parse_host("tcp://docker.example") == Endpoint("tcp", "docker.example:2376")


def test_parse_host_defaults_to_the_platform_endpoint() -> None:
    """No host at all means the platform's default endpoint."""
    assert default_host() in (DEFAULT_UNIX_HOST, DEFAULT_NPIPE_HOST)
    assert parse_host(None) == parse_host(default_host())
    assert parse_host("").display == default_host()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ftp://docker.example", "expected unix://, npipe:// or tcp://"),
        ("/var/run/docker.sock", "expected unix://, npipe:// or tcp://"),
        ("unix://", "no socket path"),
        ("tcp://:2375", "no host name"),
        ("npipe://pipe/docker_engine", "expected npipe:////./pipe/NAME"),
        ("tcp://docker.example:abc", "the port must be a number from 1 to 65535"),
        ("tcp://docker.example:65536", "the port must be a number from 1 to 65535"),
        ("tcp://docker.example:0", "the port must be a number from 1 to 65535"),
        ("tcp://docker.example:", "the port must be a number from 1 to 65535"),
    ],
)
def test_parse_host_refuses_bad_values(text: str, reason: str) -> None:
    """A malformed Docker host is a PermanentError that quotes the value and says why."""
    with pytest.raises(PermanentError, match=reason) as caught:
        parse_host(text)
    assert repr(text) in str(caught.value)


async def test_npipe_on_linux_is_refused_at_open() -> None:
    """Opening a client for a named pipe off Windows is a PermanentError, not a crash."""
    client = DockerClient(DEFAULT_NPIPE_HOST, env={})
    with pytest.raises(PermanentError, match="not Windows"):
        await client.open()
    await client.close()


@pytest.mark.parametrize("env", [{}, {"DOCKER_TLS_VERIFY": ""}, {"DOCKER_TLS_VERIFY": "0"}])
def test_tls_context_is_none_without_tls_settings(env: dict[str, str]) -> None:
    """Without DOCKER_TLS_VERIFY (or with it empty or 0) and no cert path there is no TLS."""
    assert tls_context(env) is None


async def test_missing_tls_files_are_a_permanent_error_at_open(tmp_path: Path) -> None:
    """Missing or unusable TLS files are a PermanentError naming the file when the client opens."""
    # DOCKER_TLS_VERIFY=1 with no (or an unusable) ca.pem in DOCKER_CERT_PATH; not a
    # FileNotFoundError.
    env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)}
    client = DockerClient("tcp://127.0.0.1:2376", env=env)
    with pytest.raises(PermanentError, match="cannot load the CA certificate") as caught:
        await client.open()
    assert str(tmp_path / "ca.pem") in str(caught.value)
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(PermanentError, match="cannot load the CA certificate"):
        await client.open()
    await client.close()


def test_tls_context_with_cert_path_but_no_verify_skips_verification(tmp_path: Path) -> None:
    """DOCKER_CERT_PATH without DOCKER_TLS_VERIFY gives TLS that does not verify the server."""
    ctx = tls_context({"DOCKER_CERT_PATH": str(tmp_path)})
    assert ctx is not None
    assert ctx.check_hostname is False


async def test_a_slow_answer_times_out_as_transient(engine: ScriptedEngine) -> None:
    """An answer slower than the client's timeout is a TransientError after the attempts."""

    async def slow(_request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.5)
        return web.json_response({})

    engine.on("/info", slow)
    client = DockerClient(
        engine.host, env={}, retry=RetryPolicy(attempts=2, initial=0.01), timeout=0.1
    )
    async with client:
        with pytest.raises(TransientError, match="timed out"):
            await client.get_json("/info", api="version")
