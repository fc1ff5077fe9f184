"""FIFOs named by credential specs against a real dockerd: bundles go on, SIGTERM exits in time.

Issue 6, finding 4: four containers naming FIFOs in ``file://`` credential specs blocked every
worker and SIGTERM no longer ended ``winspec run``. A Linux dockerd refuses ``--security-opt
credentialspec=…`` at create ("invalid --security-opt 2") and Windows images, so the real
engine's answers pass through a small proxy that shows what a Windows engine would: a
container's ``winspec.test.security-opt`` label as its ``HostConfig.SecurityOpt``, its
``winspec.test.layer-dir`` label as a ``windowsfilter`` layer directory, and every image as a
Windows image. Everything else — containers, lists, events, the ``winspec run`` process, the
FIFOs — is real.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from adapters.runtime import SHUTDOWN_MARGIN_SECONDS
from tests.dockerd import PAUSE_COMMAND, DockerDaemon
from tests.processes import REPO, clean_env, free_port, winspec_run_command
from tests.support.waiting import eventually

pytestmark = [pytest.mark.docker, pytest.mark.skipif(os.name == "nt", reason="POSIX FIFOs")]

SECURITY_OPT_LABEL = "winspec.test.security-opt"
LAYER_DIR_LABEL = "winspec.test.layer-dir"
SHUTDOWN_TIMEOUT = 1.0
_CONTAINER_INSPECT = re.compile(r"^(/v[0-9.]+)?/containers/[^/]+/json$")
_IMAGE_INSPECT = re.compile(r"^(/v[0-9.]+)?/images/.+/json$")
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding"}


def _as_windows_engine_shows_it(path: str, body: bytes) -> bytes:
    """Rewrite an inspect as a Windows engine would answer it (see the module docstring)."""
    doc = json.loads(body)
    if _IMAGE_INSPECT.match(path):
        doc["Os"] = "windows"
    elif _CONTAINER_INSPECT.match(path):
        labels = (doc.get("Config") or {}).get("Labels") or {}
        if SECURITY_OPT_LABEL in labels:
            doc["HostConfig"]["SecurityOpt"] = [labels[SECURITY_OPT_LABEL]]
        if LAYER_DIR_LABEL in labels:
            doc["GraphDriver"] = {"Name": "windowsfilter", "Data": {"dir": labels[LAYER_DIR_LABEL]}}
    return json.dumps(doc).encode()


@asynccontextmanager
async def windows_view(engine: DockerDaemon, socket_path: Path) -> AsyncIterator[str]:
    """Serve ``engine`` through the rewriting proxy on ``socket_path``; its host URL."""
    session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=engine.socket_path))

    async def forward(request: web.Request) -> web.StreamResponse:
        upstream = await session.request(
            request.method,
            f"http://docker{request.rel_url}",
            data=await request.read(),
            headers={k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS},
            timeout=aiohttp.ClientTimeout(total=None),
        )
        async with upstream:
            headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            rewrite = request.method == "GET" and (
                _CONTAINER_INSPECT.match(request.path) or _IMAGE_INSPECT.match(request.path)
            )
            if rewrite and upstream.status == 200:
                body = _as_windows_engine_shows_it(request.path, await upstream.read())
                return web.Response(status=200, body=body, headers=headers)
            response = web.StreamResponse(status=upstream.status, headers=headers)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():  # /events streams
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
    await runner.setup()
    try:
        await web.UnixSite(runner, str(socket_path)).start()
        yield f"unix://{socket_path}"
    finally:
        await runner.cleanup()
        await session.close()


@pytest.mark.timeout(120)
async def test_fifo_credential_specs_stop_no_bundle_and_sigterm_exits_in_time(
    dockerd: DockerDaemon, tmp_path: Path
) -> None:
    """Four FIFO credential specs are refused at once; with a stuck thread, SIGTERM is in time."""
    root = tmp_path / "docker"
    (root / "CredentialSpecs").mkdir(parents=True)
    (root / "layer").mkdir()
    os.mkfifo(root / "layer" / "layerchain.json")  # open() blocks on it: a thread stuck for ever
    (tmp_path / "secrets").mkdir()
    tag = uuid.uuid4().hex[:8]
    labelled: dict[str, dict[str, str]] = {}
    for i in range(4):
        os.mkfifo(root / "CredentialSpecs" / f"fifo{i}.json")
        labelled[f"winspec-fifo{i}-{tag}"] = {
            SECURITY_OPT_LABEL: f"credentialspec=file://fifo{i}.json"
        }
    labelled[f"winspec-stuck-{tag}"] = {LAYER_DIR_LABEL: str(root / "layer")}
    ids = {
        name: await asyncio.to_thread(
            dockerd.create_container, name, Cmd=list(PAUSE_COMMAND), Labels=labels
        )
        for name, labels in labelled.items()
    }
    log = tmp_path / "winspec.log"
    try:
        async with windows_view(dockerd, tmp_path / "windows.sock") as host:
            command = winspec_run_command(
                *("--docker-host", host, "--bundle-root", str(tmp_path / "bundles")),
                *("--secrets-dir", str(tmp_path / "secrets"), "--daemon-root", str(root)),
                *("--listen", f"127.0.0.1:{free_port()}", "--log-format", "console"),
                *("--shutdown-timeout", str(SHUTDOWN_TIMEOUT)),
            )
            with log.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    *command, cwd=REPO, env=clean_env(), stdout=out, stderr=subprocess.STDOUT
                )
            try:
                await _eventually(
                    lambda: log.read_text().count("is a FIFO") >= 4, 30, "four FIFO refusals", log
                )
                # Created now, with every hostile container in: its bundle is still written.
                ids["plain"] = await asyncio.to_thread(
                    dockerd.create_container, f"winspec-plain-{tag}", Cmd=list(PAUSE_COMMAND)
                )
                plain = tmp_path / "bundles" / ids["plain"] / "config.json"
                await _eventually(plain.is_file, 30, "the plain container's bundle", log)
                stopping = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                returncode = await asyncio.wait_for(proc.wait(), timeout=30)
                took = time.monotonic() - stopping
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    finally:
        for container_id in ids.values():
            await asyncio.to_thread(dockerd.remove_container, container_id)
    output = log.read_text()
    assert returncode == 0, output
    assert took < SHUTDOWN_TIMEOUT + SHUTDOWN_MARGIN_SECONDS, (took, output)
    for name, container_id in ids.items():
        if "fifo" in name:
            assert not (tmp_path / "bundles" / container_id).exists()
    assert "Traceback" not in output


async def _eventually(condition: Callable[[], object], within: float, what: str, log: Path) -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds showing the log."""
    try:
        await eventually(condition, within=within, what=what)
    except TimeoutError as exc:
        tail = (await asyncio.to_thread(log.read_text))[-4000:]
        raise AssertionError(f"{exc}:\n{tail}") from None
