"""`winspec run` start-up and stop: bad settings, a busy port, TLS files, a signal while the
engine is still being reached. None of these needs an engine; the process tests run the real
console entry point in a child process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from adapters.cli import main
from tests.processes import clean_env, free_port, http_status, winspec_run_command

ROOT = Path(__file__).resolve().parents[3]
NO_ENGINE = "unix:///nonexistent/winspec-test/docker.sock"


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("winspec: "), stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "127.0.0.1:99999"], "listen must be HOST:PORT with a port from 0 to 65535"),
        (["--listen", "localhost"], "listen must be HOST:PORT"),
        (["--listen", "::1:8080"], "listen must be HOST:PORT"),
        (["--docker-host", "tcp://docker.example:abc"], "the port must be a number from 1"),
        (["--docker-host", "tcp://docker.example:70000"], "the port must be a number from 1"),
        (["--docker-host", "ftp://docker.example"], "expected unix://, npipe:// or tcp://"),
        (["--swarm-host", "tcp://manager.example:abc"], "the port must be a number from 1"),
        (["--cpu-count", "0"], "cpu_count must be at least 1"),
        (["--windows-build", "-1"], "windows_build must not be negative"),
        (["--workers", "0"], "workers must be at least 1"),
        (["--shutdown-timeout", "nan"], "shutdown_timeout must be a positive number"),
        (["--resync-interval", "0"], "resync_interval must be a positive number"),
    ],
)
def test_bad_settings_exit_2_with_one_line_before_connecting(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bad setting is refused with one stderr line and exit code 2, before any connection."""
    for name in list(os.environ):
        if name.startswith(("WINSPEC_", "DOCKER_")):
            monkeypatch.delenv(name)
    defaults = ["--docker-host", NO_ENGINE, "--retry-attempts", "1"]
    rc = main(["run", "--bundle-root", str(tmp_path), *defaults, *args])
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert message in _one_line(err)
    assert out == ""


def test_busy_listen_port_exits_1_with_one_line(tmp_path: Path) -> None:
    """A --listen port already in use exits 1 with one stderr line naming the address."""
    # The port is checked before the engine is tried (which would fail differently).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            winspec_run_command(
                "--docker-host",
                NO_ENGINE,
                "--bundle-root",
                str(tmp_path / "bundles"),
                "--listen",
                f"127.0.0.1:{port}",
            ),
            cwd=ROOT,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 1, proc.stderr
    line = _one_line(proc.stderr)
    assert line.startswith(f"winspec: cannot listen on 127.0.0.1:{port}: ")
    assert "address already in use" in line
    assert "Traceback" not in proc.stderr


def test_missing_tls_files_exit_2_with_one_line(tmp_path: Path) -> None:
    """DOCKER_TLS_VERIFY=1 with no ca.pem in DOCKER_CERT_PATH exits 2 with one stderr line."""
    # The line names the file, with no traceback; exit 2 because it is a setting to fix.
    certs = tmp_path / "certs"
    certs.mkdir()
    env = clean_env() | {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs)}
    proc = subprocess.run(
        winspec_run_command(
            "--docker-host",
            "tcp://127.0.0.1:9",
            "--bundle-root",
            str(tmp_path / "bundles"),
            "--listen",
            "127.0.0.1:0",
        ),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert "cannot load the CA certificate" in line
    assert str(certs / "ca.pem") in line
    assert "Traceback" not in proc.stderr


def _healthz(port: int) -> int | None:
    return http_status(f"http://127.0.0.1:{port}/healthz")


def test_sigterm_while_the_engine_is_unreachable_exits_0_at_once(tmp_path: Path) -> None:
    """SIGTERM while start-up retries an unreachable engine makes `winspec run` exit 0 at once."""
    # Exit 0: it is a stop that was asked for; at once, not after the retries. /healthz is
    # answered meanwhile.
    port = free_port()
    proc = subprocess.Popen(
        winspec_run_command(
            "--docker-host",
            NO_ENGINE,
            "--retry-attempts",
            "1000",
            "--bundle-root",
            str(tmp_path / "bundles"),
            "--listen",
            f"127.0.0.1:{port}",
        ),
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while _healthz(port) != 200:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "never served /healthz"
            time.sleep(0.05)
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
        took = time.monotonic() - stopping
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert took < 5
    assert "Traceback" not in err
    assert "stop asked for before the Docker engine was reached" in err


def test_an_unreachable_engine_is_logged_at_the_first_failed_attempt(tmp_path: Path) -> None:
    """The tour without an engine: stderr says why at the first failure, also if stopped then."""
    port = free_port()
    log = tmp_path / "stderr"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            winspec_run_command(
                "--docker-host",
                NO_ENGINE,
                "--retry-attempts",
                "1000",  # still retrying when the user, having seen only zeros, stops it
                "--bundle-root",
                str(tmp_path / "bundles"),
                "--listen",
                f"127.0.0.1:{port}",
                "--log-format",
                "console",
            ),
            cwd=ROOT,
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
        )
    try:
        deadline = time.monotonic() + 20
        while "cannot reach the Docker engine yet" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"nothing said within 20 s: {log.read_text()!r}"
            time.sleep(0.05)
        assert http_status(f"http://127.0.0.1:{port}/metrics") == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = log.read_text()
    warning = next(line for line in err.splitlines() if "cannot reach the Docker engine" in line)
    assert "[warning" in warning
    assert f"docker_host={NO_ENGINE}" in warning
    assert "No such file or directory" in warning
    assert err.count("cannot reach the Docker engine yet") == 1
    assert "stop asked for before the Docker engine was reached" in err
