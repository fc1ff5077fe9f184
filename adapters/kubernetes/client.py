"""A small Kubernetes API client on kubernetes-asyncio: configuration, raw JSON calls, watches.

kubernetes-asyncio supplies what is hard to get right: loading a kubeconfig (``--kubeconfig``,
``KUBECONFIG``, ``~/.kube/config``) or the in-cluster service account (with its token
refreshed as the kubelet rotates it), the TLS context, and the credentials of every request
(its ``Configuration.auth_settings()``, asked anew for each call, so a rotated token is used
at once). Its generated model classes are not used: bodies are bytes decoded by msgspec into
winspec's own types (an order of magnitude faster and smaller than the generated models for
thousands of objects).

Requests go out on winspec's own aiohttp session over kubernetes-asyncio's connection pool
(the same TLS context), not through ``ApiClient.call_api``: that path runs every body through
the generated serializer and its session reads the proxy variables and ``~/.netrc`` from disk,
in a thread, on every request: two thread hops per call, a third of the controller's CPU per
resource. The proxy is chosen once instead: the kubeconfig's ``proxy-url``, else
``HTTPS_PROXY``/``HTTP_PROXY`` unless ``NO_PROXY`` exempts the API server (read at start).

Every call is retried inside (tenacity: exponential backoff with jitter, bounded attempts,
``Retry-After`` of a 429 or 503 honoured) on connection errors, timeouts, 429 and 5xx; what
is left is mapped onto winspec's errors: 404 :class:`NotFoundError`, 409
:class:`ConflictError`, 410 :class:`GoneError`, 403 :class:`ForbiddenError`, other 4xx
:class:`PermanentError`, the rest :class:`TransientError`. Messages name the call and the
server's own message, never a body sent (which may hold secret data).
"""

from __future__ import annotations

import asyncio
import os
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import msgspec
import tenacity

from adapters.retry import RetryableError, RetryPolicy, call_with_retries, parse_retry_after
from adapters.version import user_agent
from controller.cluster import GROUP, PLURAL, VERSION
from controller.errors import NotFoundError, PermanentError, TransientError

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
#: Metadata only (``PartialObjectMetadata``), falling back to whole objects on a server that
#: cannot: a list, then a watch (what client-go's metadata client asks for).
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1, " + JSON
METADATA_WATCH = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, " + JSON
#: Where Kubernetes mounts a pod's service account token and the cluster's CA.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_TLS_CLOSE_SECONDS = 0.25
#: Watch events of large objects exceed aiohttp's default read buffer (etcd allows 1.5 MiB).
_READ_BUFFER = 2**21


class ConflictError(TransientError):
    """409: the object changed since it was read (re-read and try again)."""

    reason = "Conflict"


class GoneError(TransientError):
    """410: the resourceVersion asked for is too old (list again)."""

    reason = "Expired"


class ForbiddenError(TransientError):
    """403: winspec's own account may not do this (an RBAC change can fix it)."""

    reason = "Forbidden"


class _Status(msgspec.Struct):
    """A ``meta/v1`` Status body (what the server answers errors with)."""

    message: str = ""
    reason: str = ""
    code: int = 0


def _status_message(body: bytes) -> str:
    try:
        status = msgspec.json.decode(body, type=_Status)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return body[:200].decode(errors="replace").strip()
    return status.message or status.reason


def error_for(status: int, body: bytes, what: str) -> Exception:
    """The winspec error for an HTTP error status of the call ``what``."""
    message = f"{what}: {status} {_status_message(body)}".rstrip()
    if status == 404:
        return NotFoundError(message)
    if status == 409:
        return ConflictError(message)
    if status == 410:
        return GoneError(message)
    if status == 403:
        return ForbiddenError(message)
    if 400 <= status < 500 and status != 429:
        return PermanentError(message)
    return TransientError(message)


def kubeconfig_path(explicit: str | None, env: Mapping[str, str]) -> str | None:
    """The kubeconfig to use: ``explicit``, else ``KUBECONFIG`` (its first file), else
    ``~/.kube/config`` when it exists; None means in-cluster."""
    if explicit:
        return explicit
    if env.get("KUBECONFIG"):
        return env["KUBECONFIG"].split(os.pathsep)[0]
    default = os.path.expanduser("~/.kube/config")
    return default if os.path.exists(default) else None


def windows_container_path(namespace: str, name: str) -> str:
    """The URL path of one WindowsContainer."""
    return (
        f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace, safe='')}/{PLURAL}/"
        f"{quote(name, safe='')}"
    )


def check_kubeconfig_file(path: str) -> None:
    """Refuse a kubeconfig that does not exist or is not a file, saying so (the client library
    would only log a warning and then miss its ``current-context``)."""
    if not os.path.exists(path):
        raise PermanentError(f"cannot use the Kubernetes configuration {path}: no such file")
    if not os.path.isfile(path):
        raise PermanentError(f"cannot use the Kubernetes configuration {path}: not a file")


async def load_api_client(
    kubeconfig: str | None = None,
    *,
    context: str | None = None,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
) -> Any:
    """A kubernetes-asyncio ``ApiClient``: from ``kubeconfig`` (else ``KUBECONFIG``, else
    ``~/.kube/config``) when one exists, else the in-cluster service account: the API server
    at ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT``, the ``token`` and ``ca.crt``
    in ``service_account_dir``.

    A kubeconfig that cannot be used is a :class:`PermanentError` naming it.
    """
    from adapters.kubernetes.libimport import import_light

    import_light()
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.config.config_exception import ConfigException

    path = kubeconfig_path(kubeconfig, os.environ)
    if path is not None:
        check_kubeconfig_file(path)
    try:
        if path is not None:
            return await config.new_client_from_config(
                config_file=path, context=context, persist_config=False
            )
        configuration = client.Configuration()
        # Unannotated upstream.
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration,
            token_filename=os.path.join(service_account_dir, "token"),
            cert_filename=os.path.join(service_account_dir, "ca.crt"),
        )
        return client.ApiClient(configuration)
    except (ConfigException, OSError, ValueError) as exc:
        where = path or f"the in-cluster service account ({service_account_dir})"
        raise PermanentError(f"cannot use the Kubernetes configuration {where}: {exc}") from exc


def env_proxy(host: str) -> str | None:
    """The proxy the environment names for the API server at ``host`` (``HTTPS_PROXY`` or
    ``HTTP_PROXY`` by its scheme, either case), or None when there is none or ``NO_PROXY``
    exempts the host (the standard library's reading of these variables)."""
    parts = urlsplit(host)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme or "https")
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    return proxy


class KubeClient:
    """Raw JSON calls and watches over a kubernetes-asyncio ``ApiClient`` (which it closes)."""

    def __init__(
        self,
        api_client: Any,
        *,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[str], None] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._api = api_client
        self._retry = retry or RetryPolicy()
        self._on_retry = on_retry
        self._timeout = timeout
        configuration = api_client.configuration
        self._proxy: str | None = configuration.proxy or env_proxy(configuration.host)
        self._server_hostname: str | None = configuration.tls_server_name or None
        self._session: aiohttp.ClientSession | None = None
        self._user_agent = user_agent()

    @property
    def host(self) -> str:
        """The API server's URL."""
        host: str = self._api.configuration.host
        return host

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()  # not the pool: kubernetes-asyncio's, closed next
        await self._api.close()
        if self.host.startswith("https:"):
            # aiohttp closes TLS connections in the background (the TLS close_notify); the
            # loop must run a moment longer or their sockets are left to the garbage collector.
            await asyncio.sleep(_TLS_CLOSE_SECONDS)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = JSON,
        accept: str = JSON,
        limits: aiohttp.ClientTimeout | float | None,
    ) -> aiohttp.ClientResponse:
        """One request; the raw response (the caller reads and releases it)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=self._api.rest_client.pool_manager.connector,
                connector_owner=False,
                trust_env=False,
                read_bufsize=_READ_BUFFER,
            )
        url = self.host + path
        if query:
            url += "?" + urlencode(query)
        headers = {
            **self._api.default_headers,
            "User-Agent": self._user_agent,
            "Accept": accept,
            "Content-Type": content_type,
        }
        # The current credentials (a rotated service-account token, a refreshed exec token).
        bearer = (await self._api.configuration.auth_settings()).get("BearerToken")
        if bearer:
            headers[bearer["key"]] = bearer["value"]
        if isinstance(limits, float | int):
            limits = aiohttp.ClientTimeout(total=limits)
        try:
            response: aiohttp.ClientResponse = await self._session.request(
                method,
                url,
                headers=headers,
                data=None if body is None else msgspec.json.encode(body),
                timeout=limits or aiohttp.ClientTimeout(),
                proxy=self._proxy,
                server_hostname=self._server_hostname,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RetryableError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        return response

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = JSON,
        accept: str = JSON,
        api: str,
    ) -> bytes:
        """One call, retried; the response body. Errors as described in the module."""
        what = f"{method} {path}"

        async def attempt() -> bytes:
            response = await self._send(
                method, path, query=query, body=body, content_type=content_type,
                accept=accept, limits=self._timeout,
            )  # fmt: skip
            try:
                data = await response.read()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise RetryableError(f"{what}: {type(exc).__name__}: {exc}") from exc
            finally:
                response.release()
            if response.status < 300:
                return data
            if response.status in _RETRYABLE_STATUS:
                raise RetryableError(
                    f"{what}: {response.status} {_status_message(data)}".rstrip(),
                    parse_retry_after(response.headers.get("Retry-After")),
                )
            raise error_for(response.status, data, what)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            if self._on_retry is not None:
                self._on_retry(api)

        try:
            return await call_with_retries(self._retry, self._retry.attempts, attempt, before_sleep)
        except RetryableError as exc:
            raise TransientError(str(exc)) from exc

    @asynccontextmanager
    async def watch(
        self, path: str, *, query: Sequence[tuple[str, str]], accept: str = JSON
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open one watch (not retried: the caller relists or re-watches); the streaming
        response, released on exit. An error status raises as :meth:`request` would."""
        response = await self._send(
            "GET",
            path,
            query=[*query, ("watch", "true")],
            accept=accept,
            # No total timeout: the server ends the watch (timeoutSeconds); the caller's
            # inactivity watchdog notices a dead one.
            limits=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
        )
        try:
            if response.status >= 300:
                data = await response.read()
                if response.status in _RETRYABLE_STATUS:
                    # The caller backs off before re-watching; the server's Retry-After, if
                    # any, is the least it waits.
                    raise RetryableError(
                        f"watch {path}: {response.status} {_status_message(data)}".rstrip(),
                        parse_retry_after(response.headers.get("Retry-After")),
                    )
                raise error_for(response.status, data, f"watch {path}")
            yield response
        finally:
            response.close()


async def read_line(response: aiohttp.ClientResponse, *, idle: float) -> bytes:
    """The next line of a watch stream (``b""`` at its end); TimeoutError after ``idle``
    seconds without one (the inactivity watchdog)."""
    async with asyncio.timeout(idle):
        line: bytes = await response.content.readline()
    return line
