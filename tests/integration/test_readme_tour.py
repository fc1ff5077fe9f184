"""The README's commands that need a real engine, run against the fixtures' private dockerd.

Each command runs as the README writes it, with only what is the reader's own replaced by the
test's: the engine socket (``unix:///var/run/docker.sock`` → the private engine's), the
directories under ``/tmp`` (→ ``tmp_path``) and the port 8080 (→ a free one).
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.dockerd import DockerDaemon, dockerd_unavailable_reason
from tests.processes import clean_env, free_port
from tests.readme_commands import ROOT, RUN_WITH_ENGINE, TOUR, argv
from tests.support.waiting import wait_for

LOCAL_ENGINE = "unix:///var/run/docker.sock"
DEV_RUN = next(c for c in RUN_WITH_ENGINE if c.startswith(".venv/bin/winspec run"))
BENCHMARKS = sorted(c for c in RUN_WITH_ENGINE if "tests.benchmarks." in c)


def _substitute(command: str, engine: DockerDaemon, tmp_path: Path, port: int) -> str:
    """The README command with the reader's socket, /tmp paths and port replaced by the test's."""
    # The /tmp paths first: the private engine's own socket may be under /tmp too.
    return (
        command.replace("/tmp/", f"{tmp_path}/")
        .replace(LOCAL_ENGINE, engine.host)
        .replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    )


def _metrics_line(command: str) -> str:
    """Run the README's curl | grep line; without curl, the same GET through urllib."""
    if shutil.which("curl") is not None:
        done = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, timeout=60, check=False
        )
        return done.stdout
    url = next(word for word in shlex.split(command) if word.startswith("http://"))
    with urllib.request.urlopen(url, timeout=10) as answer:
        text: str = answer.read().decode()
    return "\n".join(x for x in text.splitlines() if x.startswith("winspec_bundles_written_total"))


def _written(line_text: str) -> float:
    """The value of winspec_bundles_written_total{result="written"} in the grep output."""
    for line in line_text.splitlines():
        if line.startswith('winspec_bundles_written_total{result="written"}'):
            return float(line.split()[-1])
    return 0.0


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """What ``kill %1`` does to the backgrounded run: SIGTERM; its exit code."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.mark.docker
def test_the_tour_writes_bundles_and_shows_them_in_metrics(
    dockerd: DockerDaemon, tmp_path: Path
) -> None:
    """The README tour: run against an engine, curl /metrics shows a written bundle, ls lists it."""
    cid = dockerd.create_container(f"tour-{uuid.uuid4().hex[:8]}")
    port = free_port()
    run_line, curl_line, ls_line, kill_line = (
        _substitute(c, dockerd, tmp_path, port) for c in TOUR
    )
    assert run_line.endswith(" &")
    assert kill_line == "kill %1"
    proc = subprocess.Popen(
        argv(run_line.removesuffix(" &")),
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _written(_metrics_line(curl_line)) >= 1, 60, what="a bundle written")
        listed = subprocess.run(
            ["bash", "-c", ls_line], capture_output=True, text=True, timeout=30, check=True
        )
        assert cid in listed.stdout.split()
        assert (tmp_path / "winspec-bundles" / cid / "config.json").is_file()
    finally:
        code = _stop(proc)
    assert code == 0


@pytest.mark.docker
def test_the_development_run_example_writes_bundles(dockerd: DockerDaemon, tmp_path: Path) -> None:
    """The README's development `winspec run` example writes a bundle and stops cleanly (exit 0)."""
    cid = dockerd.create_container(f"devrun-{uuid.uuid4().hex[:8]}")
    (tmp_path / "granted-secrets").mkdir()
    port = free_port()
    proc = subprocess.Popen(
        argv(_substitute(DEV_RUN, dockerd, tmp_path, port)),
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: (tmp_path / "bundles" / cid / "config.json").is_file(),
            60,
            what="the bundle of the container",
        )
    finally:
        code = _stop(proc)
    assert code == 0


@pytest.mark.docker
@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", BENCHMARKS)
def test_the_engine_benchmarks_run(command: str, tmp_path: Path) -> None:
    """Each README benchmark that needs an engine runs (on a small scale) and prints figures."""
    reason = dockerd_unavailable_reason(probe=False)
    if reason is not None:
        if clean_env().get("CI", "").strip().lower() == "true":
            pytest.fail(f"dockerd is required when CI=true but unavailable: {reason}")
        pytest.skip(f"dockerd unavailable: {reason}")
    extra = RUN_WITH_ENGINE[command]
    if "bench_docker" in command:
        extra = (*extra, "--dir", str(tmp_path))
    proc = subprocess.run(
        argv(command, extra),
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "winspec" in proc.stdout
    assert "floor" in proc.stdout
