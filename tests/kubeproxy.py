"""A fault-injecting HTTP proxy between the code under test and the real kube-apiserver.

A healthy API server does not, on demand, drop a watch, go silent on an open connection or
answer 5xx / 429: this proxy does, and passes everything else through byte for byte (bodies,
status, headers, streamed watch chunks as they arrive). It listens on plain HTTP on 127.0.0.1
(a kubeconfig with ``server: http://127.0.0.1:<port>`` and a bearer token reaches it) and
talks TLS to the server, verifying it with the cluster's CA; the client's ``Authorization``
header is forwarded, so the server still decides who is who.

Faults, all asynchronous-safe from the test's event loop:

- :meth:`FaultProxy.fail` answers the next ``count`` matching requests with a status (and a
  ``Retry-After``) and a Kubernetes ``Status`` body, without asking the server;
- :meth:`FaultProxy.drop_watches` aborts every open watch connection (the client sees the
  connection reset mid-stream);
- :meth:`FaultProxy.silence_watches` keeps watch connections open but forwards nothing (what
  the server sends meanwhile is discarded, as a half-dead connection loses it) until
  :meth:`FaultProxy.resume_watches`;
- :meth:`FaultProxy.hold` never answers the matching requests (a server that stopped
  answering one kind of call), until :meth:`FaultProxy.stop`.

Every request is recorded (:attr:`FaultProxy.log`) with the status the client got and when it
arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import aiohttp
from aiohttp import web

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def is_watch(method: str, path_qs: str) -> bool:
    """Whether a request is a watch (``?watch=true`` or ``?watch=1``)."""
    query = parse_qs(urlsplit(path_qs).query)
    return method == "GET" and query.get("watch", [""])[0] in ("true", "1")


@dataclass
class Logged:
    """One request the proxy saw, and the status the client got."""

    method: str
    path_qs: str
    status: int = 0
    injected: bool = False
    #: When it arrived (``time.monotonic()``).
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Rule:
    status: int
    remaining: int
    retry_after: int | None
    when: Callable[[str, str], bool]


@dataclass(eq=False)
class _Watch:
    request: web.Request
    upstream: aiohttp.ClientResponse | None = None
    dropped: bool = False


@dataclass(eq=False)
class FaultProxy:
    """The proxy; :meth:`start` it, point the client at :attr:`url`, :meth:`stop` it."""

    upstream: str
    ca_file: str
    log: list[Logged] = field(default_factory=list)
    _rules: list[_Rule] = field(default_factory=list)
    _watches: set[_Watch] = field(default_factory=set)
    _silent: bool = False
    _holds: list[Callable[[str, str], bool]] = field(default_factory=list)
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    port: int = 0

    @property
    def url(self) -> str:
        """Where clients connect (plain HTTP)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on a free loopback port."""
        context = ssl.create_default_context(cafile=self.ca_file)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context),
            auto_decompress=False,  # bytes pass through as the server encoded them
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        self._released.set()
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
            # TLS connections close in the background; let them, or the garbage collector
            # finds their sockets open (a ResourceWarning, an error under pytest).
            await asyncio.sleep(0.25)

    # -- faults ------------------------------------------------------------------------------

    def fail(
        self,
        status: int,
        *,
        count: int = 1,
        retry_after: int | None = None,
        when: Callable[[str, str], bool] = lambda method, path_qs: True,
    ) -> None:
        """Answer the next ``count`` requests ``when(method, path_qs)`` matches with ``status``."""
        self._rules.append(_Rule(status, count, retry_after, when))

    def hold(self, when: Callable[[str, str], bool]) -> None:
        """Answer no request ``when(method, path_qs)`` matches (logged with status 0) until
        the proxy stops."""
        self._holds.append(when)

    def drop_watches(self) -> int:
        """Abort every open watch connection; the number aborted."""
        dropped = 0
        for watch in list(self._watches):
            watch.dropped = True
            if watch.upstream is not None:
                watch.upstream.close()
            transport = watch.request.transport
            if transport is not None:
                transport.abort()
            dropped += 1
        self._watches.clear()
        return dropped

    def silence_watches(self) -> None:
        """Forward nothing on watch connections (open ones and new ones) until resumed."""
        self._silent = True

    def resume_watches(self) -> None:
        """Forward watch data again."""
        self._silent = False

    @property
    def open_watches(self) -> int:
        """How many watch connections are open through the proxy."""
        return len(self._watches)

    def count(self, predicate: Callable[[Logged], bool]) -> int:
        """How many logged requests ``predicate`` matches."""
        return sum(1 for entry in self.log if predicate(entry))

    def list_versions(self) -> dict[str, list[str | None]]:
        """The ``resourceVersion`` each list asked (None: none, a consistent read), in order,
        by collection path. A list is a GET with a ``limit`` that is not a watch."""
        lists: dict[str, list[str | None]] = {}
        for entry in self.log:
            parts = urlsplit(entry.path_qs)
            query = parse_qs(parts.query)
            is_list = entry.method == "GET" and "limit" in query
            if is_list and not is_watch(entry.method, entry.path_qs):
                versions = query.get("resourceVersion")
                lists.setdefault(parts.path, []).append(versions[0] if versions else None)
        return lists

    # -- forwarding --------------------------------------------------------------------------

    def _injected(self, method: str, path_qs: str) -> _Rule | None:
        for rule in self._rules:
            if rule.remaining > 0 and rule.when(method, path_qs):
                rule.remaining -= 1
                return rule
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        entry = Logged(request.method, request.path_qs)
        self.log.append(entry)
        if any(when(request.method, request.path_qs) for when in self._holds):
            await self._released.wait()
            return web.Response(status=503, text="proxy: stopped while holding the request")
        rule = self._injected(request.method, request.path_qs)
        if rule is not None:
            entry.status, entry.injected = rule.status, True
            headers = {} if rule.retry_after is None else {"Retry-After": str(rule.retry_after)}
            body = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": f"injected by the test proxy: {rule.status}",
                "code": rule.status,
            }
            return web.Response(
                status=rule.status,
                body=json.dumps(body).encode(),
                content_type="application/json",
                headers=headers,
            )
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        data = await request.read()
        watch = _Watch(request) if is_watch(request.method, request.path_qs) else None
        if watch is not None:
            self._watches.add(watch)
        response: web.StreamResponse | None = None
        try:
            async with self._session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                data=data or None,
                allow_redirects=False,
            ) as upstream:
                if watch is not None:
                    watch.upstream = upstream
                entry.status = upstream.status
                response = web.StreamResponse(
                    status=upstream.status,
                    headers={
                        k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
                    },
                )
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    if watch is not None and (watch.dropped or self._silent):
                        continue  # a silent connection loses what the server sends
                    await response.write(chunk)
                if watch is None or not watch.dropped:
                    await response.write_eof()
                return response
        except (aiohttp.ClientError, ConnectionError) as exc:
            if response is not None:
                return response  # dropped, or the client went away: nothing more to say
            entry.status = 502
            return web.Response(status=502, text=f"proxy: upstream failed: {exc}")
        finally:
            if watch is not None:
                with contextlib.suppress(KeyError):
                    self._watches.remove(watch)
