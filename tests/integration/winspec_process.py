"""``winspec run`` as a real child process against a test engine, and what the suites check it
against: its probes, its metrics and the bundles the resolver and generator give right now.

:class:`WinspecProcess` starts, kills and restarts the process (a fresh port each time, output
appended to one log file). :func:`expected_bundles` resolves and generates every container of
the engine in this process, through the same resolver, generator and bundle builder the
controller uses, so a test can compare a bundle root with it byte for byte.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from adapters.bundles.local import DIGEST_FILE, KEY_FILE, OLD_PREFIX, TEMP_PREFIX
from adapters.docker.client import DockerClient
from adapters.docker.resolver import DockerRequestResolver, node_facts_from_info
from adapters.docker.types import Info, decode
from controller.bundle import BundleContent, build_bundle
from controller.errors import PermanentError
from controller.generate import generate
from controller.models import NodeSettings
from tests.dockerd import DockerDaemon
from tests.processes import REPO, clean_env, free_port, http_status, winspec_run_command
from tests.support.waiting import wait_for


class WinspecProcess:
    """One ``winspec run`` against ``engine`` with a fixed bundle root and secrets directory."""

    def __init__(
        self, engine: DockerDaemon, tmp_path: Path, *extra: str, docker_host: str | None = None
    ) -> None:
        """``extra``: more options; ``docker_host``: where to reach the engine (a proxy)."""
        self.engine = engine
        self.docker_host = docker_host or engine.host
        self.root = tmp_path / "bundles"
        self.secrets_dir = tmp_path / "secrets"
        self.secrets_dir.mkdir(exist_ok=True)
        self.log = tmp_path / "winspec.log"
        self.extra = extra
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process (on a new port); it is not ready yet."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.port = free_port()
        command = winspec_run_command(
            "--docker-host",
            self.docker_host,
            "--bundle-root",
            str(self.root),
            "--secrets-dir",
            str(self.secrets_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--log-format",
            "console",
            "--shutdown-timeout",
            "5",
            *self.extra,
        )
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                command, cwd=REPO, env=clean_env(), stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def url(self) -> str:
        """Base URL of its /metrics, /healthz and /readyz."""
        return f"http://127.0.0.1:{self.port}"

    def readyz(self) -> int | None:
        """The status of /readyz (``None`` while nothing listens)."""
        return http_status(f"{self.url}/readyz")

    def wait_ready(self, within: float = 60.0) -> None:
        """Wait until /readyz answers 200; fail if the process exits or time runs out."""

        def ready() -> bool:
            self.check_alive()
            return self.readyz() == 200

        try:
            wait_for(ready, within, interval=0.05, what="/readyz to answer 200")
        except TimeoutError:
            raise AssertionError(f"never ready:\n{self.log_tail()}") from None

    def check_alive(self) -> None:
        """Fail (with the log) if the process has exited."""
        assert self.proc is not None
        code = self.proc.poll()
        assert code is None, f"winspec run exited with {code}:\n{self.log_tail()}"

    def kill(self) -> None:
        """SIGKILL the process and reap it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM the process; its exit code (it is killed if it overruns ``timeout``)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, by ``name{labels}`` (labels sorted), summed by that key."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                key = f"{sample.name}{{{labels}}}"
                samples[key] = samples.get(key, 0.0) + sample.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """The sum of every sample called ``name`` whose labels include ``labels``."""
        wanted = [f"{k}={v}" for k, v in labels.items()]
        return sum(
            value
            for key, value in self.metrics().items()
            if key.split("{", 1)[0] == name and all(w in key for w in wanted)
        )

    def log_tail(self, lines: int = 60) -> str:
        """The end of the log (every run appended)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def close(self) -> None:
        """Kill the process if it still runs (clean-up after a failed test)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def expected_bundles(
    engine: DockerDaemon, root: Path, secrets_dir: Path
) -> dict[str, BundleContent | None]:
    """What the bundle of every container of the engine must be now, by container id.

    Resolved and generated in this process with the controller's own code and default node
    settings; ``None`` for a container the rules refuse (it must have no bundle). A container
    removed while this runs is left out.
    """
    expected: dict[str, BundleContent | None] = {}
    async with DockerClient(engine.host) as client:
        await client.negotiate()
        info = decode(await client.get_raw("/info", api="info"), Info, "/info")
        resolver = DockerRequestResolver(
            client,
            node=node_facts_from_info(info, NodeSettings()),
            bundle_root=str(root),  # absolute, as the controller makes it
            secrets_dir=secrets_dir,
            swarm_worker=info.swarm_worker,
        )
        listed = engine.call("GET", "/containers/json", query={"all": "1"})
        for summary in listed:
            cid = summary["Id"]
            try:
                request = await resolver.resolve(cid)
                if request is None:
                    continue
                expected[cid] = build_bundle(request, generate(request))
            except PermanentError:
                expected[cid] = None
    return expected


def read_root(root: Path) -> tuple[dict[str, dict[str, bytes]], list[str]]:
    """The bundles below ``root`` (files by relative path, ``.digest`` included) and every other
    entry but the digest key (leftovers, links, stray files)."""
    bundles: dict[str, dict[str, bytes]] = {}
    others: list[str] = []
    for entry in sorted(os.listdir(root)):
        path = root / entry
        if entry == KEY_FILE:
            continue
        if entry.startswith((TEMP_PREFIX, OLD_PREFIX, ".")) or not path.is_dir():
            others.append(entry)
            continue
        files: dict[str, bytes] = {}
        for item in sorted(path.rglob("*")):
            relative = item.relative_to(path).as_posix()
            if item.is_symlink():
                others.append(f"{entry}/{relative} (a link)")
            elif item.is_file():
                files[relative] = item.read_bytes()
        bundles[entry] = files
    return bundles, others


def compare_root(root: Path, expected: dict[str, BundleContent | None]) -> list[str]:
    """Every way the bundle root differs from ``expected``; empty when it matches exactly.

    Each live container that the rules accept has exactly one bundle, its files byte for byte
    the expected ones plus a ``.digest`` that is the content's digest under the root's key;
    nothing else is there: no leftover, no bundle of a removed or refused container.
    """
    bundles, others = read_root(root)
    problems = [f"leftover or stray entry: {name}" for name in others]
    wanted = {cid: content for cid, content in expected.items() if content is not None}
    for cid in sorted(bundles.keys() - wanted.keys()):
        why = "refused by the rules" if cid in expected else "not live"
        problems.append(f"bundle of a container {why}: {cid[:12]}")
    for cid in sorted(wanted.keys() - bundles.keys()):
        problems.append(f"no bundle for live container {cid[:12]}")
    key = (root / KEY_FILE).read_bytes() if (root / KEY_FILE).exists() else b""
    for cid in sorted(wanted.keys() & bundles.keys()):
        files = dict(bundles[cid])
        digest = files.pop(DIGEST_FILE, b"").decode(errors="replace").strip()
        content = wanted[cid]
        assert content is not None
        if files.keys() != content.files.keys():
            problems.append(f"{cid[:12]}: files {sorted(files)} instead of {sorted(content.files)}")
        for name in sorted(files.keys() & content.files.keys()):
            if files[name] != content.files[name]:
                problems.append(f"{cid[:12]}: {name} differs from the generator's")
        if digest != content.keyed_digest(key):
            problems.append(f"{cid[:12]}: .digest is not the content's keyed digest")
    return problems


async def wait_consistent(proc: WinspecProcess, *, within: float, context: str = "") -> None:
    """Poll until ``proc``'s bundle root matches what the generator gives now (compared with
    :func:`compare_root`); fail with the differences and the log's end after ``within`` s."""
    deadline = time.monotonic() + within
    problems = ["not compared yet"]
    while time.monotonic() < deadline:
        proc.check_alive()
        expected = await expected_bundles(proc.engine, proc.root, proc.secrets_dir)
        problems = compare_root(proc.root, expected)
        if not problems:
            return
        await asyncio.sleep(0.5)
    shown = "\n".join(problems[:30])
    raise AssertionError(
        f"{context}the bundle root never matched ({len(problems)} problems):\n{shown}\n"
        f"--- log tail:\n{proc.log_tail()}"
    )
