"""The agent's listening socket: connection caps and a TLS handshake timeout.

aiohttp bounds the rest (see :func:`adapters.agent.command.serve`): header size and count,
and, with its keep-alive timeout, the time from a connection's start (or its last answer) to a
complete request head. What it does not bound, :class:`GuardedSite` does, before aiohttp sees
a connection:

* **Connections per peer address** (``per_peer``): one more is closed at once.
* **Connections in all** (``total``): when all are taken, a newcomer whose peer has fewer
  connections than the busiest peer takes the oldest of that peer's (evicted), else it is closed
  at once. A flood from a few addresses thus never locks out a client with one or two
  connections, such as the controller or the kubelet's probes.
* **The TLS handshake** must finish within ``handshake_timeout`` seconds.
* **Out of file descriptors** (``EMFILE``): accepting pauses briefly instead of spinning; the
  warning is written once per kind and interval (:class:`adapters.logs.RepeatFilter`), not per
  attempt.

A connection refused here costs one ``accept`` and one ``close``: no handshake, no buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

log = logging.getLogger("winspec.agent")

_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_PAUSE = 0.1


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How many connections the agent holds open, and how long a TLS handshake may take."""

    total: int
    per_peer: int
    handshake_timeout: float


class _Connection(asyncio.Protocol):
    """Passes every callback on to aiohttp's handler; tells the site when the connection ends."""

    def __init__(self, inner: asyncio.Protocol, peer: str, release: Callable[[Any], None]) -> None:
        self._inner = inner
        self.peer = peer
        self._release = release
        self.transport: asyncio.BaseTransport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._release(self)

    def close(self) -> None:
        """End the connection now (before or after its handshake)."""
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]  # a Transport, from asyncio
        elif self.task is not None:
            self.task.cancel()


class GuardedSite(web.BaseSite):
    """A TCP site that accepts connections itself, within :class:`ConnectionLimits`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        limits: ConnectionLimits,
        on_count: Callable[[int], None] = lambda _: None,
        on_refused: Callable[[str], None] = lambda _: None,
    ) -> None:
        """``on_count`` is told the number of open connections whenever it changes,
        ``on_refused`` the reason of each connection closed by a limit."""
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._limits = limits
        self._on_count = on_count
        self._on_refused = on_refused
        self._socket: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        # peer -> its connections, oldest first (dicts keep insertion order)
        self._peers: dict[str, dict[_Connection, None]] = {}
        self._open = 0

    @property
    def name(self) -> str:
        """The site's URL."""
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        """Bind and listen (an ``OSError`` when the address is unusable), then accept."""
        await super().start()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._port), family=family, backlog=self._backlog)
        sock.setblocking(False)
        self._socket = sock
        self._accepting = asyncio.create_task(self._accept(sock))

    async def stop(self) -> None:
        """Stop accepting and drop handshakes in progress; aiohttp ends the rest."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        if self._socket is not None:
            self._socket.close()
        pending = [
            c.task
            for conns in self._peers.values()
            for c in conns
            if c.transport is None and c.task is not None
        ]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await super().stop()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._on_refused("no_descriptor")
                    log.warning(
                        "cannot accept connections: out of file descriptors",
                        extra={"error": exc.strerror, "open": self._open},
                    )
                else:
                    log.warning("cannot accept a connection", extra={"error": str(exc)})
                await asyncio.sleep(_ACCEPT_PAUSE)
                continue
            self._admit(conn, str(address[0]))

    def _admit(self, conn: socket.socket, peer: str) -> None:
        limits = self._limits
        mine = self._peers.get(peer, {})
        if len(mine) >= limits.per_peer:
            self._refuse(conn, peer, "peer_limit")
            return
        if self._open >= limits.total:
            busiest = max(self._peers.values(), key=len)
            if len(busiest) <= len(mine) + 1:
                self._refuse(conn, peer, "limit")
                return
            victim = next(iter(busiest))
            self._on_refused("evicted")
            log.info("connection evicted for another peer's", extra={"peer": victim.peer})
            self._release(victim)
            victim.close()
        conn.setblocking(False)
        server = self._runner.server
        assert server is not None  # BaseSite checks it at construction
        connection = _Connection(server(), peer, self._release)
        self._peers.setdefault(peer, {})[connection] = None
        self._open += 1
        self._on_count(self._open)
        connection.task = asyncio.create_task(self._serve(conn, connection))

    def _refuse(self, conn: socket.socket, peer: str, reason: str) -> None:
        conn.close()
        self._on_refused(reason)
        log.warning(
            "connection refused: too many connections",
            extra={"peer": peer, "reason": reason, "open": self._open},
        )

    def _release(self, connection: _Connection) -> None:
        conns = self._peers.get(connection.peer)
        if conns is None or connection not in conns:
            return  # released already
        del conns[connection]
        if not conns:
            del self._peers[connection.peer]
        self._open -= 1
        self._on_count(self._open)

    async def _serve(self, conn: socket.socket, connection: _Connection) -> None:
        loop = asyncio.get_running_loop()
        context = self._ssl_context
        try:
            await loop.connect_accepted_socket(
                lambda: connection,
                conn,
                ssl=context,
                ssl_handshake_timeout=self._limits.handshake_timeout if context else None,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            # A client that never finished its handshake, or a failed one: nothing to answer.
            # (asyncio has closed the socket, or closes it once what it wrote is flushed.)
            self._release(connection)
            log.debug("TLS handshake failed", extra={"peer": connection.peer, "error": str(exc)})
        except asyncio.CancelledError:
            self._release(connection)
            raise
        finally:
            connection.task = None
