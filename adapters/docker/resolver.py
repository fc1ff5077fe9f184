"""Turns a container id into a complete generator request, from the engine and the swarm.

What the Engine API shows goes in verbatim (container and image inspect). What it does not
show is resolved here: node facts (``/info`` plus settings), layer folders, network endpoints,
for swarm tasks their secrets and configs, and credential specs (``config://`` from the swarm,
``file://`` and ``registry://`` from this host, read in a worker thread so the event loop never
blocks on them). Swarm tasks and configs come from a swarm manager: the node's own engine, or
``swarm_client`` (``--swarm-host``) when the node is a worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from adapters.credspecs import NodeCredentialSpecReader
from adapters.docker.client import DockerClient
from adapters.docker.paths import CONTAINER_ID, IdKind, api_path, checked
from adapters.docker.secrets import LinkRule, read_plain_file, read_secret, windows_link_allowed
from adapters.docker.types import Config, Info, Task, decode
from controller.credspec import (
    CredentialSpecReader,
    check_file_path,
    credential_spec_base,
    parse_security_options,
)
from controller.errors import NotFoundError, PermanentError, SpecError, TransientError
from controller.models import (
    SWARM_TASK_LABEL,
    ConfigRef,
    Container,
    Image,
    NodeFacts,
    NodeSettings,
    Request,
    ResolvedCredentialSpecs,
    SecretRef,
)
from controller.winpath import host_join

Observe = Callable[[str, float], None]
IMAGE_CACHE_SIZE = 256
#: The largest ``layerchain.json`` read (a chain of a few hundred paths is a few tens of KiB).
MAX_LAYER_CHAIN_BYTES = 1024 * 1024
#: How many containers waiting for their swarm task are remembered (the oldest is forgotten).
WAITING_SIZE = 4096
#: Pauses before asking again for a task that names no container yet (0.75 s in all).
TASK_SETTLE_DELAYS = (0.05, 0.1, 0.2, 0.4)
SERVICE_LABEL = "com.docker.swarm.service.id"
NODE_LABEL = "com.docker.swarm.node.id"
TASK_NAME_LABEL = "com.docker.swarm.task.name"
_BUILD = re.compile(r"^\d+\.\d+ (\d+)")
_T = TypeVar("_T")

NOT_A_MANAGER = (
    "container {id} is a swarm task but this node is not a swarm manager; "
    "set --swarm-host to a manager's Engine API"
)


def node_facts_from_info(info: Info, overrides: NodeSettings) -> NodeFacts:
    """Node facts from ``GET /info`` (decoded as :class:`Info`); the operator's settings win.

    A Linux engine (a development host) is treated as a node that supports LCOW, so Linux
    images there get the LCOW variant of the spec.
    """
    os_type = info.os_type or "windows"
    match = _BUILD.match(info.kernel_version)
    build = int(match.group(1)) if (match and os_type == "windows") else 17763
    return NodeFacts(
        windows_build=overrides.windows_build or build,
        cpu_count=overrides.cpu_count or info.ncpu or 1,
        default_isolation=overrides.default_isolation or info.isolation or "process",
        lcow_supported=(
            overrides.lcow_supported if overrides.lcow_supported is not None else os_type == "linux"
        ),
        dns_search=list(overrides.dns_search) or None,
        daemon_root=overrides.daemon_root or info.docker_root_dir,
    )


#: The ``kind`` label values of ``winspec_dependency_fetch_seconds`` in Docker mode.
DEPENDENCY_KINDS = (
    "container",
    "image",
    "task",
    "secret",
    "config",
    "credential_spec",
    "layers",
    "endpoints",
)


class DockerRequestResolver:
    """Implements :class:`controller.ports.RequestResolver` against a Docker engine.

    ``swarm_client`` answers ``/tasks`` and ``/configs`` (a manager's engine; default: the
    node's own). ``swarm_worker`` says the node is a swarm worker and no manager was given:
    its swarm-task containers are then refused with a permanent error saying so, instead of
    asking an engine that can only answer 503.

    Every dependency fetch is timed through ``observe(kind, seconds)``; the kinds are
    :data:`DEPENDENCY_KINDS`: ``container``, ``image``, ``task``, ``secret``,
    ``config`` (mounted configs), ``credential_spec`` (``config://``, ``file://`` and
    ``registry://``), ``layers`` (``layerchain.json``) and ``endpoints`` (the inspect of the
    container whose network is shared).
    """

    def __init__(
        self,
        client: DockerClient,
        *,
        node: NodeFacts,
        bundle_root: str,
        secrets_dir: Path,
        observe: Observe | None = None,
        swarm_client: DockerClient | None = None,
        swarm_worker: bool = False,
        reader: CredentialSpecReader | None = None,
        clock: Callable[[], float] = time.monotonic,
        task_settle: tuple[float, ...] = TASK_SETTLE_DELAYS,
    ) -> None:
        self._client = client
        self._swarm = swarm_client or client
        self._swarm_worker = swarm_worker and swarm_client is None
        self._node = node
        self._bundle_root = bundle_root
        self._secrets_dir = secrets_dir
        self._observe = observe
        self._reader: CredentialSpecReader = reader or NodeCredentialSpecReader()
        # Image inspects by id never change: keep the most recent ones (insertion order).
        self._images: dict[str, Image] = {}
        # When each container still waiting for its swarm task was first seen waiting.
        self._clock = clock
        self._task_settle = task_settle
        self._waiting: OrderedDict[str, float] = OrderedDict()

    def _record(self, kind: str, start: float) -> None:
        if self._observe is not None:
            self._observe(kind, time.perf_counter() - start)

    async def _timed(
        self, kind: str, path: str, api: str, *, client: DockerClient | None = None
    ) -> bytes:
        start = time.perf_counter()
        try:
            return await (client or self._client).get_raw(path, api=api)
        finally:
            self._record(kind, start)

    async def _in_thread(
        self, kind: str, func: Callable[..., _T], /, *args: object, **kwargs: object
    ) -> _T:
        """``func(*args, **kwargs)`` in a worker thread (blocking file or registry I/O), timed."""
        start = time.perf_counter()
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        finally:
            self._record(kind, start)

    async def resolve(self, key: str) -> Request | None:
        """The request for container ``key``, or ``None`` when it no longer exists."""
        path = api_path("containers", IdKind.CONTAINER, key, "json")
        try:
            raw = await self._timed("container", path, "container_inspect")
        except NotFoundError:
            self._waiting.pop(key, None)
            return None
        container: Container = decode(raw, Container, "container inspect")
        if not CONTAINER_ID.fullmatch(container.id):
            raise PermanentError(f"container {key} has an invalid id {container.id[:80]!r}")
        if container.swarm_task_id and self._swarm_worker:
            raise PermanentError(NOT_A_MANAGER.format(id=container.id))
        image = await self._image(container.image, key)
        layers = await self._layer_folders(container, image)
        endpoints = {
            name: {"hnsid": ep.endpoint_id}
            for name, ep in (
                (container.network_settings.networks or {}).items()
                if container.network_settings
                else ()
            )
            if ep is not None and ep.endpoint_id
        }
        shared_id, shared_endpoints = await self._shared_network(container)
        secrets: list[SecretRef] = []
        configs: list[ConfigRef] = []
        if container.swarm_task_id:
            secrets, configs = await self._task_dependencies(container, container.swarm_task_id)
        credspecs = await self._credential_specs(container, image)
        return Request(
            container=container,
            image=image,
            node=self._node,
            layer_folders=layers,
            endpoints=endpoints,
            shared_endpoints=shared_endpoints,
            network_shared_container_id=shared_id,
            secrets=secrets,
            configs=configs,
            credential_specs=credspecs,
            bundle_dir=host_join(self._bundle_root, key),
        )

    async def _image(self, image_id: str, key: str) -> Image:
        """The image inspect of ``image_id`` (an immutable content id), cached."""
        cached = self._images.get(image_id)
        if cached is not None:
            return cached
        try:
            path = api_path("images", IdKind.IMAGE, image_id, "json")
            raw = await self._timed("image", path, "image_inspect")
        except NotFoundError as exc:
            raise PermanentError(f"image {image_id} of container {key} does not exist") from exc
        image: Image = decode(raw, Image, "image inspect")
        if image_id.startswith("sha256:"):
            if len(self._images) >= IMAGE_CACHE_SIZE:
                del self._images[next(iter(self._images))]
            self._images[image_id] = image
        return image

    async def _layer_folders(self, container: Container, image: Image) -> list[str]:
        """Layer folders topmost first, the container's read-write layer last (S12)."""
        driver = container.graph_driver
        data = (driver.data if driver else None) or {}
        name = driver.name if driver else ""
        if name == "windowsfilter" and data.get("dir"):
            rw = data["dir"]
            chain = await self._in_thread("layers", _read_layer_chain, rw)
            return [*chain, rw]
        if data.get("UpperDir"):
            lower = [p for p in data.get("LowerDir", "").split(":") if p]
            return [*lower, data["UpperDir"]]
        if data.get("Dir"):
            return [data["Dir"]]
        # Drivers that show no directories (vfs): the image's layer digests, topmost first,
        # then the container id, as stable identifiers of the same chain.
        layers = list(reversed((image.root_fs.layers if image.root_fs else None) or []))
        return [*layers, container.id]

    async def _shared_network(self, container: Container) -> tuple[str | None, list[str]]:
        mode = container.host_config.network_mode
        if not mode.startswith("container:"):
            return None, []
        ref = mode.split(":", 1)[1]
        try:
            path = api_path("containers", IdKind.CONTAINER, ref, "json")
            raw = await self._timed("endpoints", path, "container_inspect")
        except NotFoundError as exc:
            raise PermanentError(
                f"container {container.id} shares the network of {ref}, which does not exist"
            ) from exc
        shared: Container = decode(raw, Container, "container inspect")
        networks = (shared.network_settings.networks if shared.network_settings else None) or {}
        endpoints = ((name, ep) for name, ep in sorted(networks.items()) if ep is not None)
        return shared.id, [ep.endpoint_id for _name, ep in endpoints if ep.endpoint_id]

    async def _task_dependencies(
        self, container: Container, task_id: str
    ) -> tuple[list[SecretRef], list[ConfigRef]]:
        """Secrets and configs of the swarm task the container runs, with their payloads.

        The task label is anyone's to write: the task must prove the container is its own
        (:func:`check_task_owner`) before anything of it is resolved.
        """
        task, owned = await self._owning_task(container, task_id)
        # Right after the create event the task is still "preparing" and names no container;
        # the swarm records it within a fraction of a second. Ask again a few times before
        # handing the container back to the queue as a retry.
        for delay in () if owned else self._task_settle:
            await asyncio.sleep(delay)
            task, owned = await self._owning_task(container, task_id)
            if owned:
                break
        if not owned:
            waited = self._waited(container.id)
            raise TransientError(
                f"swarm task {task_id} does not name its container yet (the swarm records it "
                f"after creating container {container.id}); waiting for it for {waited:.0f}s"
            )
        self._waiting.pop(container.id, None)
        spec = task.spec.container_spec
        secrets: list[SecretRef] = []
        for sref in (spec.secrets if spec else None) or []:
            checked(IdKind.SECRET, sref.secret_id)
            data = await self._secret_payload(sref.secret_name, sref.secret_id)
            secrets.append(
                SecretRef(
                    secret_id=sref.secret_id,
                    secret_name=sref.secret_name,
                    target=sref.file.name if sref.file else "",
                    data=data,
                )
            )
        configs: list[ConfigRef] = []
        for cref in (spec.configs if spec else None) or []:
            if cref.file is None:
                continue  # runtime-only configs (credential specs) are not mounted
            configs.append(
                ConfigRef(
                    config_id=cref.config_id,
                    config_name=cref.config_name,
                    target=cref.file.name,
                    data=await self._config_payload(cref.config_id, kind="config"),
                )
            )
        return secrets, configs

    async def _owning_task(self, container: Container, task_id: str) -> tuple[Task, bool]:
        """The task the container claims, and whether it names the container yet."""
        path = api_path("tasks", IdKind.TASK, task_id)
        try:
            raw = await self._timed("task", path, "task_inspect", client=self._swarm)
        except NotFoundError as exc:
            waited = self._waited(container.id)
            raise TransientError(
                f"swarm task {task_id} of container {container.id} not found (yet); "
                f"waiting for it for {waited:.0f}s"
            ) from exc
        task = decode(raw, Task, f"swarm task {task_id}")
        try:
            return task, check_task_owner(container, task_id, task)
        except PermanentError:
            self._waiting.pop(container.id, None)
            raise

    def _waited(self, container_id: str) -> float:
        """Seconds since ``container_id`` was first seen waiting for its task (bounded memory)."""
        now = self._clock()
        first = self._waiting.setdefault(container_id, now)
        while len(self._waiting) > WAITING_SIZE:
            self._waiting.popitem(last=False)
        return now - first

    async def _secret_payload(self, name: str, secret_id: str) -> bytes:
        """A secret's bytes, from where the swarm mounts the secrets granted to winspec.

        Read by :func:`adapters.docker.secrets.read_secret`: no link (but, on Windows, the one
        Docker makes), no special file, nothing larger than a swarm secret can be.
        """
        rule: LinkRule | None = None
        if sys.platform == "win32":
            rule = partial(
                windows_link_allowed, secret_id=secret_id, daemon_root=self._node.daemon_root
            )
        return await self._in_thread(
            "secret", read_secret, str(self._secrets_dir), name, secret_id, link_allowed=rule
        )

    async def _config_payload(self, config_id: str, *, kind: str) -> bytes:
        """A swarm config's data, from a manager (``kind``: what it is for, for the timing)."""
        path = api_path("configs", IdKind.CONFIG, config_id)
        try:
            raw = await self._timed(kind, path, "config_inspect", client=self._swarm)
        except NotFoundError as exc:
            raise PermanentError(f"swarm config {config_id} does not exist") from exc
        config = decode(raw, Config, f"swarm config {config_id}")
        return config.spec.data or b""

    async def _credential_specs(
        self, container: Container, image: Image
    ) -> ResolvedCredentialSpecs:
        """The credential specs the generator will look up (S21–S25), resolved in advance.

        ``config://`` comes from the swarm; ``file://`` and ``registry://`` are read on this
        host in a worker thread, keyed by the value after the scheme as the generator looks
        them up. Options the generator refuses (S21–S23, ``config://`` outside a swarm task) are
        not reported here: resolving stops at the first of them, and the generator, which
        checks every option again in the same order, reports it with the rule's exact message.
        A file or registry value that cannot be read is the reader's permanent error.
        """
        resolved = ResolvedCredentialSpecs()
        options = container.host_config.security_opt
        if not options or image.os != "windows":
            return resolved  # LCOW ignores credential specs; other platforms are refused
        try:
            parsed = parse_security_options(options)
        except SpecError:
            return resolved
        for opt in parsed:
            if opt.scheme == "config":
                if not container.swarm_task_id:
                    break  # S25: the generator reports the S22 error
                if opt.value not in resolved.config:
                    data = await self._config_payload(opt.value, kind="credential_spec")
                    resolved.config[opt.value] = data.decode("utf-8", "replace")
            elif opt.scheme == "file":
                if opt.value in resolved.file:
                    continue
                try:
                    parts = check_file_path(opt.value, daemon_root=self._node.daemon_root)
                except SpecError:
                    break  # S23: the generator reports it
                resolved.file[opt.value] = await self._in_thread(
                    "credential_spec",
                    self._reader.read_file,
                    parts,
                    base=credential_spec_base(self._node.daemon_root),
                    container_id=container.id,
                )
            elif opt.scheme == "registry" and opt.value not in resolved.registry:
                resolved.registry[opt.value] = await self._in_thread(
                    "credential_spec",
                    self._reader.read_registry,
                    opt.value,
                    container_id=container.id,
                )
        return resolved


def _read_layer_chain(rw_dir: str) -> list[str]:
    """The parent layers of a windowsfilter layer, from its ``layerchain.json``."""
    path = os.path.join(rw_dir, "layerchain.json")
    try:
        raw = read_plain_file(path, f"layer chain {path}", max_bytes=MAX_LAYER_CHAIN_BYTES)
    except FileNotFoundError as exc:
        raise TransientError(f"{path} does not exist (yet)") from exc
    try:
        chain = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise PermanentError(f"cannot read layer chain {path}: {exc}") from exc
    if not isinstance(chain, list) or not all(isinstance(p, str) for p in chain):
        raise PermanentError(f"layer chain {path} is not a list of paths")
    return list(chain)


def check_task_owner(container: Container, task_id: str, task: Task) -> bool:
    """Whether ``task`` is the one that created ``container``, as its label claims.

    True when the task names this container; False when the task does not name a container
    yet (the swarm fills it in after creating the container: wait). A :class:`PermanentError`
    naming every disagreement when the task is someone else's: it names another container,
    or the container's service, node or task name labels disagree with the task.
    """
    labels = container.config.labels or {}
    problems: list[str] = []
    if task.id != task_id:
        problems.append(f"the swarm answered with task {_short(task.id)}")
    for label, actual in ((SERVICE_LABEL, task.service_id), (NODE_LABEL, task.node_id)):
        claimed = labels.get(label)
        if claimed != actual:
            problems.append(
                f"its label {label} is {_short(claimed)} but the task's is {_short(actual)}"
            )
    name = labels.get(TASK_NAME_LABEL)
    slot = str(task.slot) if task.slot else task.node_id
    if name is not None and not name.endswith(f".{slot}.{task_id}"):
        problems.append(f"its label {TASK_NAME_LABEL} {_short(name)} is not a name of this task")
    if task.container_id and task.container_id != container.id:
        problems.append(f"the task runs container {_short(task.container_id)}")
    if problems:
        raise PermanentError(
            f"container {container.id} claims swarm task {task_id} ({SWARM_TASK_LABEL}) but is "
            f"not that task's container: {'; '.join(problems)}; no secrets or configs resolved"
        )
    return bool(task.container_id)


def _short(value: str | None, limit: int = 120) -> str:
    """``value`` quoted for a message, cut at ``limit`` characters (labels are anyone's)."""
    if value is None or len(value) <= limit:
        return repr(value)
    return repr(value[:limit]) + "…"
