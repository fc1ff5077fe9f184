"""A private, real Docker engine (``dockerd``) for integration tests.

:class:`DockerDaemon` starts Debian's ``docker.io`` dockerd (20.10) with its own socket, data
root, exec root, pid file, log file and a config file holding ``{}`` (so
``/etc/docker/daemon.json`` is never read; ``--config-file /dev/null`` is rejected with
``EOF``). dockerd launches its own containerd under the exec root (unless a system containerd
listens on /run/containerd/containerd.sock: dockerd 20.10 then uses that one, which is why each
daemon gets its own containerd namespaces).

dockerd runs in a private network namespace (``unshare(CLONE_NEWNET)``, loopback up; its unix
socket is reachable from the host all the same). Swarm mode creates a ``docker_gwbridge``
bridge, veths and an ingress sandbox, and binds fixed ports (2377, gossip on 7946, VXLAN 4789);
in the private namespace none of that touches the host, and several private daemons can be
swarm managers at once. The namespace disappears with the daemon's last process. dockerd's own
networking is kept minimal anyway: ``--bridge=none --iptables=false --ip6tables=false
--ip-forward=false --ip-masq=false --userland-proxy=false``.

Everything here is synchronous and stdlib-only: a small ``http.client`` connection over the
unix socket (:meth:`DockerDaemon.api`) is enough for tests to set up containers, secrets,
configs and services while the code under test talks to the same socket asynchronously.

The test image (:meth:`DockerDaemon.import_image`) is built in memory and holds two tiny
static x86-64 ELF programs: ``/hello`` prints ``hello`` and exits 0 (the image's ``CMD``) and
``/pause`` sleeps until SIGTERM, then exits 0 (what :meth:`DockerDaemon.create_service` runs by
default, so a service's task stays ``running``).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import fcntl
import http.client
import io
import json
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tests.support.errors import APIStatusError, FixtureError
from tests.support.processes import log_tail, terminate
from tests.support.waiting import wait_for

__all__ = [
    "DOCKERD_CANDIDATES",
    "PAUSE_COMMAND",
    "TEST_IMAGE",
    "DockerAPIError",
    "DockerDaemon",
    "DockerdError",
    "UnixHTTPConnection",
    "dockerd_unavailable_reason",
    "find_dockerd",
    "image_rootfs_tar",
]

T = TypeVar("T")

#: Where Debian's ``docker.io`` puts dockerd (``/usr/sbin``); ``/usr/bin`` is checked first.
DOCKERD_CANDIDATES: tuple[str, ...] = ("/usr/bin/dockerd", "/usr/sbin/dockerd")
#: The tag :meth:`DockerDaemon.import_image` gives the test image by default.
TEST_IMAGE = "winspec-test:latest"
#: A command for long-running containers in the test image (exits 0 on SIGTERM).
PAUSE_COMMAND: tuple[str, ...] = ("/pause",)

_LOG_TAIL_LINES = 40
# Debian's containerd, runc, docker-init and docker-proxy before anything in /usr/local.
_DOCKERD_PATH = "/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/sbin:/usr/local/bin"
_PR_SET_PDEATHSIG = 1
_MNT_DETACH = 2
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_CLONE_NEWNET = 0x40000000
_IFF_UP = 0x1


class DockerdError(FixtureError):
    """dockerd could not be started, or stopped behaving."""


class DockerAPIError(APIStatusError):
    """The Engine API answered a request with an unexpected status."""


class UnixHTTPConnection(http.client.HTTPConnection):
    """An ``http.client`` connection to an HTTP server on a unix socket."""

    def __init__(self, socket_path: str, timeout: float = 60.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def find_dockerd() -> str | None:
    """The path of an executable dockerd, or None."""
    for candidate in DOCKERD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _static_unavailable_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"dockerd needs Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return f"dockerd needs root (euid is {os.geteuid()})"
    if find_dockerd() is None:
        return (
            "dockerd not found at "
            + " or ".join(DOCKERD_CANDIDATES)
            + " (apt-get install docker.io)"
        )
    return None


_probe_lock = threading.Lock()
_probe_result: list[str | None] = []


def dockerd_unavailable_reason(*, probe: bool = True) -> str | None:
    """Why a private dockerd cannot run here, or None when it can.

    Checks the platform, root and the binary; with ``probe`` (the default) it also starts and
    stops a throwaway daemon once per process (about 1.5s) and reports its log tail on failure.
    """
    reason = _static_unavailable_reason()
    if reason is not None or not probe:
        return reason
    with _probe_lock:
        if not _probe_result:
            daemon = DockerDaemon()
            try:
                daemon.start()
            except DockerdError as exc:
                _probe_result.append(str(exc))
            else:
                _probe_result.append(None)
            finally:
                daemon.stop()
        return _probe_result[0]


# --------------------------------------------------------------------------------------------
# The test image: two tiny static x86-64 programs, assembled by hand so no toolchain is needed.

_ELF_BASE = 0x400000
_ELF_HEADERS = 64 + 56


def _elf(code: bytes) -> bytes:
    """A static x86-64 ELF executable whose single RWX segment is the file; code at 120."""
    size = _ELF_HEADERS + len(code)
    header = struct.pack(
        "<4sBBBBB7xHHIQQQIHHHHHH",
        b"\x7fELF",
        2,  # ELFCLASS64
        1,  # little endian
        1,  # EV_CURRENT
        0,  # System V ABI
        0,
        2,  # ET_EXEC
        0x3E,  # EM_X86_64
        1,
        _ELF_BASE + _ELF_HEADERS,  # e_entry
        64,  # e_phoff
        0,  # e_shoff
        0,  # e_flags
        64,  # e_ehsize
        56,  # e_phentsize
        1,  # e_phnum
        64,  # e_shentsize
        0,  # e_shnum
        0,  # e_shstrndx
    )
    program_header = struct.pack(
        "<IIQQQQQQ", 1, 7, 0, _ELF_BASE, _ELF_BASE, size, size, 0x1000
    )  # PT_LOAD, PF_R|PF_W|PF_X
    return header + program_header + code


def _hello_program() -> bytes:
    """write(1, "hello\\n", 6); exit_group(0)."""
    message = b"hello\n"
    tail = (
        b"\xba"
        + struct.pack("<I", len(message))  # mov edx, len
        + b"\x0f\x05"  # syscall
        + b"\xb8\xe7\x00\x00\x00"  # mov eax, 231 (exit_group)
        + b"\x31\xff"  # xor edi, edi
        + b"\x0f\x05"  # syscall
    )
    code = (
        b"\xb8\x01\x00\x00\x00"  # mov eax, 1 (write)
        + b"\xbf\x01\x00\x00\x00"  # mov edi, 1
        + b"\x48\x8d\x35"
        + struct.pack("<i", len(tail))  # lea rsi, [rip + message]
        + tail
        + message
    )
    return _elf(code)


def _pause_program() -> bytes:
    """rt_sigaction(SIGTERM, exit-handler); loop { pause() }; the handler exits 0.

    PID 1 of a PID namespace only receives signals it has a handler for, so without the
    handler ``docker stop`` would have to wait for its timeout and SIGKILL.
    """
    prologue_len = 5 + 5 + 7 + 2 + 6 + 2
    loop = b"\xb8\x22\x00\x00\x00" + b"\x0f\x05" + b"\xeb\xf7"  # mov eax, 34; syscall; jmp loop
    handler = b"\xb8\xe7\x00\x00\x00" + b"\x31\xff" + b"\x0f\x05"  # exit_group(0)
    handler_offset = prologue_len + len(loop)
    body_len = handler_offset + len(handler)
    padding = b"\x00" * (-body_len % 8)
    action_offset = body_len + len(padding)
    handler_address = _ELF_BASE + _ELF_HEADERS + handler_offset
    sa_flags = 0x04000000  # SA_RESTORER, required on x86-64 (the handler never returns)
    action = struct.pack("<QQQQ", handler_address, sa_flags, handler_address, 0)
    prologue = (
        b"\xb8\x0d\x00\x00\x00"  # mov eax, 13 (rt_sigaction)
        + b"\xbf\x0f\x00\x00\x00"  # mov edi, 15 (SIGTERM)
        + b"\x48\x8d\x35"
        + struct.pack("<i", action_offset - 17)  # lea rsi, [rip + action]
        + b"\x31\xd2"  # xor edx, edx (no old action)
        + b"\x41\xba\x08\x00\x00\x00"  # mov r10d, 8 (sizeof sigset_t)
        + b"\x0f\x05"  # syscall
    )
    assert len(prologue) == prologue_len
    return _elf(prologue + loop + handler + padding + action)


def image_rootfs_tar() -> bytes:
    """The root file system of the test image as an uncompressed tar."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("hello", _hello_program()), ("pause", _pause_program())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Process and host helpers.


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _child_setup(*, death_signal: bool) -> Callable[[], None]:
    """What the forked child does before exec'ing dockerd (see the module docstring)."""
    libc = _libc()

    def setup() -> None:
        if death_signal:
            # SIGTERM dockerd if we die. This fires when the forking *thread* ends, hence
            # only requested from the main thread.
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if libc.unshare(_CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
        _set_interface_up("lo")

    return setup


def _set_interface_up(name: str) -> None:
    """``ip link set <name> up`` in the current network namespace."""
    request = struct.pack("16sH22x", name.encode(), 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | _IFF_UP))


def _unmount_under(root: str) -> None:
    """Detach every mount point at or below ``root`` (deepest first)."""
    prefix = root.rstrip("/") + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    targets = []
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            target = fields[4].encode().decode("unicode_escape")
            if target == root or target.startswith(prefix):
                targets.append(target)
    libc = _libc()
    for target in sorted(set(targets), key=len, reverse=True):
        libc.umount2(target.encode(), _MNT_DETACH)


def _processes_mentioning(text: str) -> list[int]:
    """Pids of processes whose command line contains ``text``."""
    needle = text.encode()
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if needle in cmdline:
                pids.append(int(entry.name))
    return pids


def _kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


_live_daemons: weakref.WeakSet[DockerDaemon] = weakref.WeakSet()


@atexit.register
def _stop_live_daemons() -> None:
    for daemon in list(_live_daemons):
        daemon.stop()


# --------------------------------------------------------------------------------------------


class DockerDaemon:
    """One private dockerd (plus the containerd it starts) living in a temporary directory.

    ``start()`` launches it and waits for ``/_ping``; ``restart()`` stops it (SIGTERM) and
    starts it again on the same data root, exec root and socket, so images, containers and
    swarm state survive like on an engine restart; ``stop()`` ends it for good and removes the
    temporary directory. ``stop()`` may be called any number of times.
    """

    def __init__(
        self,
        *,
        binary: str | None = None,
        base_dir: str | None = None,
        storage_driver: str = "vfs",
    ) -> None:
        self.binary: str = binary or find_dockerd() or DOCKERD_CANDIDATES[-1]
        #: vfs (the default) works on any file system; overlay2 makes image builds and
        #: container starts cheap (no full copy of the image per container) where it works.
        self.storage_driver: str = storage_driver
        self.base_dir: str = base_dir or tempfile.mkdtemp(prefix="winspec-dockerd-")
        self.socket_path: str = os.path.join(self.base_dir, "docker.sock")
        self.host: str = "unix://" + self.socket_path
        self.data_root: str = os.path.join(self.base_dir, "data")
        self.exec_root: str = os.path.join(self.base_dir, "exec")
        self.pidfile: str = os.path.join(self.base_dir, "docker.pid")
        self.config_file: str = os.path.join(self.base_dir, "daemon.json")
        self.log_path: str = os.path.join(self.base_dir, "dockerd.log")
        #: containerd namespace of this daemon's containers; unique in case dockerd finds a
        #: system containerd at /run/containerd/containerd.sock and shares it.
        self.containerd_namespace: str = "winspec-" + os.urandom(4).hex()
        self.pid: int | None = None
        #: Seconds the last start()/restart() took until /_ping answered.
        self.start_seconds: float | None = None
        #: dockerd's exit status the last time it ended (0 after a clean SIGTERM shutdown).
        self.last_exit_status: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._removed = False
        if len(os.path.join(self.exec_root, "containerd", "containerd.sock.ttrpc")) > 100:
            raise DockerdError(f"base_dir {self.base_dir!r} is too long for unix socket paths")

    def __repr__(self) -> str:
        return f"<DockerDaemon {self.host} pid={self.pid}>"

    def __enter__(self) -> DockerDaemon:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- lifecycle -----------------------------------------------------------------------

    def command(self) -> list[str]:
        """The dockerd command line this daemon runs."""
        return [
            self.binary,
            "--config-file",
            self.config_file,
            "--host",
            self.host,
            "--data-root",
            self.data_root,
            "--exec-root",
            self.exec_root,
            "--pidfile",
            self.pidfile,
            "--containerd-namespace",
            self.containerd_namespace,
            "--containerd-plugins-namespace",
            self.containerd_namespace + "-plugins",
            "--storage-driver",
            self.storage_driver,
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--userland-proxy=false",
        ]

    def start(self, timeout: float = 60.0) -> None:
        """Launch dockerd, wait until it answers ``/_ping``; DockerdError (with log tail) if not."""
        if self.running:
            return
        reason = _static_unavailable_reason()
        if reason is not None:
            raise DockerdError(reason)
        self._removed = False
        for directory in (self.base_dir, self.data_root, self.exec_root):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        Path(self.config_file).write_text("{}\n")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        began = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"=== winspec tests: {shlex.join(self.command())}\n".encode())
            log.flush()
            death_signal = threading.current_thread() is threading.main_thread()
            try:
                self._process = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a terminal's Ctrl-C reaches pytest, not dockerd
                    preexec_fn=_child_setup(death_signal=death_signal),
                    env={"PATH": _DOCKERD_PATH, "LANG": "C.UTF-8"},
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise DockerdError(
                    f"could not launch {self.binary} in a private network namespace: {exc}"
                ) from exc
        self.pid = self._process.pid
        _live_daemons.add(self)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self._terminate()
            raise
        self.start_seconds = time.monotonic() - began

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll ``GET /_ping`` until it answers OK; fail early (with the log) if dockerd exits."""
        deadline = time.monotonic() + timeout
        last_error: object = None
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise DockerdError(
                    f"dockerd exited with status {self._process.returncode} during start-up; "
                    f"{self._log_excerpt()}"
                )
            try:
                status, body = self.api("GET", "/_ping", timeout=2.0)
            except OSError as exc:
                last_error = exc
            else:
                if status == 200 and body == b"OK":
                    return
                last_error = (status, body)
            if time.monotonic() >= deadline:
                raise DockerdError(
                    f"dockerd did not answer /_ping within {timeout}s (last: {last_error!r}); "
                    f"{self._log_excerpt()}"
                )
            time.sleep(0.05)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop dockerd (SIGTERM) and start it again on the same data root and socket.

        When the swarm was active before, also wait until this node is an active manager
        again, so swarm API calls work right after ``restart()`` returns.
        """
        swarm_was_active = False
        if self.running:
            with contextlib.suppress(OSError, DockerAPIError):
                swarm_was_active = self.swarm_state() == "active"
        self._terminate()
        self.start(timeout)
        if swarm_was_active:
            wait_for(
                lambda: self.swarm_state() == "active" and self.info()["Swarm"]["ControlAvailable"],
                timeout,
                what="the swarm to become active after restart",
            )

    def stop(self, timeout: float = 30.0) -> None:
        """Stop dockerd (SIGTERM, then SIGKILL after ``timeout``) and remove its directory."""
        self._terminate(timeout)
        if self._removed:
            return
        self._removed = True
        _live_daemons.discard(self)
        _unmount_under(self.base_dir)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def _terminate(self, timeout: float = 30.0) -> None:
        process, self._process = self._process, None
        self.pid = None
        if process is None:
            return
        self.last_exit_status = terminate(process, timeout)
        if process.returncode != 0:
            # A clean shutdown stops every container and containerd; after SIGKILL or a crash
            # containerd, its shims and the containers' processes can be left. They all name
            # our exec root on their command line or have a pid file under it.
            leftovers = _processes_mentioning(self.exec_root)
            for init_pid in Path(self.exec_root).glob("containerd/daemon/*/*/*/init.pid"):
                with contextlib.suppress(OSError, ValueError):
                    leftovers.append(int(init_pid.read_text().strip()))
            for pid in leftovers:
                _kill(pid)
        _unmount_under(self.exec_root)

    @property
    def running(self) -> bool:
        """Whether the dockerd process is alive."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines dockerd logged (across restarts)."""
        return log_tail(self.log_path, lines)

    def _log_excerpt(self) -> str:
        return f"last {_LOG_TAIL_LINES} lines of {self.log_path}:\n{self.log_tail()}"

    # -- the Engine API ----------------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, Any] | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, Any]:
        """One Engine API request; returns ``(status, parsed JSON or raw bytes)``.

        ``body`` is sent as JSON, ``raw`` as is (``application/x-tar`` unless ``headers`` say
        otherwise). ``query`` values that are dicts or lists are JSON-encoded (``filters``).
        A JSON-lines answer (``/events``, ``/images/create``) is returned as a list.
        """
        if query:
            encoded = {
                key: json.dumps(value) if isinstance(value, dict | list) else str(value)
                for key, value in query.items()
            }
            path += ("&" if "?" in path else "?") + urllib.parse.urlencode(encoded)
        send_headers = {"Host": "docker"}
        payload: bytes | None = None
        if raw is not None:
            payload = raw
            send_headers["Content-Type"] = "application/x-tar"
        elif body is not None:
            payload = json.dumps(body).encode()
            send_headers["Content-Type"] = "application/json"
        send_headers.update(headers or {})
        connection = UnixHTTPConnection(self.socket_path, timeout=timeout)
        try:
            connection.request(method, path, body=payload, headers=send_headers)
            response = connection.getresponse()
            data = response.read()
            content_type = response.getheader("Content-Type", "")
            status = response.status
        finally:
            connection.close()
        return status, _parse(data, content_type)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        expect: Iterable[int] = (200, 201, 204),
        **kwargs: Any,
    ) -> Any:
        """Like :meth:`api` but return only the body, raising DockerAPIError on other statuses."""
        status, data = self.api(method, path, body, **kwargs)
        if status not in set(expect):
            raise DockerAPIError(method, path, status, data)
        return data

    def info(self) -> dict[str, Any]:
        """``GET /info``."""
        info: dict[str, Any] = self.call("GET", "/info")
        return info

    def swarm_state(self) -> str:
        """This node's ``LocalNodeState``: inactive, pending, active, error or locked."""
        state: str = self.info()["Swarm"]["LocalNodeState"]
        return state

    def events(
        self,
        since: float,
        until: float | None = None,
        filters: Mapping[str, Sequence[str]] | None = None,
    ) -> list[dict[str, Any]]:
        """Events between two Unix times (``until`` defaults to now) from ``GET /events``."""
        query: dict[str, Any] = {"since": f"{since:.9f}", "until": f"{until or time.time():.9f}"}
        if filters:
            query["filters"] = {key: list(values) for key, values in filters.items()}
        data = self.call("GET", "/events", query=query)
        if isinstance(data, dict):
            return [data]
        return list(data or [])

    # -- swarm -------------------------------------------------------------------------------

    def init_swarm(self) -> str:
        """Make this engine a single-node swarm manager on 127.0.0.1:2377; return the node id.

        A no-op (returning the node id) when the swarm is already active.
        """
        if self.swarm_state() == "active":
            node_id: str = self.info()["Swarm"]["NodeID"]
            return node_id
        created = self.call(
            "POST",
            "/swarm/init",
            {"ListenAddr": "127.0.0.1:2377", "AdvertiseAddr": "127.0.0.1"},
        )
        return str(created)

    # -- images and containers -----------------------------------------------------------

    def import_image(self, tag: str = TEST_IMAGE) -> str:
        """``docker import`` the test image (``/hello``, ``/pause``, ``CMD ["/hello"]``); its id."""
        repo, _, version = tag.rpartition(":")
        if not repo or "/" in version:
            repo, version = tag, "latest"
        messages = self.call(
            "POST",
            "/images/create",
            raw=image_rootfs_tar(),
            query={
                "fromSrc": "-",
                "repo": repo,
                "tag": version,
                "changes": 'CMD ["/hello"]',
                "message": "winspec integration test image",
            },
        )
        if isinstance(messages, dict):
            messages = [messages]
        for message in messages:
            if "error" in message or "errorDetail" in message:
                raise DockerAPIError("POST", "/images/create", 200, message)
        image: dict[str, Any] = self.call("GET", f"/images/{tag}/json")
        image_id: str = image["Id"]
        return image_id

    def create_container(self, name: str | None = None, **config: Any) -> str:
        """``POST /containers/create`` (``Image`` defaults to the test image); return the id."""
        config.setdefault("Image", TEST_IMAGE)
        query = {"name": name} if name else None
        created: dict[str, Any] = self.call("POST", "/containers/create", config, query=query)
        container_id: str = created["Id"]
        return container_id

    def start_container(self, container_id: str) -> None:
        """``POST /containers/{id}/start``."""
        self.call("POST", f"/containers/{container_id}/start", expect=(204, 304))

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        """``GET /containers/{id}/json``."""
        inspected: dict[str, Any] = self.call("GET", f"/containers/{container_id}/json")
        return inspected

    def remove_container(self, container_id: str, *, force: bool = True) -> None:
        """``DELETE /containers/{id}`` (forced, with anonymous volumes); a missing one is fine."""
        self.call(
            "DELETE",
            f"/containers/{container_id}",
            query={"force": str(force).lower(), "v": "true"},
            expect=(204, 404),
        )

    # -- secrets, configs and services ---------------------------------------------------

    def create_secret(self, name: str, data: bytes, labels: Mapping[str, str] | None = None) -> str:
        """``POST /secrets/create``; return the secret id."""
        spec = {"Name": name, "Data": base64.b64encode(data).decode(), "Labels": dict(labels or {})}
        created: dict[str, Any] = self.call("POST", "/secrets/create", spec)
        secret_id: str = created["ID"]
        return secret_id

    def create_config(self, name: str, data: bytes, labels: Mapping[str, str] | None = None) -> str:
        """``POST /configs/create``; return the config id."""
        spec = {"Name": name, "Data": base64.b64encode(data).decode(), "Labels": dict(labels or {})}
        created: dict[str, Any] = self.call("POST", "/configs/create", spec)
        config_id: str = created["ID"]
        return config_id

    def _references(
        self, kind: str, items: Sequence[str | tuple[str, str]]
    ) -> list[dict[str, Any]]:
        if not items:
            return []
        known: list[dict[str, Any]] = self.call("GET", f"/{kind}s")
        by_key = {obj["Spec"]["Name"]: obj for obj in known} | {obj["ID"]: obj for obj in known}
        id_key, name_key = (
            ("SecretID", "SecretName") if kind == "secret" else ("ConfigID", "ConfigName")
        )
        references = []
        for item in items:
            key, target = (item, None) if isinstance(item, str) else item
            obj = by_key.get(key)
            if obj is None:
                raise KeyError(f"no {kind} named {key!r}")
            name = obj["Spec"]["Name"]
            references.append(
                {
                    id_key: obj["ID"],
                    name_key: name,
                    "File": {"Name": target or name, "UID": "0", "GID": "0", "Mode": 0o444},
                }
            )
        return references

    def create_service(
        self,
        name: str,
        image: str = TEST_IMAGE,
        secrets: Sequence[str | tuple[str, str]] = (),
        configs: Sequence[str | tuple[str, str]] = (),
        *,
        command: Sequence[str] | None = PAUSE_COMMAND,
        replicas: int = 1,
        labels: Mapping[str, str] | None = None,
        container_labels: Mapping[str, str] | None = None,
    ) -> str:
        """``POST /services/create`` for a replicated service; return the service id.

        ``secrets``/``configs`` are names or ids, or ``(name, target)`` pairs; each becomes a
        file reference (secrets default to ``/run/secrets/<name>``, configs to ``/<name>``,
        uid/gid 0, mode 0444). ``command`` defaults to ``/pause`` so the task keeps running;
        pass None to use the image's ``CMD``.
        """
        container_spec: dict[str, Any] = {
            "Image": image,
            "Labels": dict(container_labels or {}),
            "Secrets": self._references("secret", secrets),
            "Configs": self._references("config", configs),
        }
        if command is not None:
            container_spec["Command"] = list(command)
        spec = {
            "Name": name,
            "Labels": dict(labels or {}),
            "TaskTemplate": {
                "ContainerSpec": container_spec,
                "RestartPolicy": {"Condition": "any", "Delay": 1_000_000_000},
            },
            "Mode": {"Replicated": {"Replicas": replicas}},
        }
        created: dict[str, Any] = self.call("POST", "/services/create", spec)
        service_id: str = created["ID"]
        return service_id

    def remove_service(self, service_id: str) -> None:
        """``DELETE /services/{id}``; a missing one is fine."""
        self.call("DELETE", f"/services/{service_id}", expect=(200, 204, 404))

    def tasks(self, service_id: str | None = None) -> list[dict[str, Any]]:
        """``GET /tasks``, optionally only those of one service."""
        query = {"filters": {"service": [service_id]}} if service_id else None
        tasks: list[dict[str, Any]] = self.call("GET", "/tasks", query=query)
        return tasks

    def wait_for_task_container(self, service_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until a task of the service has a container; return that task."""

        def task_with_container() -> dict[str, Any] | None:
            for task in self.tasks(service_id):
                if task.get("Status", {}).get("ContainerStatus", {}).get("ContainerID"):
                    return task
            return None

        return wait_for(task_with_container, timeout, what=f"a container for {service_id}")


def _parse(data: bytes, content_type: str) -> Any:
    if "json" not in content_type:
        return data
    try:
        return json.loads(data) if data.strip() else None
    except ValueError:
        pass
    try:
        return [json.loads(line) for line in data.splitlines() if line.strip()]
    except ValueError:
        return data
