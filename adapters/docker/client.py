"""A small Docker Engine API client on aiohttp.

It speaks to ``unix://``, ``npipe://`` (Windows named pipe) and ``tcp://`` endpoints (TLS from
``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``), negotiates the API version once, retries
transient failures with tenacity (exponential backoff with jitter, bounded attempts, 429's
``Retry-After`` honoured) and maps every library error onto winspec's own errors. A 503 that
says the engine is not a swarm manager is permanent (:class:`NotSwarmManagerError`), not retried.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import sys
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
import tenacity

from adapters.docker.paths import check_path
from adapters.retry import RetryableError, RetryPolicy, call_with_retries, parse_retry_after
from controller.errors import NotFoundError, PermanentError, TransientError

DEFAULT_UNIX_HOST = "unix:///var/run/docker.sock"
DEFAULT_NPIPE_HOST = "npipe:////./pipe/docker_engine"
#: Newest API version this client speaks; older engines are spoken to in their own version.
MAX_API_VERSION = (1, 41)
MIN_API_VERSION = (1, 24)
_API_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?$")


class DockerAPIError(PermanentError):
    """The engine refused a request (4xx other than 404 and 429)."""


class NotSwarmManagerError(DockerAPIError):
    """A swarm-only call (tasks, configs) reached an engine that is not a swarm manager.

    The engine answers 503, which would otherwise be retried; it will not become a manager by
    being asked again, so this is permanent.
    """


#: What an engine's 503 says when it is not a swarm manager (a worker, or no swarm at all).
NOT_SWARM_MANAGER = "not a swarm manager"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the engine listens, parsed from ``DOCKER_HOST``-style text."""

    scheme: str  # unix, npipe or tcp
    address: str  # socket path, pipe path, or host:port

    @property
    def display(self) -> str:
        """The endpoint as the user wrote it."""
        return f"{self.scheme}://{self.address}"


def default_host() -> str:
    """The platform's default engine endpoint."""
    return DEFAULT_NPIPE_HOST if sys.platform == "win32" else DEFAULT_UNIX_HOST


def parse_host(value: str | None) -> Endpoint:
    """Parse ``unix:///path``, ``npipe:////./pipe/name`` or ``tcp://host:port``."""
    text = value or default_host()
    parts = urlsplit(text)
    if parts.scheme == "unix":
        path = parts.path or parts.netloc
        if not path:
            raise PermanentError(f"invalid Docker host {text!r}: no socket path")
        return Endpoint("unix", path)
    if parts.scheme == "npipe":
        # npipe:////./pipe/docker_engine -> \\.\pipe\docker_engine
        raw = text[len("npipe://") :]
        pipe = raw.replace("/", "\\")
        if not pipe.startswith("\\\\"):
            raise PermanentError(f"invalid Docker host {text!r}: expected npipe:////./pipe/NAME")
        return Endpoint("npipe", pipe)
    if parts.scheme in ("tcp", "http", "https"):
        if not parts.hostname:
            raise PermanentError(f"invalid Docker host {text!r}: no host name")
        try:
            given = parts.port
        except ValueError:  # not a number, or out of 0..65535
            given = 0
        hostport = parts.netloc.rpartition("@")[2]
        if not given and ":" in hostport.rpartition("]")[2]:  # a port given, but not a valid one
            raise PermanentError(
                f"invalid Docker host {text!r}: the port must be a number from 1 to 65535"
            )
        port = given or (2376 if os.environ.get("DOCKER_TLS_VERIFY") else 2375)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return Endpoint("tcp", f"{host}:{port}")
    raise PermanentError(
        f"invalid Docker host {text!r}: expected unix://, npipe:// or tcp:// (got {parts.scheme!r})"
    )


def tls_context(env: Mapping[str, str]) -> ssl.SSLContext | None:
    """The TLS context ``DOCKER_TLS_VERIFY`` and ``DOCKER_CERT_PATH`` ask for, if any; a
    certificate file that is missing or unusable raises :class:`PermanentError` naming it."""
    cert_path = env.get("DOCKER_CERT_PATH")
    verify = env.get("DOCKER_TLS_VERIFY", "") not in ("", "0")
    if not verify and not cert_path:
        return None
    base = cert_path or os.path.join(os.path.expanduser("~"), ".docker")
    ca = os.path.join(base, "ca.pem")
    try:
        ctx = ssl.create_default_context(cafile=ca if verify else None)
    except OSError as exc:  # missing, unreadable or not PEM (ssl.SSLError is an OSError)
        raise PermanentError(
            f"cannot load the CA certificate {ca} (DOCKER_TLS_VERIFY): {exc.strerror or exc}"
        ) from exc
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    cert, key = os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")
    if os.path.exists(cert) and os.path.exists(key):
        try:
            ctx.load_cert_chain(cert, key)
        except OSError as exc:
            raise PermanentError(
                f"cannot load the client certificate {cert} and key {key}: {exc.strerror or exc}"
            ) from exc
    return ctx


class DockerClient:
    """An Engine API client bound to one endpoint (use as an async context manager)."""

    def __init__(
        self,
        host: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[str], None] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.endpoint = parse_host(host)
        self._env = dict(os.environ if env is None else env)
        self._retry = retry or RetryPolicy()
        self._on_retry = on_retry
        #: Called with the API name and the error of every attempt that is retried.
        self.on_retry_error: Callable[[str, BaseException], None] | None = None
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._base = ""
        self.api_version: str | None = None

    async def __aenter__(self) -> DockerClient:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the HTTP session for the endpoint."""
        if self._session is not None:
            return
        ep = self.endpoint
        connector: aiohttp.BaseConnector
        if ep.scheme == "unix":
            connector = aiohttp.UnixConnector(path=ep.address)
            self._base = "http://docker"
        elif ep.scheme == "npipe":
            if sys.platform != "win32":
                raise PermanentError(
                    f"Docker host {ep.display} is a Windows named pipe; this is not Windows"
                )
            connector = aiohttp.NamedPipeConnector(path=ep.address)
            self._base = "http://docker"
        else:
            ctx = tls_context(self._env)
            connector = aiohttp.TCPConnector(ssl=ctx if ctx is not None else False)
            self._base = f"{'https' if ctx else 'http'}://{ep.address}"
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
        )

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, path: str, *, versioned: bool = True) -> str:
        # Every path, whatever built it, is checked here: none may leave the version prefix.
        check_path(path)
        if versioned and self.api_version:
            return f"{self._base}/v{self.api_version}{path}"
        return f"{self._base}{path}"

    async def negotiate(self) -> str:
        """Ask the engine its API version and speak the newest both sides know."""
        raw = await self.get_raw("/version", api="version", versioned=False)
        try:
            server = msgspec.json.decode(raw, type=_Version).ApiVersion
        except msgspec.ValidationError as exc:  # JSON, but not a version object
            raise PermanentError(
                f"{self.endpoint.display} did not answer GET /version like a Docker engine: {exc}"
            ) from exc
        except msgspec.DecodeError as exc:  # not JSON at all (cut short?), as for any call
            raise TransientError("GET /version: invalid JSON from the engine") from exc
        match = _API_VERSION.match(server)
        if match is None:
            raise PermanentError(
                f"Docker engine at {self.endpoint.display} reports API version {server!r}, "
                "expected MAJOR.MINOR"
            )
        major, minor = int(match.group(1)), int(match.group(2))
        if (major, minor) < MIN_API_VERSION:
            raise PermanentError(f"Docker engine API {server} is older than the minimum 1.24")
        chosen = min((major, minor), MAX_API_VERSION)
        self.api_version = f"{chosen[0]}.{chosen[1]}"
        return self.api_version

    async def get_json(
        self,
        path: str,
        *,
        api: str,
        params: Mapping[str, str] | None = None,
        versioned: bool = True,
    ) -> Any:
        """GET a JSON document, with retries; 404 raises :class:`NotFoundError`."""
        return await self.request_json("GET", path, api=api, params=params, versioned=versioned)

    async def get_raw(
        self,
        path: str,
        *,
        api: str,
        params: Mapping[str, str] | None = None,
        versioned: bool = True,
    ) -> bytes:
        """GET a body as bytes (for typed decoding by the caller), with retries."""
        return await self._with_retries(
            "GET", path, api=api, params=params, body=None, versioned=versioned
        )

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        api: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        versioned: bool = True,
    ) -> Any:
        """Make one API call with retries around transient failures."""
        raw = await self._with_retries(
            method, path, api=api, params=params, body=body, versioned=versioned
        )
        try:
            return json.loads(raw) if raw else None
        except (ValueError, RecursionError) as exc:
            raise TransientError(f"{method} {path}: invalid JSON from the engine") from exc

    async def _with_retries(
        self,
        method: str,
        path: str,
        *,
        api: str,
        params: Mapping[str, str] | None,
        body: Any,
        versioned: bool = True,
    ) -> bytes:
        try:
            return await call_with_retries(
                self._retry,
                self._retry.attempts,
                lambda: self._once(method, path, params, body, versioned),
                lambda state: self._retried(api, state),
            )
        except RetryableError as exc:
            raise TransientError(
                f"Docker engine at {self.endpoint.display}: {exc} "
                f"(gave up after {self._retry.attempts} attempts)"
            ) from exc

    def _retried(self, api: str, state: tenacity.RetryCallState) -> None:
        if self._on_retry is not None:
            self._on_retry(api)
        failure = state.outcome.exception() if state.outcome else None
        if self.on_retry_error is not None and failure is not None:
            self.on_retry_error(api, failure)

    async def _once(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: Any,
        versioned: bool,
    ) -> bytes:
        session = self._require_session()
        try:
            async with session.request(
                method,
                self._url(path, versioned=versioned),
                params=params,
                json=body,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                raw = await resp.read()
                if resp.status < 300:
                    return raw
                message = _error_message(raw) or resp.reason or ""
                if resp.status == 404:
                    raise NotFoundError(f"{method} {path}: {message}")
                if resp.status == 503 and NOT_SWARM_MANAGER in message.lower():
                    raise NotSwarmManagerError(
                        f"Docker engine at {self.endpoint.display}: {method} {path}: "
                        f"HTTP 503 {message}"
                    )
                if resp.status == 429 or resp.status >= 500:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    raise RetryableError(
                        f"{method} {path}: HTTP {resp.status} {message}",
                        retry_after if resp.status == 429 else None,
                    )
                raise DockerAPIError(f"{method} {path}: HTTP {resp.status} {message}")
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise RetryableError(f"connection failed: {exc}") from exc
        except TimeoutError as exc:
            raise RetryableError(f"{method} {path} timed out after {self._timeout}s") from exc

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("DockerClient used before open()")
        return self._session

    async def events(
        self, *, filters: Mapping[str, list[str]], since: str | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Stream ``/events`` as decoded objects (one connection; the caller reconnects).

        Yields an empty dict once the stream is established, so the caller can list only
        after the stream is open and miss nothing in between.
        """
        session = self._require_session()
        params = {"filters": json.dumps(filters)}
        if since is not None:
            params["since"] = since
        try:
            async with session.get(
                self._url("/events"),
                params=params,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
            ) as resp:
                if resp.status != 200:
                    raw = await resp.read()
                    raise TransientError(
                        f"GET /events: HTTP {resp.status} {_error_message(raw) or ''}"
                    )
                yield {}
                lines = _LineSplitter(MAX_EVENT_BYTES)
                async for chunk in resp.content.iter_any():
                    for line in lines.feed(chunk):
                        if (event := decode_event_line(line)) is not None:
                            yield event
                if (event := decode_event_line(lines.rest())) is not None:
                    yield event
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise TransientError(f"event stream from {self.endpoint.display} lost: {exc}") from exc
        except TimeoutError as exc:
            raise TransientError("event stream timed out") from exc


#: The longest event line read (a create event carries every label of the container); a longer
#: one is skipped whole, and the container it was about is picked up by the next list.
MAX_EVENT_BYTES = 4 * 1024 * 1024


def decode_event_line(line: bytes) -> dict[str, Any] | None:
    """One line of ``/events`` as a JSON object; ``None`` for anything else (skipped).

    Nothing an engine sends raises: not JSON, not an object, nested deeper than the decoder
    goes, or numbers beyond any range are all skipped.
    """
    line = line.strip()
    if not line:
        return None
    try:
        event = msgspec.json.decode(line)
    except (msgspec.DecodeError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


class _LineSplitter:
    """Splits a byte stream into lines of at most ``limit`` bytes; longer ones are dropped."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._skipping = False  # inside a line that has grown past the limit

    def feed(self, chunk: bytes) -> list[bytes]:
        """The complete lines ``chunk`` ends (without their newline)."""
        lines: list[bytes] = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if not self._skipping:
                self._buffer += chunk[start:end]
                if len(self._buffer) <= self._limit:
                    lines.append(bytes(self._buffer))
            self._buffer.clear()
            self._skipping = False
            start = end + 1
        if not self._skipping:
            self._buffer += chunk[start:]
            if len(self._buffer) > self._limit:
                self._buffer.clear()
                self._skipping = True
        return lines

    def rest(self) -> bytes:
        """What is left after the last newline (a last line without one), if not too long."""
        rest = b"" if self._skipping else bytes(self._buffer)
        self._buffer.clear()
        return rest


class _Version(msgspec.Struct):
    """``GET /version``: only the API version is read (engines before 1.24 omit it)."""

    ApiVersion: str = "1.24"


#: How much of an engine's error message goes into winspec's own error (and logs).
_MAX_MESSAGE = 1000


def _error_message(raw: bytes) -> str | None:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return raw[:_MAX_MESSAGE].decode("utf-8", "replace").strip() or None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])[:_MAX_MESSAGE]
    return None
