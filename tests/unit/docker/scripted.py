"""A scripted Docker engine: a real aiohttp server whose answers each test sets per path.

Real HTTP (over TCP on 127.0.0.1 or a unix socket), so the client under test goes through its
whole stack: connector, request, status mapping, retries. Handlers are cancelled when the
client goes away, so a held-open ``/events`` stream never delays the server's shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], web.StreamResponse | Awaitable[web.StreamResponse]]


@dataclass
class ScriptedEngine:
    """A real HTTP server whose answers the test scripts, one list of handlers per path."""

    host: str = ""
    script: dict[str, list[Handler]] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)

    def on(self, path: str, *answers: Handler) -> None:
        """Answer requests for ``path`` with ``answers`` in turn, repeating the last one."""
        self.script[path] = list(answers)

    def hits(self, path: str) -> int:
        """How many requests arrived for ``path``."""
        return self.seen.count(path)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Dispatch one request to the next scripted handler of its path (404 when none)."""
        path = request.path
        self.seen.append(path)
        answers = self.script.get(path)
        if not answers:
            return web.json_response({"message": f"no route {path}"}, status=404)
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        result = answer(request)
        return await result if inspect.isawaitable(result) else result


def answer_json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    """A handler that answers ``body`` as JSON with ``status``."""

    def handler(_request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status, headers=headers)

    return handler


@contextlib.asynccontextmanager
async def serving(
    engine: ScriptedEngine, *, unix_socket: Path | None = None
) -> AsyncIterator[None]:
    """Serve ``engine`` on 127.0.0.1 at a free port, or on ``unix_socket``; sets its host."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", engine.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
    await runner.setup()
    try:
        if unix_socket is not None:
            await web.UnixSite(runner, str(unix_socket)).start()
            engine.host = f"unix://{unix_socket}"
        else:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            engine.host = f"tcp://127.0.0.1:{runner.addresses[0][1]}"
        yield
    finally:
        await runner.cleanup()


def event_stream(
    events: list[dict[str, Any]], *, hold: float, ended: list[str] | None = None
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An /events handler: send ``events`` as JSON lines, keep the stream open ``hold`` s, end.

    When the client goes away first the handler is cancelled; ``ended`` then gets "cancelled"
    (else "finished"), so a test can tell that the client really closed its stream.
    """

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            for event in events:
                await response.write(json.dumps(event).encode() + b"\n")
            await asyncio.sleep(hold)
            await response.write_eof()
        except asyncio.CancelledError:
            if ended is not None:
                ended.append("cancelled")
            raise
        if ended is not None:
            ended.append("finished")
        return response

    return handler
