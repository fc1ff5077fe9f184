"""Planted secret values never leave their payload files.

A swarm secret, a swarm config and a ``file://`` gMSA credential spec, each holding a distinctive
random value, reach containers through ``winspec run --log-level debug`` (a real child process;
the credential spec through :class:`~tests.integration.engine_proxy.WindowsViewProxy`, since a
Linux engine refuses the option). Then neither the value nor its base64, hex or SHA-256 forms
may appear in the log, in ``/metrics``, or in any file of the bundle root but the payload file
it belongs in (``secrets/<id>``, ``configs/<id>``, and for the credential spec ``config.json``,
where Docker itself puts it). The values must be in those files, or the test proves nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import urllib.request
from pathlib import Path

import pytest

from tests.dockerd import DockerDaemon
from tests.integration.engine_proxy import WindowsViewProxy
from tests.integration.winspec_process import WinspecProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.docker


def forms(value: bytes) -> dict[str, bytes]:
    """The value and the encodings it could leak in, each long enough to be unmistakable."""
    found = {
        "raw": value,
        "hex": value.hex().encode(),
        "HEX": value.hex().upper().encode(),
        "sha256": hashlib.sha256(value).hexdigest().encode(),
        "sha256-base64": base64.b64encode(hashlib.sha256(value).digest()).rstrip(b"="),
        "json-escaped": json.dumps(value.decode()).strip('"').encode(),
    }
    # Inside a longer base64 text the value may start at any of three byte offsets; the
    # characters that depend on the neighbouring bytes are cut off.
    for offset in range(3):
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            text = encode(b"\0" * offset + value)
            found[f"{name}@{offset}"] = text[4 if offset else 0 : -4]
    return found


def leaks(data: bytes, values: dict[str, bytes]) -> list[str]:
    """``value/form`` for every form of every value found in ``data``."""
    return [
        f"{name}/{form}"
        for name, value in values.items()
        for form, needle in forms(value).items()
        if needle in data
    ]


@pytest.mark.timeout(180)
async def test_planted_secrets_appear_only_in_their_payload_files(
    dockerd: DockerDaemon, tmp_path: Path
) -> None:
    """Secret, config and credential spec values are in no log line, metric or other file."""
    token = secrets.token_hex(12)
    values = {
        "secret": f"leak-secret-{token}-{secrets.token_hex(8)}".encode(),
        "config": f"leak-config-{token}-{secrets.token_hex(8)}".encode(),
        "credspec": f"leak-credspec-{token}-{secrets.token_hex(8)}".encode(),
    }
    credspec_doc = json.dumps(
        {
            "CmsPlugins": ["ActiveDirectory"],
            "DomainJoinConfig": {"Sid": values["credspec"].decode(), "DnsName": "example.test"},
        }
    )
    spec_dir = Path(dockerd.data_root) / "CredentialSpecs"
    spec_dir.mkdir(exist_ok=True)
    spec_file = f"leak-{token}.json"
    (spec_dir / spec_file).write_text(credspec_doc)
    secret_name, config_name = f"leak-secret-{token}", f"leak-config-{token}"
    secret_id = dockerd.create_secret(secret_name, values["secret"])
    config_id = dockerd.create_config(config_name, values["config"])

    name_prefix = f"/leak-credspec-{token}"
    proxy = WindowsViewProxy(
        dockerd.socket_path, {name_prefix: f"credentialspec=file://{spec_file}"}
    )
    proc = WinspecProcess(dockerd, tmp_path, "--log-level", "debug", "--log-format", "json")
    (proc.secrets_dir / secret_name).write_bytes(values["secret"])
    service_id = ""
    cids: list[str] = []
    try:
        async with proxy.serving(tmp_path / "proxy.sock") as host:
            proc.docker_host = host
            await asyncio.to_thread(proc.start)
            await asyncio.to_thread(proc.wait_ready)
            service_id = await asyncio.to_thread(
                dockerd.create_service,
                f"leak-svc-{token}",
                secrets=[(secret_name, "app-secret")],
                configs=[(config_name, "C:\\app\\app.conf")],
            )
            task = await asyncio.to_thread(dockerd.wait_for_task_container, service_id)
            cids.append(task["Status"]["ContainerStatus"]["ContainerID"])
            cids.append(await asyncio.to_thread(dockerd.create_container, name_prefix[1:]))
            for cid in cids:
                await _wait_file(proc, proc.root / cid / "config.json")
            await asyncio.sleep(1.0)  # let debug logging of later events happen too
            metrics = await asyncio.to_thread(_get, f"{proc.url}/metrics")
            assert await asyncio.to_thread(proc.stop) == 0, proc.log_tail()
    finally:
        proc.close()
        if service_id:
            await asyncio.to_thread(dockerd.remove_service, service_id)
        for cid in cids[1:]:
            await asyncio.to_thread(dockerd.remove_container, cid)

    task_bundle, credspec_bundle = (proc.root / cid for cid in cids)
    allowed = {
        task_bundle / "secrets" / secret_id: "secret",
        task_bundle / "configs" / config_id: "config",
        credspec_bundle / "config.json": "credspec",
    }
    # Not vacuous: each value is where it belongs, and the log is the debug one.
    for path, name in allowed.items():
        assert values[name] in path.read_bytes(), f"{name} missing from {path}"
    log = proc.log.read_bytes()
    assert b'"level": "debug"' in log or b'"level":"debug"' in log, proc.log_tail()

    found = {"log": leaks(log, values), "/metrics": leaks(metrics, values)}
    for path in sorted(proc.root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            others = {n: v for n, v in values.items() if allowed.get(path) != n}
            found[str(path.relative_to(proc.root))] = leaks(path.read_bytes(), others)
    assert {where: what for where, what in found.items() if what} == {}


async def _wait_file(proc: WinspecProcess, path: Path, within: float = 60.0) -> None:
    def written() -> bool:
        proc.check_alive()
        return path.is_file()

    await eventually(written, within=within, what=str(path), in_thread=True)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body
