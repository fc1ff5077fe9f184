"""The node agent as a real child process for tests, with TLS material the test makes.

:func:`make_tls` writes a CA and a server certificate for 127.0.0.1/localhost with openssl
(as tests/kube.py does for the API server); :class:`AgentProcess` runs ``winspec agent`` on a
free loopback port with them and waits until ``/readyz`` answers 200 (which needs the API
server to accept the agent's own TokenReview), and can be killed and started again on the same
port and bundle root.
"""

from __future__ import annotations

import resource
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.processes import clean_env, free_port
from tests.support.processes import terminate
from tests.support.waiting import wait_for


@dataclass(frozen=True)
class TLSFiles:
    """A CA and a server certificate signed by it, as PEM files."""

    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA (and checks the host name)."""
        return ssl.create_default_context(cafile=str(self.ca))


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls(directory: Path, names: str = "IP:127.0.0.1,DNS:localhost") -> TLSFiles:
    """Write ``ca.crt``, ``agent.crt`` and ``agent.key`` (for ``names``, subjectAltName's
    syntax: 127.0.0.1 and localhost by default)."""
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-days", "2", "-subj", "/CN=winspec-agent-test-ca",
             cwd=d)  # fmt: skip
    (d / "agent.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={names}\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "agent.key",
             "-out", "agent.csr", "-subj", "/CN=winspec-agent", cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", "agent.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "agent.crt", "-days", "2",
             "-extfile", "agent.ext", cwd=d)  # fmt: skip
    (d / "agent.key").chmod(0o600)
    return TLSFiles(ca=d / "ca.crt", cert=d / "agent.crt", key=d / "agent.key")


def agent_command(*args: str) -> list[str]:
    """The command line of ``winspec agent`` with ``args``, through this interpreter."""
    return [sys.executable, "-m", "adapters.cli", "agent", *args]


class AgentProcess:
    """``winspec agent`` over TLS on a loopback port; :meth:`start`, :meth:`kill`, :meth:`stop`."""

    def __init__(
        self,
        *,
        root: Path,
        tls: TLSFiles,
        kubeconfig: Path,
        allowed: list[str],
        audience: str,
        extra: tuple[str, ...] = (),
        nofile: int | None = None,
    ) -> None:
        """``nofile``: the process's file descriptor limit (soft and hard), when given."""
        self.root = root
        self.nofile = nofile
        self.tls = tls
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.log = root.parent / f"agent-{self.port}.log"
        self._argv = agent_command(
            "--listen", f"127.0.0.1:{self.port}", "--bundle-root", str(root),
            "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
            "--kubeconfig", str(kubeconfig), "--token-audience", audience,
            "--log-format", "console", "--log-level", "debug",
            *(a for identity in allowed for a in ("--allowed-identity", identity)),
            *extra,
        )  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True, pause: tuple[str, Path] | None = None) -> None:
        """Start the process; with ``wait``, until ``/readyz`` answers 200. ``pause``: (point,
        marker) of :mod:`tests.agent_pause`, to stop inside the first write at that point."""
        argv = self._argv
        if pause is not None:
            # The same interpreter and arguments, through the launcher that installs the pause.
            point, marker = pause
            argv = [sys.executable, "-m", "tests.agent_pause", point, str(marker), *argv[3:]]
        nofile = self.nofile

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=clean_env(),
                preexec_fn=limit if nofile is not None else None,
            )
        if wait:
            self.wait_ready()

    def readyz(self) -> int:
        """The status of ``GET /readyz`` (0 when nothing answers)."""
        try:
            with urllib.request.urlopen(
                self.url + "/readyz", context=self.tls.client_context(), timeout=2
            ) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``/readyz`` answers 200; a process that exits meanwhile fails at once."""

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"winspec agent exited {self.proc.returncode}:\n{self.logs()}")
            return self.readyz() == 200

        try:
            wait_for(ready, timeout, interval=0.1, what="winspec agent /readyz")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}:\n{self.logs()}") from exc

    def logs(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup, as a node losing power or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit code (None when it was never started)."""
        if self.proc is None:
            return None
        return terminate(self.proc, 20)
