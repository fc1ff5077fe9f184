"""A client of the node agent's bundle API, for the controller's remote bundle writer.

Each call is retried inside (tenacity: exponential backoff with jitter, bounded attempts, a
``Retry-After`` honoured) on connection errors, timeouts, 409, 429 and 5xx; a PUT and a DELETE
are idempotent, so a retry after a lost answer is safe. Every attempt of a PUT is encoded anew
(a fresh nonce and ``issued``): the agent refuses a body it has seen, or one older than the
newest it accepted for the bundle (409, see :class:`~adapters.agentapi.wire.ReplayGuard`), so a
retry must not resend the same bytes; a DELETE carries a fresh ``issued`` header each attempt
for the same reason. What is left becomes winspec's errors:
400, 413 and 415 :class:`~controller.errors.PermanentError` (the bundle itself is refused;
retrying cannot help), 401 and 403 :class:`AgentAuthError` (a token or allow-list problem that
a rotation or a configuration change can fix, so transient for the work queue), the rest
:class:`~controller.errors.TransientError`. Messages name the agent, the call and the agent's
own message, never a token or a byte of a payload.

The token is asked for on every attempt (``token`` is a callable), so a projected
service-account token that the kubelet rotates on disk is picked up without a restart.
"""

from __future__ import annotations

import io
import secrets
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote

import aiohttp
import msgspec
import tenacity

from adapters.agentapi.wire import (
    API_PREFIX,
    BUNDLE_CONTENT_TYPE,
    ISSUED_HEADER,
    NODE_PATH,
    NONCE_BYTES,
    BundleList,
    BundleState,
    ErrorBody,
    NodeInfo,
    Removal,
    encode_upload,
)
from adapters.retry import RetryableError, call_with_retries, parse_retry_after
from controller.bundle import split_key
from controller.errors import PermanentError, TransientError

_T = TypeVar("_T")
# 409: a newer upload of the bundle was accepted (a race with another sender, or clocks a
# little apart): sent again with a fresh ``issued`` it goes through.
_RETRYABLE = frozenset({409, 429, 500, 502, 503, 504})
_PERMANENT = frozenset({400, 404, 405, 413, 415})
#: The ``api`` label of each call's retries (``winspec_api_retries_total``).
AGENT_APIS: Mapping[str, str] = {"PUT": "agent_put", "DELETE": "agent_delete", "GET": "agent_list"}
#: The ``api`` label of the retries of ``GET /v1/node`` (the agent's bundle root).
AGENT_NODE_API = "agent_node"


class AgentAuthError(TransientError):
    """401 or 403: the agent does not accept this client's token or identity."""


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """Timeouts and retries of one call."""

    #: Attempts per call (1: no retry).
    attempts: int = 4
    #: First backoff, and the longest one, in seconds.
    initial: float = 0.2
    maximum: float = 5.0
    #: Connecting, and the whole of one attempt, in seconds.
    connect_timeout: float = 5.0
    timeout: float = 30.0
    #: The longest ``Retry-After`` obeyed, in seconds.
    max_retry_after: float = 30.0


class AgentClient:
    """Calls one agent at ``base_url`` (``https://host:port``); close it when done."""

    def __init__(
        self,
        base_url: str,
        *,
        token: Callable[[], str],
        ssl_context: ssl.SSLContext | None = None,
        policy: ClientPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
        server_name: str | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        """``ssl_context`` verifies the agent (e.g. the cluster's CA); a ``session`` passed in
        is shared (one connection pool for many agents) and not closed here; ``server_name`` is
        the name the agent's certificate is checked for, instead of the host in ``base_url``;
        ``on_retry`` is called with the call's :data:`AGENT_APIS` name before each retry."""
        self._base = base_url.rstrip("/")
        self._token = token
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._policy = policy or ClientPolicy()
        self._server_name = server_name
        self._on_retry = on_retry
        self._own_session = session is None
        self._session = session or aiohttp.ClientSession()

    @property
    def base_url(self) -> str:
        """The agent's address."""
        return self._base

    async def close(self) -> None:
        """Close the connection pool, when this client made it."""
        if self._own_session:
            await self._session.close()

    async def put(self, bundle_id: str, files: Mapping[str, bytes]) -> BundleState:
        """Deliver the bundle; the agent's state of it (``changed``: it was written)."""
        split_key(bundle_id)

        def body() -> bytes:
            return encode_upload(bundle_id, files, secrets.token_bytes(NONCE_BYTES))

        data = await self._call("PUT", _bundle_path(bundle_id), body=body)
        return _decode(data, BundleState, self._base)

    async def delete(self, bundle_id: str) -> bool:
        """Remove the bundle; ``False`` when the agent had none."""
        split_key(bundle_id)
        data = await self._call("DELETE", _bundle_path(bundle_id))
        return _decode(data, Removal, self._base).changed

    async def list_bundles(self) -> dict[str, str]:
        """Every bundle on the agent: id to the digest the agent keeps for it."""
        data = await self._call("GET", API_PREFIX)
        return {b.id: b.digest for b in _decode(data, BundleList, self._base).bundles}

    async def node_info(self) -> NodeInfo:
        """The agent's bundle root, as its node names it."""
        data = await self._call("GET", NODE_PATH, api=AGENT_NODE_API)
        return _decode(data, NodeInfo, self._base)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Callable[[], bytes] | None = None,
        api: str | None = None,
    ) -> bytes:
        what = f"{method} {self._base}{path}"
        policy = self._policy
        timeout = aiohttp.ClientTimeout(total=policy.timeout, sock_connect=policy.connect_timeout)

        async def attempt() -> bytes:
            headers = {"Authorization": f"Bearer {self._token()}", "Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = BUNDLE_CONTENT_TYPE
            if method == "DELETE":  # like an upload's, fresh each attempt (see wire.ReplayGuard)
                headers[ISSUED_HEADER] = str(time.time_ns())
            try:
                # A fresh body each attempt, as a stream: raw bytes this large would block the
                # loop.
                data = None if body is None else io.BytesIO(body())
                async with self._session.request(
                    method, self._base + path, data=data, headers=headers, ssl=self._ssl,
                    server_hostname=self._server_name, timeout=timeout, allow_redirects=False,
                ) as response:  # fmt: skip
                    answer = await response.read()
                    status = response.status
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise RetryableError(f"{what}: {type(exc).__name__}: {exc}") from None
            if status < 300:
                return answer
            message = f"{what}: {status} {_error_message(answer)}".rstrip()
            if status in _RETRYABLE:
                raise RetryableError(message, retry_after)
            if status in (401, 403):
                raise AgentAuthError(message)
            if status in _PERMANENT:
                raise PermanentError(message)
            raise TransientError(message)

        def before_sleep(_state: tenacity.RetryCallState) -> None:
            if self._on_retry is not None:
                self._on_retry(api or AGENT_APIS[method])

        try:
            result = await call_with_retries(policy, policy.attempts, attempt, before_sleep)
        except RetryableError as exc:
            raise TransientError(str(exc)) from None
        return result


def _bundle_path(bundle_id: str) -> str:
    namespace, name = split_key(bundle_id)
    return f"{API_PREFIX}/{quote(namespace, safe='')}/{quote(name, safe='')}"


def _error_message(data: bytes) -> str:
    try:
        return msgspec.json.decode(data, type=ErrorBody).message
    except (msgspec.DecodeError, msgspec.ValidationError):
        return data[:200].decode("utf-8", "replace").strip()


def _decode(data: bytes, kind: type[_T], agent: str) -> _T:
    try:
        return msgspec.json.decode(data, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise TransientError(f"agent {agent} answered something unexpected: {exc}") from None
