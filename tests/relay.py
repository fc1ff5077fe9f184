"""A TCP relay on loopback that can stop a request in the middle of its body.

TLS passes through untouched (the relay never sees a byte in clear): the client still checks the
agent's certificate and the agent still sees the client's token. :meth:`Relay.hold_after` arms
the relay once: the first connection (open or new) whose client has sent more than ``after``
bytes since it connected gets exactly ``after`` bytes forwarded, the rest is held back (not
read, so the client's send blocks as on a slow link) and :attr:`Relay.holding` is set. A test
then knows that the server has received part of that request, not all of it, and can kill the
server at that moment. When the server side closes (killed), the client's connection is closed
too. Unarmed, and once one connection is held, bytes pass through as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

_CHUNK = 64 * 1024


class Relay:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream>``; :meth:`serving` runs it."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.holding = asyncio.Event()
        self._after: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def hold_after(self, after: int) -> None:
        """Hold the first connection that sends more than ``after`` bytes, from then on."""
        self._after = after
        self.holding.clear()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold: bool
    ) -> None:
        sent = 0
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(_CHUNK):
                after = self._after
                if hold and after is not None and sent + len(data) > after:
                    self._after = None  # one connection only
                    writer.write(data[: after - sent])
                    await writer.drain()
                    self.holding.set()
                    await asyncio.Future()  # until cancelled: the rest is never read
                writer.write(data)
                await writer.drain()
                sent += len(data)
            writer.write_eof()  # a half-close passed on: the answer may still come back

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            client_w.close()  # nothing listens (the server is down): the client sees it at once
            return
        up = asyncio.ensure_future(self._pipe(client_r, server_w, hold=True))
        try:
            # Until the server's side ends (answered and closed, or killed): then the client's
            # connection ends too, a held request included.
            await self._pipe(server_r, client_w, hold=False)
        finally:
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)
            client_w.close()
            server_w.close()

    def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Relay]:
        """Listen on a free loopback port (:attr:`port`) for the block."""
        server = await asyncio.start_server(self._track, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()
