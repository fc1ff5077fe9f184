"""Blocking special files and stuck threads never stop bundles or the exit (issue 6, finding 4).

``winspec run`` runs as a real process against a scripted engine over real HTTP: a Linux
dockerd refuses ``--security-opt credentialspec=…`` at create ("invalid --security-opt 2") and
Windows images, so the inspects a Windows engine gives for such containers are scripted. The
FIFOs, the files and the process are real.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from adapters.compose import SHUTDOWN_MARGIN_SECONDS
from tests.processes import REPO, clean_env, free_port, winspec_run_command
from tests.unit.docker.scripted import ScriptedEngine, answer_json, eventually

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX FIFOs")

API = "/v1.41"
IMAGE_ID = "sha256:" + "3" * 64
FIFO_IDS = [f"{i:x}" * 64 for i in range(1, 5)]  # four containers naming FIFOs
STUCK_ID = "5" * 64  # a container whose layer chain is a FIFO: a thread stuck in open()
PLAIN_ID = "6" * 64  # an ordinary container: must get its bundle all the same
SHUTDOWN_TIMEOUT = 1.0


async def _held_open_events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await asyncio.sleep(3600)
    return response


def _inspect(container_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "Id": container_id,
        "Name": f"/c-{container_id[:6]}",
        "Path": "cmd.exe",
        "Image": IMAGE_ID,
        "HostConfig": {"NetworkMode": "none", **fields.pop("host_config", {})},
        "GraphDriver": {"Name": "vfs"},
        **fields,
    }


def _script(engine: ScriptedEngine, root: Path) -> None:
    """A Windows node's engine with FIFO-naming containers, a stuck one and a plain one."""
    engine.on("/version", answer_json({"ApiVersion": "1.43"}))
    engine.on(
        f"{API}/info",
        answer_json({"OSType": "linux", "NCPU": 2, "DockerRootDir": str(root)}),
    )
    engine.on(f"{API}/events", _held_open_events)
    ids = [*FIFO_IDS, STUCK_ID, PLAIN_ID]
    engine.on(f"{API}/containers/json", answer_json([{"Id": i} for i in ids]))
    for i, cid in enumerate(FIFO_IDS):
        opts = [f"credentialspec=file://fifo{i}.json"]
        engine.on(
            f"{API}/containers/{cid}/json",
            answer_json(_inspect(cid, host_config={"SecurityOpt": opts})),
        )
    stuck = _inspect(
        STUCK_ID, GraphDriver={"Name": "windowsfilter", "Data": {"dir": str(root / "layer")}}
    )
    engine.on(f"{API}/containers/{STUCK_ID}/json", answer_json(stuck))
    engine.on(f"{API}/containers/{PLAIN_ID}/json", answer_json(_inspect(PLAIN_ID)))
    engine.on(
        f"{API}/images/{IMAGE_ID}/json",
        answer_json({"Id": IMAGE_ID, "Os": "windows", "RootFS": {"Layers": ["sha256:base"]}}),
    )


@pytest.mark.timeout(60)
async def test_fifos_stop_no_bundle_and_sigterm_exits_within_the_bound(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """FIFO credential specs are refused at once; with a thread stuck, SIGTERM exits in time."""
    root = tmp_path / "docker"
    (root / "CredentialSpecs").mkdir(parents=True)
    (root / "layer").mkdir()
    for i in range(len(FIFO_IDS)):
        os.mkfifo(root / "CredentialSpecs" / f"fifo{i}.json")
    os.mkfifo(root / "layer" / "layerchain.json")  # open() blocks on it: a stuck thread
    (tmp_path / "secrets").mkdir()
    _script(engine, root)
    log = tmp_path / "winspec.log"
    command = winspec_run_command(
        *("--docker-host", engine.host, "--bundle-root", str(tmp_path / "bundles")),
        *("--secrets-dir", str(tmp_path / "secrets"), "--listen", f"127.0.0.1:{free_port()}"),
        *("--log-format", "console", "--shutdown-timeout", str(SHUTDOWN_TIMEOUT)),
    )
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *command, cwd=REPO, env=clean_env(), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        plain = tmp_path / "bundles" / PLAIN_ID / "config.json"
        await eventually(plain.is_file, within=20.0)
        await eventually(lambda: log.read_text().count("is a FIFO") >= len(FIFO_IDS), within=5)
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(proc.wait(), timeout=20)
        took = time.monotonic() - stopping
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = log.read_text()
    assert returncode == 0, output
    assert took < SHUTDOWN_TIMEOUT + SHUTDOWN_MARGIN_SECONDS, (took, output)
    for cid in FIFO_IDS:
        assert not (tmp_path / "bundles" / cid).exists()
    assert "Traceback" not in output


_STUCK_SCRIPT = textwrap.dedent(
    """
    import asyncio, threading, time
    from adapters.run import run_loop

    async def main():
        loop = asyncio.get_running_loop()
        stuck = loop.run_in_executor(None, threading.Event().wait)  # never returns
        done = await asyncio.to_thread(lambda: "other work still runs")
        print(done, flush=True)
        await asyncio.wait({stuck}, timeout=0.1)

    started = time.monotonic()
    run_loop(main())
    print(f"returned after {time.monotonic() - started:.2f}", flush=True)
    """
)


@pytest.mark.timeout(30)
def test_a_thread_stuck_for_ever_does_not_hold_up_the_exit() -> None:
    """run_loop returns and the process exits at once although an executor thread never ends."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _STUCK_SCRIPT],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "other work still runs" in done.stdout
    assert "returned after" in done.stdout
    assert time.monotonic() - started < 10
