"""A loopback port of this network namespace made reachable inside another one.

The private dockerd of tests/dockerd.py lives in its own network namespace, and so does a
container it runs with ``--network=host``: that container's 127.0.0.1 is not the test's.
:class:`LoopbackRelay` listens on ``127.0.0.1:<port>`` inside the namespace of a given process
(``setns`` in a short-lived thread: a socket stays in the namespace it was made in) and relays
every connection to ``127.0.0.1:<port>`` here, so a server of the tests (the kube-apiserver) is
at the same address, with the same certificate, for such a container. Linux and root only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading

__all__ = ["LoopbackRelay"]

_CLONE_NEWNET = 0x40000000
_CHUNK = 65536


def _listen_in_namespace_of(pid: int, port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:``port`` in the network namespace of process ``pid``."""
    outcome: list[socket.socket | OSError] = []

    def enter_and_listen() -> None:
        # This thread switches namespace and ends; the other threads never leave theirs.
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns into the network namespace of {pid}")
            finally:
                os.close(fd)
            outcome.append(socket.create_server(("127.0.0.1", port)))
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=enter_and_listen, name=f"netns-{pid}")
    thread.start()
    thread.join()
    result = outcome[0]
    if isinstance(result, OSError):
        raise result
    return result


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until end of stream, then pass the end on."""
    with contextlib.suppress(OSError):
        while data := source.recv(_CHUNK):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class LoopbackRelay:
    """127.0.0.1:``port`` inside the network namespace of ``pid`` → 127.0.0.1:``port`` here."""

    def __init__(self, pid: int, port: int) -> None:
        self.port = port
        self._listener = _listen_in_namespace_of(pid, port)
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name=f"relay-{port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        """Stop listening and cut every relayed connection."""
        # shutdown() wakes the accept() blocked in the serving thread (Linux); close() alone not.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def __enter__(self) -> LoopbackRelay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
