"""winspec agent over real HTTPS on loopback, tokens checked by a real kube-apiserver.

The agent runs as a child process with a certificate the test makes, as its own service
account that may only create TokenReviews; the controller's identity is another service
account whose token is minted for the agent's audience.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import resource
import secrets
import signal
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import yarl

from adapters.agent.auth import TOKEN_REVIEW_PATH
from adapters.agentapi.client import AgentAuthError, AgentClient, ClientPolicy
from adapters.agentapi.wire import BUNDLE_CONTENT_TYPE, NONCE_BYTES, BundleUpload, encode_upload
from adapters.runtime import SHUTDOWN_MARGIN_SECONDS
from controller.errors import PermanentError, TransientError
from tests.agent import AgentProcess, TLSFiles, agent_command, make_tls
from tests.kube import KubeCluster
from tests.kubeproxy import FaultProxy
from tests.processes import clean_env
from tests.support.waiting import wait_for

pytestmark = pytest.mark.kube

AUDIENCE = "winspec-agent"
LIMIT = 1024 * 1024


@dataclass(frozen=True)
class Cluster:
    """The service accounts, tokens and files every agent test shares."""

    kube: KubeCluster
    namespace: str
    tls: TLSFiles
    agent_kubeconfig: Path
    controller: str  # the allowed identity
    token: str  # the controller's token for the agent's audience
    intruder_token: str  # another service account's token, same audience
    api_audience_token: str  # the controller's token for the API server, not the agent

    def agent(self, root: Path, *extra: str, nofile: int | None = None) -> AgentProcess:
        """An agent (not started) writing below ``root``."""
        return AgentProcess(
            root=root,
            tls=self.tls,
            kubeconfig=self.agent_kubeconfig,
            allowed=[self.controller],
            audience=AUDIENCE,
            extra=("--max-request-bytes", str(LIMIT), *extra),
            nofile=nofile,
        )

    def client(
        self,
        agent: AgentProcess,
        *,
        token: str | None = None,
        on_retry: Callable[[str], None] | None = None,
        **policy: Any,
    ) -> AgentClient:
        """A client of ``agent`` trusting only the test CA."""
        used = token if token is not None else self.token
        return AgentClient(
            agent.url,
            token=lambda: used,
            ssl_context=self.tls.client_context(),
            policy=ClientPolicy(**({"attempts": 3, "initial": 0.05} | policy)),
            on_retry=on_retry,
        )


def _token(kube: KubeCluster, namespace: str, name: str, audiences: list[str] | None) -> str:
    return kube.service_account_token(namespace, name, audiences=audiences)


@pytest.fixture(scope="module")
def cluster(kube: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    """A namespace with the agent's and the controller's accounts; TLS files for the agent."""
    ns = f"agent-{secrets.token_hex(4)}"
    kube.create_namespace(ns)
    # The agent's least privilege: create TokenReviews, nothing else.
    kube.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": f"winspec-agent-{ns}"},
            "rules": [
                {
                    "apiGroups": ["authentication.k8s.io"],
                    "resources": ["tokenreviews"],
                    "verbs": ["create"],
                }
            ],
        }
    )
    kube.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"winspec-agent-{ns}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"winspec-agent-{ns}",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}],
        }
    )
    agent_token = _token(kube, ns, "agent", None)
    return Cluster(
        kube=kube,
        namespace=ns,
        tls=make_tls(tmp_path_factory.mktemp("agent-tls")),
        agent_kubeconfig=kube.kubeconfig(agent_token),
        controller=f"system:serviceaccount:{ns}:controller",
        token=_token(kube, ns, "controller", [AUDIENCE]),
        intruder_token=_token(kube, ns, "intruder", [AUDIENCE]),
        api_audience_token=_token(kube, ns, "controller", None),
    )


@pytest.fixture(scope="module")
def agent(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One started agent for the module's tests (each uses its own bundle ids)."""
    process = cluster.agent(tmp_path_factory.mktemp("shared") / "bundles")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def http(cluster: Cluster) -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client session (for requests the agent client would never send)."""
    async with aiohttp.ClientSession() as session:
        yield session
    # aiohttp's documented graceful shutdown: SSL transports close asynchronously after the
    # session does; without the pause one can still be open when the loop goes away (a
    # ResourceWarning for an unclosed socket).
    await asyncio.sleep(0.25)


def _files(tag: str = "v1", secret: bytes = b"s3cr3t-\x00\xff") -> dict[str, bytes]:
    return {
        "config.json": b'{"ociVersion":"1.1.0","tag":"' + tag.encode() + b'"}',
        "links.json": b'{"links":[]}',
        "secrets/db-password": secret,
        "configs/app.toml": b"[app]\nlevel = 1\n",
    }


def _on_disk(root: Path, bundle_id: str) -> dict[str, bytes]:
    base = root / bundle_id
    found: dict[str, bytes] = {}
    for path in sorted(base.rglob("*")):
        if path.is_file() and path.name != ".digest":
            found[path.relative_to(base).as_posix()] = path.read_bytes()
    return found


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("*/.*") if p.name.startswith((".tmp-", ".old-")))


async def _put_raw(
    session: aiohttp.ClientSession,
    agent: AgentProcess,
    path: str,
    body: Any,
    *,
    token: str | None,
    content_type: str = BUNDLE_CONTENT_TYPE,
    retry_unavailable: bool = True,
) -> tuple[int, dict[str, Any]]:
    """One PUT as sent (no client-side checks); a 503 of a TokenReview that did not answer in
    time (a loaded machine) is tried again, as any client would, unless told otherwise."""
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    # encoded=True: the path goes out as written ("..", "%2F" and all), not normalised.
    url = yarl.URL(agent.url + path, encoded=True)
    for attempt in range(3):
        data = io.BytesIO(body) if isinstance(body, bytes) else body
        async with session.put(
            url, data=data, headers=headers, ssl=agent.tls.client_context()
        ) as response:
            raw = await response.read()
            status, answer = response.status, (msgspec.json.decode(raw) if raw else {})
        unavailable = status == 503 and answer.get("reason") == "TokenReviewUnavailable"
        if not (unavailable and retry_unavailable and isinstance(body, bytes) and attempt < 2):
            return status, answer
        await asyncio.sleep(1)
    raise AssertionError("unreachable")


def _a_tenth_of_a_put(bundle_id: str, token: str) -> bytes:
    """The head of an authorised PUT of 100,000 bytes and the first tenth of its body (the
    rest never comes)."""
    head = (
        f"PUT /v1/bundles/{bundle_id} HTTP/1.1\r\nHost: agent\r\n"
        f"Authorization: Bearer {token}\r\n"
        f"Content-Type: {BUNDLE_CONTENT_TYPE}\r\nContent-Length: 100000\r\n\r\n"
    )
    return head.encode() + b"\x81" * 1000


async def _metric(session: aiohttp.ClientSession, agent: AgentProcess, sample: str) -> float:
    async with session.get(agent.url + "/metrics", ssl=agent.tls.client_context()) as response:
        text = await response.text()
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert match, f"{sample} not exported"
    return float(match.group(1))


async def test_put_writes_the_bundle_byte_identical_and_again_rewrites_nothing(
    cluster: Cluster, agent: AgentProcess
) -> None:
    """PUT writes every file byte for byte; the same PUT again is unchanged and touches nothing."""
    bundle_id = f"{cluster.namespace}/web-1"
    client = cluster.client(agent)
    try:
        first = await client.put(bundle_id, _files())
        assert first.changed
        assert first.id == bundle_id
        assert _on_disk(agent.root, bundle_id) == _files()
        config = agent.root / bundle_id / "config.json"
        before = config.stat()
        second = await client.put(bundle_id, _files())
        assert not second.changed
        assert second.digest == first.digest
        after = config.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert (await client.list_bundles())[bundle_id] == first.digest
    finally:
        await client.close()


def _damage(directory: Path, kind: str) -> None:
    """Drift of ``kind`` in a bundle on the node, its .digest untouched."""
    if kind == "modified":
        with open(directory / "secrets" / "db-password", "r+b") as f:
            f.truncate(3)
    elif kind == "missing":
        (directory / "links.json").unlink()
    else:
        (directory / "configs" / "stray.toml").write_bytes(b"")


@pytest.mark.parametrize("kind", ["modified", "missing", "extra"])
async def test_a_drifted_bundle_leaves_the_listing_and_the_same_put_repairs_it(
    cluster: Cluster, agent: AgentProcess, http: aiohttp.ClientSession, kind: str
) -> None:
    """A bundle damaged on the node is not listed; the same PUT again rewrites it, counted."""
    bundle_id = f"{cluster.namespace}/drift-{kind}"
    client = cluster.client(agent)
    sample = f'winspec_agent_bundle_drift_total{{kind="{kind}"}}'
    try:
        before = await _metric(http, agent, sample)
        first = await client.put(bundle_id, _files())
        _damage(agent.root / bundle_id, kind)
        # Left out, so the controller's resync (which enqueues what a node lacks) delivers it.
        assert bundle_id not in await client.list_bundles()
        again = await client.put(bundle_id, _files())
        assert again.changed
        assert again.drift == [kind]
        assert await _metric(http, agent, sample) == before + 1
        assert again.digest == first.digest
        assert _on_disk(agent.root, bundle_id) == _files()
        assert (await client.list_bundles())[bundle_id] == first.digest
        assert not (await client.put(bundle_id, _files())).changed
    finally:
        await client.delete(bundle_id)
        await client.close()


async def test_changed_content_is_rewritten_and_gets_a_new_digest(
    cluster: Cluster, agent: AgentProcess
) -> None:
    """A PUT with other content replaces the bundle whole and reports a different digest."""
    bundle_id = f"{cluster.namespace}/web-2"
    client = cluster.client(agent)
    try:
        first = await client.put(bundle_id, _files("v1"))
        second = await client.put(bundle_id, _files("v2", secret=b"rotated"))
        assert second.changed
        assert second.digest != first.digest
        assert _on_disk(agent.root, bundle_id) == _files("v2", secret=b"rotated")
    finally:
        await client.close()


async def test_delete_removes_the_bundle_and_list_follows(
    cluster: Cluster, agent: AgentProcess
) -> None:
    """DELETE removes the bundle (a second DELETE reports none); GET lists what is left."""
    ns = "list-" + secrets.token_hex(3)  # ids of its own: the agent is shared

    async def listed() -> dict[str, str]:
        return {k: v for k, v in (await client.list_bundles()).items() if k.startswith(ns)}

    client = cluster.client(agent)
    try:
        a = await client.put(f"{ns}/a", _files("a"))
        b = await client.put(f"{ns}/b", _files("b"))
        assert await listed() == {f"{ns}/a": a.digest, f"{ns}/b": b.digest}
        assert await client.delete(f"{ns}/a")
        assert not (agent.root / ns / "a").exists()
        assert not await client.delete(f"{ns}/a")
        assert await listed() == {f"{ns}/b": b.digest}
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("which", "status"),
    [
        ("none", 401),
        ("garbage", 401),
        ("api-audience", 401),
        ("static-user", 401),
        ("intruder", 403),
    ],
)
async def test_wrong_credentials_are_refused_and_nothing_is_written(
    cluster: Cluster,
    agent: AgentProcess,
    http: aiohttp.ClientSession,
    which: str,
    status: int,
) -> None:
    """No, bad, wrong-audience or static-user token → 401; another account → 403; no write."""
    token = {
        "none": None,
        "garbage": "not-a-token",
        "api-audience": cluster.api_audience_token,
        "static-user": cluster.kube.nobody_token,
        "intruder": cluster.intruder_token,
    }[which]
    bundle_id = f"{cluster.namespace}/auth-{which}"
    result = "unauthenticated" if status == 401 else "forbidden"
    sample = f'winspec_agent_requests_total{{operation="put",result="{result}"}}'
    before = await _metric(http, agent, sample)
    body = encode_upload(bundle_id, _files(), os.urandom(NONCE_BYTES))
    got, answer = await _put_raw(http, agent, f"/v1/bundles/{bundle_id}", body, token=token)
    assert (got, answer["reason"]) == (status, "Unauthenticated" if status == 401 else "Forbidden")
    async with http.delete(
        agent.url + f"/v1/bundles/{cluster.namespace}/x",
        headers={"Authorization": f"Bearer {token}"} if token else {},
        ssl=agent.tls.client_context(),
    ) as response:
        assert response.status == status
    assert not (agent.root / bundle_id).exists()
    assert _leftovers(agent.root) == []
    assert await _metric(http, agent, sample) == before + 1
    if which != "none":  # the client maps them to its auth error
        client = cluster.client(agent, token=token)
        try:
            with pytest.raises(AgentAuthError):
                await client.list_bundles()
        finally:
            await client.close()


async def test_a_cached_refusal_still_writes_nothing(
    cluster: Cluster, agent: AgentProcess, http: aiohttp.ClientSession
) -> None:
    """The same foreign token twice is refused both times (the second from the cache)."""
    path = f"/v1/bundles/{cluster.namespace}/cached"
    body = encode_upload(f"{cluster.namespace}/cached", _files(), os.urandom(NONCE_BYTES))
    hit = 'winspec_agent_token_cache_total{result="hit"}'
    reviewed = 'winspec_agent_token_reviews_total{result="authenticated"}'
    hits, reviews = await _metric(http, agent, hit), await _metric(http, agent, reviewed)
    for _ in range(2):
        status, _ = await _put_raw(http, agent, path, body, token=cluster.intruder_token)
        assert status == 403
    # At most the first was reviewed; the second came from the cache.
    assert await _metric(http, agent, hit) - hits >= 1
    assert await _metric(http, agent, reviewed) - reviews <= 1
    assert not (agent.root / cluster.namespace / "cached").exists()


async def test_oversize_uploads_get_413_and_nothing_is_written(
    cluster: Cluster, agent: AgentProcess, http: aiohttp.ClientSession
) -> None:
    """A body over --max-request-bytes is refused with 413, with or without Content-Length."""
    path = f"/v1/bundles/{cluster.namespace}/big"
    files = _files() | {"configs/huge": b"x" * (LIMIT + 1)}
    body = encode_upload(f"{cluster.namespace}/big", files, os.urandom(NONCE_BYTES))
    status, answer = await _put_raw(http, agent, path, body, token=cluster.token)
    assert (status, answer["reason"]) == (413, "TooLarge")

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    status, _ = await _put_raw(http, agent, path, chunked(), token=cluster.token)
    assert status == 413
    assert not (agent.root / cluster.namespace / "big").exists()
    client = cluster.client(agent)
    try:
        with pytest.raises(PermanentError, match="413"):
            await client.put(f"{cluster.namespace}/big", files)
    finally:
        await client.close()
    assert _leftovers(agent.root) == []


def _tampered() -> bytes:
    good = msgspec.msgpack.decode(encode_upload("ns/any", _files(), os.urandom(NONCE_BYTES)))
    good["files"]["secrets/db-password"] = b"other"
    return msgspec.msgpack.encode(good)


@pytest.mark.parametrize(
    ("name", "body", "content_type", "status", "reason"),
    [
        ("not-msgpack", b"{not msgpack", BUNDLE_CONTENT_TYPE, 400, "InvalidBundle"),
        ("json", b'{"files":{}}', "application/json", 415, "UnsupportedMediaType"),
        (
            "unknown-field",
            msgspec.msgpack.encode(
                {"files": {}, "nonce": b"n" * 32, "issued": 1, "mac": "0" * 64, "x": 1}
            ),
            BUNDLE_CONTENT_TYPE,
            400,
            "InvalidBundle",
        ),
        (
            "short-nonce",
            msgspec.msgpack.encode(
                BundleUpload(files=_files(), nonce=b"n", issued=1, mac="0" * 64)
            ),
            BUNDLE_CONTENT_TYPE,
            400,
            "InvalidBundle",
        ),
        ("mac-mismatch", _tampered(), BUNDLE_CONTENT_TYPE, 400, "InvalidBundle"),
        (
            "climbing-file",
            lambda bundle_id: encode_upload(
                bundle_id, _files() | {"secrets/../../x": b"1"}, b"n" * 32
            ),
            BUNDLE_CONTENT_TYPE,
            400,
            "InvalidBundle",
        ),
        (
            "no-config",
            lambda bundle_id: encode_upload(bundle_id, {"links.json": b"{}"}, b"n" * 32),
            BUNDLE_CONTENT_TYPE,
            400,
            "InvalidBundle",
        ),
    ],
)
async def test_malformed_bundles_are_refused_with_400(
    cluster: Cluster,
    agent: AgentProcess,
    http: aiohttp.ClientSession,
    name: str,
    body: bytes | Callable[[str], bytes],
    content_type: str,
    status: int,
    reason: str,
) -> None:
    """Malformed bodies, a MAC mismatch and bad file names get a clear 4xx; nothing is written."""
    path = f"/v1/bundles/{cluster.namespace}/bad-{name}"
    checks_files = callable(body)
    if callable(body):  # a well-formed upload for this id, refused for its files
        body = body(f"{cluster.namespace}/bad-{name}")
    got, answer = await _put_raw(
        http, agent, path, body, token=cluster.token, content_type=content_type
    )
    assert (got, answer["reason"]) == (status, reason), answer
    assert answer["message"]
    assert not checks_files or "mac" not in answer["message"]
    assert b"s3cr3t" not in msgspec.json.encode(answer)
    assert not (agent.root / cluster.namespace / f"bad-{name}").exists()
    assert _leftovers(agent.root) == []


@pytest.mark.parametrize(
    "path",
    [
        "/v1/bundles/noslash",
        "/v1/bundles/ns/a/b",
        "/v1/bundles/ns/..",
        "/v1/bundles/ns/%2E%2E",
        "/v1/bundles/../etc",
        "/v1/bundles/NS/upper",
        "/v1/bundles/ns/.hidden",
        "/v1/bundles/ns/a%2Fb",
        "/v1/bundles/ns/" + "a" * 300,
    ],
)
async def test_bad_ids_are_refused_with_400_before_any_path(
    cluster: Cluster, agent: AgentProcess, http: aiohttp.ClientSession, path: str
) -> None:
    """Ids that are not <namespace>/<name> get 400 InvalidId; nothing appears under the root."""

    def entries() -> list[str]:
        return sorted(p.relative_to(agent.root).as_posix() for p in agent.root.rglob("*"))

    before = entries()
    body = encode_upload("ns/any", _files(), os.urandom(NONCE_BYTES))
    status, answer = await _put_raw(http, agent, path, body, token=cluster.token)
    assert (status, answer["reason"]) == (400, "InvalidId"), answer
    assert entries() == before


def test_agent_refuses_to_start_without_tls_or_identity(cluster: Cluster, tmp_path: Path) -> None:
    """Without --tls-cert/--tls-key (and no --insecure-http) or an allowed identity: exit 2."""
    no_tls = subprocess.run(
        agent_command("--allowed-identity", cluster.controller, "--bundle-root", str(tmp_path)),
        capture_output=True,
        env=clean_env(),
        timeout=60,
    )
    assert no_tls.returncode == 2
    assert no_tls.stderr.decode() == (
        "winspec: invalid agent settings: --tls-cert and --tls-key (WINSPEC_AGENT_TLS_CERT, "
        "WINSPEC_AGENT_TLS_KEY) are required; --insecure-http (WINSPEC_AGENT_INSECURE_HTTP=true) "
        "serves plain HTTP instead, for tests and development only\n"
    )
    no_identity = subprocess.run(
        agent_command("--insecure-http", "--bundle-root", str(tmp_path)),
        capture_output=True,
        env=clean_env(),
        timeout=60,
    )
    assert no_identity.returncode == 2
    assert b"allowed_identity" in no_identity.stderr


async def test_plain_http_is_not_served_on_the_tls_port(
    agent: AgentProcess, http: aiohttp.ClientSession
) -> None:
    """A client speaking plain HTTP to the agent gets no answer (the port is TLS only)."""
    with pytest.raises(aiohttp.ClientError):
        async with http.get(f"http://127.0.0.1:{agent.port}/v1/bundles") as response:
            await response.read()


async def test_client_retries_until_the_agent_is_up(cluster: Cluster, tmp_path: Path) -> None:
    """A PUT issued while the agent is down completes once it starts (tenacity retries)."""
    process = cluster.agent(tmp_path / "bundles")
    client = cluster.client(process, attempts=40, initial=0.1, maximum=0.5)
    try:
        put = asyncio.create_task(client.put(f"{cluster.namespace}/late", _files()))
        await asyncio.sleep(0.5)
        assert not put.done()
        await asyncio.to_thread(process.start)
        state = await asyncio.wait_for(put, 60)
        assert state.changed
        assert _on_disk(process.root, f"{cluster.namespace}/late") == _files()
    finally:
        await client.close()
        process.stop()


async def test_client_gives_up_with_a_transient_error_when_the_agent_stays_down(
    cluster: Cluster, tmp_path: Path
) -> None:
    """With no agent listening the client fails after its attempts, each retry reported."""
    process = cluster.agent(tmp_path / "bundles")  # never started
    retried: list[str] = []
    client = cluster.client(process, attempts=3, initial=0.01, on_retry=retried.append)
    try:
        with pytest.raises(TransientError):
            await client.put(f"{cluster.namespace}/nobody-home", _files())
        assert retried == ["agent_put"] * 2
        with pytest.raises(TransientError):
            await client.delete(f"{cluster.namespace}/nobody-home")
        with pytest.raises(TransientError):
            await client.list_bundles()
        assert retried[2:] == ["agent_delete"] * 2 + ["agent_list"] * 2
    finally:
        await client.close()


def _big_files(tag: str, count: int, size: int) -> dict[str, bytes]:
    files = _files(tag)
    for i in range(count):
        files[f"configs/blob-{i:03d}"] = tag.encode() * (size // len(tag))
    return files


async def test_agent_killed_mid_delivery_leaves_nothing_torn_and_a_retry_completes(
    cluster: Cluster, tmp_path: Path
) -> None:
    """SIGKILL inside a PUT's write: the old bundle stays whole, swept at start, a retry lands."""
    root = tmp_path / "bundles"
    process = cluster.agent(root)
    bundle_id = f"{cluster.namespace}/crash"
    client = cluster.client(process)
    old, new = _files("old", b"old secret"), _files("new", b"new secret")
    try:
        await asyncio.to_thread(process.start)
        await client.put(bundle_id, old)
        await asyncio.to_thread(process.stop)
        # Stopped (deterministically, see tests/agent_pause.py) with the new version complete in
        # its .tmp- directory, before the swap.
        marker = tmp_path / "paused"
        await asyncio.to_thread(process.start, pause=("_make_durable", marker))
        once = cluster.client(process, attempts=1)
        put = asyncio.create_task(once.put(bundle_id, new))
        try:
            await asyncio.to_thread(wait_for, marker.exists, 30, what="the paused write")
            assert _leftovers(root)
            await asyncio.to_thread(process.kill)
            with pytest.raises(TransientError):
                await asyncio.wait_for(put, 30)
        finally:
            await once.close()
        assert _on_disk(root, bundle_id) == old  # the old version, whole
        await asyncio.to_thread(process.start)
        assert _leftovers(root) == []  # swept at start-up
        state = await client.put(bundle_id, new)
        assert state.changed
        assert _on_disk(root, bundle_id) == new
        assert (await client.list_bundles())[bundle_id] == state.digest
    finally:
        await client.close()
        process.stop()


async def test_sigterm_stops_the_agent_with_exit_0(cluster: Cluster, tmp_path: Path) -> None:
    """SIGTERM ends a running agent cleanly (exit code 0)."""
    process = cluster.agent(tmp_path / "bundles")
    await asyncio.to_thread(process.start)
    assert process.stop() == 0


async def test_sigterm_with_an_upload_in_flight_exits_in_time(
    cluster: Cluster, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """SIGTERM with a PUT half sent: exit 0 within --shutdown-timeout + margin, nothing written."""
    # A short --shutdown-timeout, and a --body-timeout that cannot end the upload first.
    shutdown_timeout = 1.0
    process = cluster.agent(
        tmp_path / "bundles", "--shutdown-timeout", str(shutdown_timeout), "--body-timeout", "60"
    )
    await asyncio.to_thread(process.start)
    bundle_id = f"{cluster.namespace}/in-flight"
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", process.port, ssl=cluster.tls.client_context()
    )
    try:
        writer.write(_a_tenth_of_a_put(bundle_id, cluster.token))
        await writer.drain()
        miss = 'winspec_agent_token_cache_total{result="miss"}'
        deadline = time.monotonic() + 30
        while await _metric(http, process, miss) < 1:  # the handler has the request
            assert time.monotonic() < deadline, process.logs()
            await asyncio.sleep(0.1)
        assert process.proc is not None
        stopping = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(process.proc.wait, 60)
        took = time.monotonic() - stopping
    finally:
        writer.transport.abort()
        await asyncio.to_thread(process.stop)
    assert returncode == 0, process.logs()
    assert took <= shutdown_timeout + SHUTDOWN_MARGIN_SECONDS, (took, process.logs())
    assert "Traceback" not in process.logs()
    assert not (process.root / bundle_id).exists()
    assert _leftovers(process.root) == []


async def test_node_answers_the_bundle_root_to_the_allowed_identity_only(
    cluster: Cluster, agent: AgentProcess, http: aiohttp.ClientSession
) -> None:
    """GET /v1/node gives the controller the absolute --bundle-root; 401/403 to anyone else."""
    sample = 'winspec_agent_requests_total{operation="node",result="ok"}'
    before = await _metric(http, agent, sample)
    client = cluster.client(agent)
    try:
        assert (await client.node_info()).bundle_root == str(agent.root.absolute())
    finally:
        await client.close()
    assert await _metric(http, agent, sample) == before + 1
    for token, status in ((None, 401), (cluster.intruder_token, 403)):
        async with http.get(
            agent.url + "/v1/node",
            headers={"Authorization": f"Bearer {token}"} if token else {},
            ssl=agent.tls.client_context(),
        ) as response:
            assert response.status == status
            assert str(agent.root) not in await response.text()


async def test_healthz_readyz_and_metrics_need_no_token(
    agent: AgentProcess, http: aiohttp.ClientSession
) -> None:
    """Probes and /metrics answer without a token; every winspec_agent_* series is pre-set."""
    ctx: ssl.SSLContext = agent.tls.client_context()
    for path in ("/healthz", "/readyz"):
        async with http.get(agent.url + path, ssl=ctx) as response:
            assert response.status == 200
    ready = await _metric(http, agent, "winspec_agent_ready")
    assert ready == 1.0
    count = await _metric(
        http, agent, 'winspec_agent_requests_total{operation="delete",result="too_large"}'
    )
    assert count == 0.0
    for result in ("written", "unchanged", "removed", "absent"):
        assert await _metric(http, agent, f'winspec_agent_bundles_total{{result="{result}"}}') >= 0


async def test_an_agent_whose_account_may_not_review_tokens_is_unready_and_writes_nothing(
    cluster: Cluster, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Without `create` on tokenreviews: /readyz 503, every PUT 503, nothing written."""
    no_rbac = _token(cluster.kube, cluster.namespace, "agent-without-rbac", None)
    process = AgentProcess(
        root=tmp_path / "bundles",
        tls=cluster.tls,
        kubeconfig=cluster.kube.kubeconfig(no_rbac),
        allowed=[cluster.controller],
        audience=AUDIENCE,
    )
    process.start(wait=False)
    try:
        await asyncio.to_thread(wait_for, lambda: process.readyz() == 503, 30, what="/readyz 503")
        body = encode_upload(f"{cluster.namespace}/unready", _files(), os.urandom(NONCE_BYTES))
        path = f"/v1/bundles/{cluster.namespace}/unready"
        status, answer = await _put_raw(
            http, process, path, body, token=cluster.token, retry_unavailable=False
        )
        assert (status, answer["reason"]) == (503, "TokenReviewUnavailable")
        client = cluster.client(process, attempts=2, initial=0.01)
        try:
            with pytest.raises(TransientError, match="503"):  # retried, then given up
                await client.put(f"{cluster.namespace}/unready", _files())
        finally:
            await client.close()
        assert not (process.root / cluster.namespace / "unready").exists()
    finally:
        process.stop()
    assert "403" in process.logs()  # the log says why: the server forbade the review


async def test_a_token_review_answered_503_is_retried_and_the_upload_written(
    cluster: Cluster, tmp_path: Path, kube_proxy: FaultProxy
) -> None:
    """A TokenReview the API server answers 503 once is retried by the agent: the PUT is written."""
    agent_token = _token(cluster.kube, cluster.namespace, "agent", None)
    process = AgentProcess(
        root=tmp_path / "bundles",
        tls=cluster.tls,
        kubeconfig=cluster.kube.kubeconfig(agent_token, server=kube_proxy.url),
        allowed=[cluster.controller],
        audience=AUDIENCE,
    )

    def review(method: str, path_qs: str) -> bool:
        return method == "POST" and path_qs.startswith(TOKEN_REVIEW_PATH)

    process.start(wait=False)  # the proxy runs on this event loop: wait without blocking it
    try:
        await asyncio.to_thread(process.wait_ready)
        kube_proxy.fail(503, count=1, when=review)
        client = cluster.client(process, attempts=1)  # the agent retries, not the client
        try:
            state = await client.put(f"{cluster.namespace}/reviewed", _files())
        finally:
            await client.close()
        assert state.changed
        assert _on_disk(process.root / cluster.namespace, "reviewed") == _files()
        statuses = [(e.status, e.injected) for e in kube_proxy.log if review(e.method, e.path_qs)]
        assert (503, True) in statuses, statuses
        assert statuses[-1] == (201, False), statuses
    finally:
        process.stop()


async def test_logs_hold_no_payload_byte_and_no_token(
    cluster: Cluster, agent: AgentProcess, http: aiohttp.ClientSession
) -> None:
    """After writes, refusals and a MAC mismatch the agent's log shows no secret and no token."""
    marker = b"planted-" + secrets.token_hex(8).encode()
    files = _files("logs", secret=marker)
    client = cluster.client(agent)
    try:
        await client.put(f"{cluster.namespace}/logged", files)
        await client.put(f"{cluster.namespace}/logged", files)
    finally:
        await client.close()
    logged = f"{cluster.namespace}/logged"
    tampered = msgspec.msgpack.decode(encode_upload(logged, files, os.urandom(NONCE_BYTES)))
    tampered["files"]["configs/app.toml"] = marker
    path = f"/v1/bundles/{cluster.namespace}/logged"
    status, _ = await _put_raw(
        http, agent, path, msgspec.msgpack.encode(tampered), token=cluster.token
    )
    assert status == 400
    await _put_raw(http, agent, path, b"x", token=cluster.intruder_token)
    logs = agent.logs()
    assert f"{cluster.namespace}/logged" in logs  # the log does name the bundle
    assert marker.decode() not in logs
    for token in (cluster.token, cluster.intruder_token):
        assert token not in logs
        assert token[-40:] not in logs


async def test_concurrent_puts_of_one_bundle_leave_one_whole_version(
    cluster: Cluster, agent: AgentProcess
) -> None:
    """Racing PUTs of different content to one id end with exactly one of them, whole."""
    bundle_id = f"{cluster.namespace}/race"
    versions = [_big_files(f"r{i}", 8, 64 * 1024) for i in range(4)]
    client = cluster.client(agent)
    try:
        states = await asyncio.gather(*(client.put(bundle_id, v) for v in versions))
        on_disk = _on_disk(agent.root, bundle_id)
        assert on_disk in versions
        final = states[versions.index(on_disk)]
        assert (await client.list_bundles())[bundle_id] == final.digest
        assert len({s.digest for s in states}) == len(versions)
    finally:
        await client.close()
    assert _leftovers(agent.root) == []


async def test_a_rotated_certificate_is_served_without_a_restart(
    cluster: Cluster, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """New certificate files (another CA) are picked up by new connections; the old CA fails."""
    first = make_tls(tmp_path / "tls")
    process = AgentProcess(
        root=tmp_path / "bundles",
        tls=first,
        kubeconfig=cluster.agent_kubeconfig,
        allowed=[cluster.controller],
        audience=AUDIENCE,
        extra=("--tls-reload-interval", "0.2"),
    )
    await asyncio.to_thread(process.start)
    try:
        second = await asyncio.to_thread(make_tls, tmp_path / "rotated")
        for new, live in ((second.cert, first.cert), (second.key, first.key)):
            staged = live.with_suffix(".staged")
            staged.write_bytes(new.read_bytes())
            staged.chmod(0o600)
            os.replace(staged, live)  # as a Secret volume update: each file swapped whole

        async def status_with(ctx: ssl.SSLContext) -> int:
            async with http.get(process.url + "/healthz", ssl=ctx) as response:
                return response.status

        deadline = time.monotonic() + 20
        while True:
            try:
                assert await status_with(second.client_context()) == 200
                break
            except aiohttp.ClientConnectorError:
                assert time.monotonic() < deadline, "the rotated certificate was never served"
                await asyncio.sleep(0.1)
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await status_with(first.client_context())
    finally:
        process.stop()
    assert "TLS certificate reloaded" in process.logs()


# --- Hostile clients -------------------------------------------------------------------------

#: The slow-header attack: connections in all, and the loopback addresses they come from: 300
#: from 127.0.0.10 (over the default per-peer cap, 32), the rest from 127.0.0.11-29 (over the
#: default total, 512, at up to 32 each).
SLOW_CONNECTIONS = 1100
SLOW_HEAVY = 300
SLOW_PEERS = 19
#: The attack's pace, scaled down with the agent's --header-timeout (default 10 s, a header
#: line every 10 s in the original attack): a line every second against a 3 s timeout, and a
#: new connection a second after one is dropped.
SLOW_HEADER_TIMEOUT = 3.0
SLOW_LINE_INTERVAL = 1.0
SLOW_RECONNECT = 1.0


async def _slow_header_client(
    port: int, source: str, ctx: ssl.SSLContext, stop: asyncio.Event
) -> None:
    """Connect over TLS, send a request line, then one header line a second, never ending the
    head; reconnect a second after the agent drops the connection, until ``stop``."""
    while not stop.is_set():
        writer: asyncio.StreamWriter | None = None
        try:
            reader, stream = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=ctx, local_addr=(source, 0)), 10
            )
            writer = stream
            stream.write(b"PUT /v1/bundles/slow/loris HTTP/1.1\r\nHost: agent\r\n")
            await stream.drain()
            while not stop.is_set():
                try:
                    if not await asyncio.wait_for(reader.read(1024), SLOW_LINE_INTERVAL):
                        break  # the agent closed it
                except TimeoutError:
                    stream.write(b"X-Slow: 1\r\n")
                    await stream.drain()
        except (OSError, TimeoutError):
            pass  # refused, reset or timed out: try again
        finally:
            if writer is not None:
                writer.transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SLOW_RECONNECT)


async def test_slow_header_connections_do_not_lock_out_the_controller(
    cluster: Cluster, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """1,100 slow-header TLS connections at nofile 1024: ≥ 95% of PUTs land, the log stays small."""
    # The default connection caps (both must be hit), a 3 s --header-timeout with the attack's
    # pace scaled down with it (see SLOW_HEADER_TIMEOUT), the descriptor limit of the issue.
    # This process holds the attack's connections: its own limit must be above their count.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2 * SLOW_CONNECTIONS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2 * SLOW_CONNECTIONS, hard), hard))
    process = cluster.agent(
        tmp_path / "bundles",
        "--header-timeout", str(SLOW_HEADER_TIMEOUT), "--body-timeout", "5",
        nofile=1024,
    )  # fmt: skip
    await asyncio.to_thread(process.start)
    client = cluster.client(process)
    stop = asyncio.Event()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # an attacker checks no certificate
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sources = ["127.0.0.10"] * SLOW_HEAVY + [
        f"127.0.0.{11 + i % SLOW_PEERS}" for i in range(SLOW_CONNECTIONS - SLOW_HEAVY)
    ]
    log_before = process.log.stat().st_size
    attackers = [
        asyncio.create_task(_slow_header_client(process.port, source, ctx, stop))
        for source in sources
    ]
    attempts, took = 20, []
    try:
        # Deliveries that have not all ended by then count as failed (a locked-out client's
        # each take minutes of connect timeouts and retries).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(80):
                await asyncio.sleep(2 * SLOW_HEADER_TIMEOUT)  # the attack in full swing
                for i in range(attempts):
                    started = time.monotonic()
                    with contextlib.suppress(TransientError):
                        await client.put(f"{cluster.namespace}/under-attack", _files(f"v{i}"))
                        took.append(round(time.monotonic() - started, 2))
                    await asyncio.sleep(0.5)
        assert len(took) >= 0.95 * attempts, f"{len(took)}/{attempts} delivered, in {took} s"
        refused = {
            reason: await _metric(
                http, process, f'winspec_agent_connections_refused_total{{reason="{reason}"}}'
            )
            for reason in ("peer_limit", "limit", "evicted")
        }
    finally:
        stop.set()
        for task in attackers:
            task.cancel()
        await asyncio.gather(*attackers, return_exceptions=True)
        await client.close()
        await asyncio.to_thread(process.stop)
    grown = process.log.stat().st_size - log_before
    assert grown < 512 * 1024, f"the log grew by {grown} bytes"
    assert refused["peer_limit"] > 0, refused  # --max-connections-per-peer was reached
    assert refused["limit"] + refused["evicted"] > 0, refused  # and --max-connections


def _capturing_session(captured: list[tuple[str, dict[str, str], bytearray]]) -> Any:
    """A client session recording each request as sent: method, headers and body bytes."""
    trace = aiohttp.TraceConfig()

    async def start(_s: Any, _c: Any, params: aiohttp.TraceRequestStartParams) -> None:
        captured.append((params.method, dict(params.headers), bytearray()))

    async def chunk(_s: Any, _c: Any, params: aiohttp.TraceRequestChunkSentParams) -> None:
        captured[-1][2].extend(params.chunk)

    trace.on_request_start.append(start)
    trace.on_request_chunk_sent.append(chunk)
    return aiohttp.ClientSession(trace_configs=[trace])


async def test_a_replayed_put_never_puts_an_older_bundle_back(
    cluster: Cluster, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A captured PUT replayed after a newer one gets 409, also after restarts; delivery goes on."""
    # After the agent's restart the same client delivers, then a new one (a controller restart).
    process = cluster.agent(tmp_path / "bundles")
    bundle_id = f"{cluster.namespace}/replayed"
    path = f"/v1/bundles/{bundle_id}"
    old, new, newest = (_files(t, secret=b"secret " + t.encode()) for t in ("v1", "v2", "v3"))
    captured: list[tuple[str, dict[str, str], bytearray]] = []

    def controller(session: aiohttp.ClientSession | None = None) -> AgentClient:
        return AgentClient(
            process.url,
            token=lambda: cluster.token,
            ssl_context=cluster.tls.client_context(),
            policy=ClientPolicy(attempts=3, initial=0.05),
            session=session,
        )

    async def replay(request: tuple[str, dict[str, str], bytearray]) -> tuple[int, str]:
        method, headers, body = request
        async with http.request(
            method, process.url + path, data=bytes(body), headers=headers,
            ssl=cluster.tls.client_context(),
        ) as response:  # fmt: skip
            answer = msgspec.json.decode(await response.read())
            return response.status, answer.get("reason", "")

    await asyncio.to_thread(process.start)
    session = _capturing_session(captured)
    try:
        client = controller(session)
        assert (await client.put(bundle_id, old)).changed
        first = captured[-1]
        assert first[0] == "PUT"
        assert first[2]
        assert (await client.put(bundle_id, new)).changed
        second = captured[-1]
        assert await replay(first) == (409, "Replayed")
        assert _on_disk(process.root, bundle_id) == new
        assert await replay(second) == (409, "Replayed")  # the latest one, once more

        await asyncio.to_thread(process.stop)
        await asyncio.to_thread(process.start)
        for request in (first, second):
            assert await replay(request) == (409, "Replayed")
        assert _on_disk(process.root, bundle_id) == new
        # The same controller after the agent's restart, then a restarted one.
        assert not (await client.put(bundle_id, new)).changed
        restarted = controller()
        try:
            state = await restarted.put(bundle_id, newest)
            assert state.changed
            assert (await restarted.list_bundles())[bundle_id] == state.digest
        finally:
            await restarted.close()
        assert await replay(first) == (409, "Replayed")
        assert _on_disk(process.root, bundle_id) == newest
        # A captured DELETE replayed after the bundle was delivered again removes nothing.
        assert await client.delete(bundle_id)
        removal = captured[-1]
        assert removal[0] == "DELETE"
        assert (await client.put(bundle_id, newest)).changed
        assert await replay(removal) == (409, "Replayed")
        assert _on_disk(process.root, bundle_id) == newest
    finally:
        await session.close()
        process.stop()


async def test_a_flood_of_unknown_tokens_is_throttled_and_keeps_the_controllers_verdict(
    cluster: Cluster, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """1,500 garbage tokens cost few TokenReviews and leave the controller's verdict cached."""
    process = cluster.agent(tmp_path / "bundles")
    await asyncio.to_thread(process.start)
    client = cluster.client(process)
    reviewed = "winspec_agent_token_reviews_total"
    try:
        await client.list_bundles()  # the controller's token: reviewed once, cached
        before = {
            r: await _metric(http, process, f'{reviewed}{{result="{r}"}}')
            for r in ("authenticated", "rejected", "error")
        }
        ctx = cluster.tls.client_context()
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=16)
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=connector) as flood:

            async def garbage(i: int) -> int:
                headers = {"Authorization": f"Bearer garbage-{i}-{secrets.token_hex(8)}"}
                async with flood.get(process.url + "/v1/bundles", headers=headers, ssl=ctx) as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(garbage(i) for i in range(1500)))
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.25)  # the flood's TLS transports close
        after = {
            r: await _metric(http, process, f'{reviewed}{{result="{r}"}}')
            for r in ("authenticated", "rejected", "error")
        }
        # 401 reviewed and refused, 429 over budget (503: a review that timed out, under load).
        assert set(statuses) <= {401, 429, 503}, set(statuses)
        reviews = after["rejected"] - before["rejected"] + after["error"] - before["error"]
        # The default budget: a burst of 10, then one a second.
        assert reviews <= 10 + elapsed + 1, (reviews, elapsed)
        assert statuses.count(429) >= 1500 - reviews
        await client.list_bundles()
        final = await _metric(http, process, f'{reviewed}{{result="authenticated"}}')
        assert final == before["authenticated"], "the controller's verdict was evicted"
    finally:
        await client.close()
        process.stop()


async def test_a_slow_head_is_dropped_and_a_slow_body_gets_408(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A head or body still incomplete after its timeout: dropped, or 408; nothing is written."""
    # Timeouts scaled down from their defaults (10 s, 60 s) with the flags.
    process = cluster.agent(tmp_path / "bundles", "--header-timeout", "2", "--body-timeout", "2")
    await asyncio.to_thread(process.start)
    ctx = cluster.tls.client_context()
    bundle_id = f"{cluster.namespace}/slow-body"
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", process.port, ssl=ctx)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: agent\r\n")  # and never the blank line
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, no answer
            assert 1.5 <= time.monotonic() - started < 10
        finally:
            writer.transport.abort()

        reader, writer = await asyncio.open_connection("127.0.0.1", process.port, ssl=ctx)
        try:
            writer.write(_a_tenth_of_a_put(bundle_id, cluster.token))
            started = time.monotonic()
            status = await asyncio.wait_for(reader.readline(), 20)
            assert status.startswith(b"HTTP/1.1 408"), status
            assert time.monotonic() - started >= 1.5
            assert await asyncio.wait_for(reader.read(), 20)  # the JSON refusal, then the end
        finally:
            writer.transport.abort()
        assert not (process.root / bundle_id).exists()
        assert _leftovers(process.root) == []
    finally:
        await asyncio.to_thread(process.stop)
