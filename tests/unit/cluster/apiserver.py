"""A small in-process server playing the parts of the Kubernetes API that cluster mode's status
reporter, finalizing writer and agent locator call, for their unit tests.

It keeps WindowsContainers as JSON (get; JSON merge patch of the object and of its ``status``,
each checked against the ``metadata.resourceVersion`` it carries, 409 when stale, the version
bumped on every write; an object being deleted is gone once its last finalizer is), records
Events, and lists Pods by label and ``spec.nodeName``. ``fail(method, path, status)`` makes the
next matching request answer that status instead. Every request is recorded. The real API
server's behaviour is what the integration tests (tests/kube.py) check; this one only stands in
for it where a unit test needs to see or shape each call.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from kubernetes_asyncio import client as k8s

from adapters.kubernetes.client import KubeClient
from adapters.retry import RetryPolicy
from controller.cluster import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    InvalidObjectError,
    WindowsContainer,
    decode_windows_container,
)

NODE = "win-node-1"


def wc_path(namespace: str, name: str) -> str:
    """The API path of a WindowsContainer."""
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"


def windows_container(namespace: str, name: str, **metadata: Any) -> dict[str, Any]:
    """A valid WindowsContainer on :data:`NODE` (``metadata`` added to its metadata)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}",
                     "generation": 1, **metadata},
        "spec": {
            "nodeName": NODE,
            "command": ["cmd.exe", "/S", "/C"],
            "args": ["echo hello"],
            "layerFolders": ["C:\\layers\\base", "C:\\layers\\rw"],
            "isolation": "process",
        },
    }  # fmt: skip


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: ``patch`` merged into ``target`` (null deletes a member, lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


@dataclass
class Call:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, str]
    body: Any


class FakeAPIServer:
    """The API paths cluster mode's writers call, over in-memory objects (see the module)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.pods: list[dict[str, Any]] = []
        self.calls: list[Call] = []
        #: Called on every request before it is answered (method, path).
        self.on_request: Callable[[str, str], None] = lambda method, path: None
        self._faults: dict[tuple[str, str], list[int]] = {}

    def add(self, obj: dict[str, Any]) -> str:
        """Store an object (resourceVersion "1" unless it has one); its key."""
        meta = obj["metadata"]
        meta.setdefault("resourceVersion", "1")
        self.objects[wc_path(meta["namespace"], meta["name"])] = obj
        return f"{meta['namespace']}/{meta['name']}"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored object of ``<namespace>/<name>``, or None."""
        return self.objects.get(wc_path(*key.split("/")))

    def decoded(self, key: str) -> WindowsContainer | InvalidObjectError:
        """The stored object as the source's cache holds it."""
        try:
            return decode_windows_container(json.dumps(self.get(key)).encode())
        except InvalidObjectError as exc:
            return exc

    def fail(self, method: str, path: str, status: int, *, times: int = 1) -> None:
        """Answer the next ``times`` requests ``method path`` with ``status``."""
        self._faults.setdefault((method, path), []).extend([status] * times)

    def requests(self, method: str, path: str | None = None) -> list[Call]:
        """The requests received with ``method`` (on ``path``, if given)."""
        return [c for c in self.calls if c.method == method and path in (None, c.path)]

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one request."""
        raw = await request.read()
        body: Any = json.loads(raw) if raw else None
        path = request.path
        self.calls.append(Call(request.method, path, dict(request.query), body))
        self.on_request(request.method, path)
        faults = self._faults.get((request.method, path))
        if faults:
            return _status(faults.pop(0), "injected")
        if request.method == "POST" and path.endswith("/events"):
            self.events.append(body)
            return web.json_response(body, status=201)
        if request.method == "GET" and path.endswith("/pods"):
            return web.json_response({"kind": "PodList", "items": self._pods(request.query)})
        status_only = path.endswith("/status")
        obj = self.objects.get(path.removesuffix("/status"))
        if obj is None:
            return _status(404, "not found")
        if request.method == "GET":
            return web.json_response(obj)
        if request.method != "PATCH":
            return _status(405, "method not allowed")
        meta = obj["metadata"]
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != meta["resourceVersion"]:
            return _status(409, "the object has been modified")
        if status_only:
            obj["status"] = merge_patch(obj.get("status"), body.get("status"))
        else:
            patch = {k: v for k, v in body.items() if k != "status"}
            patch["metadata"] = {
                k: v for k, v in patch.get("metadata", {}).items() if k != "resourceVersion"
            }
            obj.update(merge_patch(obj, patch))
        meta = obj["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            del self.objects[path.removesuffix("/status")]
        return web.json_response(obj)

    def _pods(self, query: Any) -> list[dict[str, Any]]:
        labels = dict(
            part.split("=", 1) for part in query.get("labelSelector", "").split(",") if part
        )
        node = query.get("fieldSelector", "").removeprefix("spec.nodeName=")
        return [
            pod
            for pod in self.pods
            if labels.items() <= pod["metadata"].get("labels", {}).items()
            and node in ("", pod["spec"]["nodeName"])
        ]


def _status(code: int, message: str) -> web.Response:
    return web.json_response(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
         "code": code},
        status=code,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def serving(api: FakeAPIServer) -> AsyncIterator[KubeClient]:
    """Serve ``api`` on a loopback port; a real :class:`KubeClient` for it (no retries)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        configuration = k8s.Configuration(host=str(server.make_url("")).rstrip("/"))
        configuration.api_key = {"BearerToken": "test-token"}
        kube = KubeClient(k8s.ApiClient(configuration), retry=RetryPolicy(attempts=1))
        try:
            yield kube
        finally:
            await kube.close()
