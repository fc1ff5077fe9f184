"""A pass-through proxy in front of a real engine that shows it as a Windows engine would.

A Linux dockerd refuses ``--security-opt credentialspec=…`` at create, so no container of the
test engine can carry a gMSA credential spec (and its images are Linux images, whose containers
take no credential spec). :class:`WindowsViewProxy` forwards every request to the real engine's
unix socket unchanged (``/events`` streamed as it arrives) except two answers: every image
inspect says ``"Os": "windows"``, and the inspect of a container whose name starts with one of
``credential_specs``' prefixes gets the credential spec security option a Windows engine would
report. Everything else (ids, events, secrets, tasks, timing) is the real engine's.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

_INSPECT = re.compile(r"^(/v[0-9.]+)?/containers/[^/]+/json$")
_IMAGE_INSPECT = re.compile(r"^(/v[0-9.]+)?/images/.+/json$")
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class WindowsViewProxy:
    """Serves on a unix socket; forwards to ``upstream_socket``, rewriting chosen inspects."""

    def __init__(self, upstream_socket: str, credential_specs: dict[str, str]) -> None:
        """``credential_specs``: container name prefix (with its ``/``) → security option."""
        self.upstream_socket = upstream_socket
        self.credential_specs = credential_specs
        self.host = ""
        self._session: aiohttp.ClientSession | None = None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        session = self._session
        assert session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        body = await request.read()
        async with session.request(
            request.method,
            f"http://docker{request.rel_url}",
            headers=headers,
            data=body or None,
        ) as upstream:
            out_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS
            }
            if request.method == "GET" and _INSPECT.match(request.path) and upstream.status == 200:
                inspect = json.loads(await upstream.read())
                for prefix, option in self.credential_specs.items():
                    if str(inspect.get("Name", "")).startswith(prefix):
                        host_config = inspect.setdefault("HostConfig", {})
                        host_config["SecurityOpt"] = [option]
                return web.Response(
                    body=json.dumps(inspect).encode(), status=200, headers=out_headers
                )
            if (
                request.method == "GET"
                and _IMAGE_INSPECT.match(request.path)
                and upstream.status == 200
            ):
                image = json.loads(await upstream.read())
                image["Os"] = "windows"
                return web.Response(
                    body=json.dumps(image).encode(), status=200, headers=out_headers
                )
            response = web.StreamResponse(status=upstream.status, headers=out_headers)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    @contextlib.asynccontextmanager
    async def serving(self, socket_path: Path) -> AsyncIterator[str]:
        """Serve on ``socket_path`` for the block; yields the ``unix://`` host to use."""
        app = web.Application()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        session = self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.upstream_socket), timeout=timeout
        )
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
        )
        await runner.setup()
        try:
            await web.UnixSite(runner, str(socket_path)).start()
            self.host = f"unix://{socket_path}"
            yield self.host
        finally:
            await runner.cleanup()
            await session.close()
