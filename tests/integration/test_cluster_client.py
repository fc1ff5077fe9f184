"""The Kubernetes client's own HTTP path against the real kube-apiserver: credentials asked
for on every call, the proxy the environment names (through a real CONNECT proxy), NO_PROXY,
and metadata-only lists and watches of what resources depend on."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from adapters.kubernetes.client import ForbiddenError, KubeClient, env_proxy, load_api_client
from adapters.kubernetes.reflector import Reflector, WatchSettings, collection_path
from controller.ports import SourceHooks
from tests.kube import KubeCluster


class ConnectProxy:
    """A forward proxy on loopback that tunnels ``CONNECT host:port`` and records each one."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        """Stop listening and close every tunnel."""
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = request.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            writer.close()
            return
        self.tunnels.append(target)
        host, _, port = target.rpartition(":")
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        self._writers |= {writer, upstream_writer}
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@pytest.fixture
async def connect_proxy() -> AsyncIterator[ConnectProxy]:
    """A running CONNECT proxy."""
    proxy = ConnectProxy()
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def _version(kube: KubeCluster) -> tuple[str, KubeClient]:
    client = KubeClient(await load_api_client(str(kube.admin_kubeconfig)), timeout=10.0)
    body = await client.request("GET", "/version", api="version")
    return msgspec.json.decode(body)["gitVersion"], client


async def test_https_proxy_from_the_environment_carries_the_calls(
    kube: KubeCluster, connect_proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY set: the API server is reached through that proxy (one CONNECT tunnel)."""
    monkeypatch.setenv("HTTPS_PROXY", connect_proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    version, client = await _version(kube)
    try:
        assert version.startswith("v1.")
        host = kube.url.removeprefix("https://")
        assert connect_proxy.tunnels == [host]
    finally:
        await client.close()


async def test_no_proxy_exempts_the_api_server(
    kube: KubeCluster, connect_proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NO_PROXY naming the API server's host: calls go direct, the proxy sees nothing."""
    monkeypatch.setenv("HTTPS_PROXY", connect_proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    version, client = await _version(kube)
    try:
        assert version.startswith("v1.")
        assert connect_proxy.tunnels == []
    finally:
        await client.close()


def test_env_proxy_reads_the_scheme_s_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """env_proxy: HTTPS_PROXY for https, HTTP_PROXY for http, none when unset or exempted."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert env_proxy("https://api.example:6443") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain.example:3128")
    assert env_proxy("https://api.example:6443") == "http://proxy.example:3128"
    assert env_proxy("http://api.example:8080") == "http://plain.example:3128"
    monkeypatch.setenv("NO_PROXY", ".example")
    assert env_proxy("https://api.example:6443") is None


async def test_credentials_are_read_for_every_call(kube: KubeCluster) -> None:
    """A token changed in the configuration is used by the very next call (rotation)."""
    client = KubeClient(await load_api_client(str(kube.admin_kubeconfig)), timeout=10.0)
    try:
        path = "/api/v1/namespaces/default/secrets"
        await client.request("GET", path, api="list")
        configuration = client._api.configuration  # the object kubernetes-asyncio refreshes
        configuration.api_key["BearerToken"] = f"Bearer {kube.nobody_token}"
        with pytest.raises(ForbiddenError):
            await client.request("GET", path, api="list")
    finally:
        await client.close()


async def test_dependency_reflectors_receive_metadata_without_secret_data(
    kube: KubeCluster, kube_namespace: str
) -> None:
    """A metadata-only reflector of Secrets lists and watches them without their data."""
    secret = "app-credentials"
    path = f"/api/v1/namespaces/{kube_namespace}/secrets"

    def body(value: bytes) -> dict[str, Any]:
        data = {"password": base64.b64encode(value).decode()}
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret}, "data": data}

    kube.api("POST", path, body(b"first-value"))
    listed: list[dict[str, Any]] = []
    events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    client = KubeClient(await load_api_client(str(kube.admin_kubeconfig)), timeout=10.0)
    reflector = Reflector(
        client,
        path=collection_path(group="", version="v1", plural="secrets", namespace=kube_namespace),
        what="secrets",
        on_list=lambda items: listed.extend(msgspec.json.decode(i) for i in items),
        on_event=lambda kind, raw: events.put_nowait((kind, msgspec.json.decode(raw))),
        settings=WatchSettings(),
        hooks=SourceHooks(),
        metadata_only=True,
    )
    task = asyncio.create_task(reflector.run())
    try:
        await asyncio.wait_for(reflector.synced.wait(), 10)
        mine = [o for o in listed if o["metadata"]["name"] == secret]
        assert [o.get("kind") for o in mine] == ["PartialObjectMetadata"]
        assert "data" not in mine[0]
        kube.api("PUT", f"{path}/{secret}", body(b"second-value"))
        while True:
            kind, obj = await asyncio.wait_for(events.get(), 10)
            if obj["metadata"]["name"] == secret and kind == "MODIFIED":
                break
        assert obj.get("kind") == "PartialObjectMetadata"
        assert "data" not in obj
        assert base64.b64encode(b"second-value") not in msgspec.json.encode(obj)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


async def test_a_metadata_only_list_of_an_empty_collection_syncs(
    kube: KubeCluster, kube_namespace: str
) -> None:
    """An empty PartialObjectMetadataList (its items null) is an empty list, not an error."""
    listed: list[int] = []
    client = KubeClient(await load_api_client(str(kube.admin_kubeconfig)), timeout=10.0)
    reflector = Reflector(
        client,
        path=collection_path(group="", version="v1", plural="secrets", namespace=kube_namespace),
        what="secrets",
        on_list=lambda items: listed.append(len(items)),
        on_event=lambda kind, raw: None,
        settings=WatchSettings(),
        hooks=SourceHooks(),
        metadata_only=True,
    )
    try:
        await asyncio.wait_for(reflector.relist(), 10)
        assert listed == [0]
    finally:
        await client.close()


async def test_requests_name_winspec_as_their_field_manager(
    kube: KubeCluster, kube_namespace: str
) -> None:
    """A write through the client is recorded in managedFields under the manager "winspec"."""
    client = KubeClient(await load_api_client(str(kube.admin_kubeconfig)), timeout=10.0)
    try:
        path = f"/api/v1/namespaces/{kube_namespace}/configmaps"
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "managed"},
            "data": {"key": "value"},
        }
        created = msgspec.json.decode(await client.request("POST", path, body=body, api="create"))
        managers = {entry["manager"] for entry in created["metadata"]["managedFields"]}
        assert managers == {"winspec"}
    finally:
        await client.close()
