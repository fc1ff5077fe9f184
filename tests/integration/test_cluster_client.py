"""The Kubernetes client's own HTTP path against the real kube-apiserver: credentials asked
for on every call, the proxy the environment names (through a real CONNECT proxy), NO_PROXY."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from adapters.kubernetes.client import ForbiddenError, KubeClient, env_proxy, load_api_client
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
