"""Turns a container id into a complete generator request, from the engine and the swarm.

What the Engine API shows goes in verbatim (container and image inspect). What it does not
show is resolved here: node facts (``/info`` plus settings), layer folders, network endpoints,
and for swarm tasks their secrets, configs and ``config://`` credential specs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from adapters.docker.client import DockerClient
from controller.credspec import parse_security_options
from controller.errors import (
    NotFoundError,
    PermanentError,
    RequestDecodeError,
    SpecError,
    TransientError,
)
from controller.models import (
    ConfigRef,
    Container,
    Image,
    NodeFacts,
    Request,
    ResolvedCredentialSpecs,
    SecretRef,
)
from controller.winpath import host_join

Observe = Callable[[str, float], None]
IMAGE_CACHE_SIZE = 256
_BUILD = re.compile(r"^\d+\.\d+ (\d+)")


@dataclass(frozen=True, slots=True)
class NodeOverrides:
    """Node facts set by the operator; ``None`` means "ask the engine"."""

    windows_build: int | None = None
    cpu_count: int | None = None
    default_isolation: str | None = None
    lcow_supported: bool | None = None
    dns_search: list[str] = field(default_factory=list)
    daemon_root: str | None = None


def node_facts_from_info(info: dict[str, Any], overrides: NodeOverrides) -> NodeFacts:
    """Node facts from ``GET /info``, with the operator's overrides applied.

    A Linux engine (a development host) is treated as a node that supports LCOW, so Linux
    images there get the LCOW variant of the spec.
    """
    os_type = str(info.get("OSType") or "windows")
    match = _BUILD.match(str(info.get("KernelVersion") or ""))
    build = int(match.group(1)) if (match and os_type == "windows") else 17763
    isolation = str(info.get("Isolation") or "process")
    return NodeFacts(
        windows_build=overrides.windows_build or build,
        cpu_count=overrides.cpu_count or int(info.get("NCPU") or 1),
        default_isolation=overrides.default_isolation or isolation,
        lcow_supported=(
            overrides.lcow_supported if overrides.lcow_supported is not None else os_type == "linux"
        ),
        dns_search=list(overrides.dns_search) or None,
        daemon_root=overrides.daemon_root or str(info.get("DockerRootDir") or ""),
    )


def _decode(raw: bytes, typ: type[Any], what: str) -> Any:
    try:
        return msgspec.json.decode(raw, type=typ)
    except msgspec.DecodeError as exc:
        raise RequestDecodeError(f"invalid {what} from the engine: {exc}") from exc


class DockerRequestResolver:
    """Implements :class:`controller.ports.RequestResolver` against a Docker engine."""

    def __init__(
        self,
        client: DockerClient,
        *,
        node: NodeFacts,
        bundle_root: str,
        secrets_dir: Path,
        observe: Observe | None = None,
    ) -> None:
        self._client = client
        self._node = node
        self._bundle_root = bundle_root
        self._secrets_dir = secrets_dir
        self._observe = observe
        # Image inspects by id never change: keep the most recent ones (insertion order).
        self._images: dict[str, Image] = {}

    async def _timed(self, kind: str, path: str, api: str) -> bytes:
        start = time.perf_counter()
        try:
            return await self._client.get_raw(path, api=api)
        finally:
            if self._observe is not None:
                self._observe(kind, time.perf_counter() - start)

    async def resolve(self, key: str) -> Request | None:
        """The request for container ``key``, or ``None`` when it no longer exists."""
        try:
            raw = await self._timed("container", f"/containers/{key}/json", "container_inspect")
        except NotFoundError:
            return None
        container: Container = _decode(raw, Container, "container inspect")
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
        credspecs = ResolvedCredentialSpecs()
        if container.swarm_task_id:
            secrets, configs = await self._task_dependencies(container.swarm_task_id)
        await self._config_credential_specs(container, credspecs)
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
            raw = await self._timed("image", f"/images/{image_id}/json", "image_inspect")
        except NotFoundError as exc:
            raise PermanentError(f"image {image_id} of container {key} does not exist") from exc
        image: Image = _decode(raw, Image, "image inspect")
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
            chain = await asyncio.to_thread(_read_layer_chain, rw)
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
            raw = await self._timed("endpoints", f"/containers/{ref}/json", "container_inspect")
        except NotFoundError as exc:
            raise PermanentError(
                f"container {container.id} shares the network of {ref}, which does not exist"
            ) from exc
        shared: Container = _decode(raw, Container, "container inspect")
        networks = (shared.network_settings.networks if shared.network_settings else None) or {}
        return shared.id, [
            networks[n].endpoint_id  # type: ignore[union-attr]
            for n in sorted(networks)
            if networks[n] is not None and networks[n].endpoint_id  # type: ignore[union-attr]
        ]

    async def _task_dependencies(self, task_id: str) -> tuple[list[SecretRef], list[ConfigRef]]:
        """Secrets and configs the swarm task references, with their payloads."""
        try:
            raw = await self._timed("task", f"/tasks/{task_id}", "task_inspect")
        except NotFoundError as exc:
            raise TransientError(f"swarm task {task_id} not found (yet)") from exc
        task = json.loads(raw)
        spec = ((task.get("Spec") or {}).get("ContainerSpec")) or {}
        secrets: list[SecretRef] = []
        for ref in spec.get("Secrets") or []:
            file = ref.get("File") or {}
            name = str(ref.get("SecretName") or "")
            secret_id = str(ref.get("SecretID") or "")
            data = await self._secret_payload(name, secret_id)
            secrets.append(
                SecretRef(
                    secret_id=secret_id,
                    secret_name=name,
                    target=str(file.get("Name") or ""),
                    data=data,
                )
            )
        configs: list[ConfigRef] = []
        for ref in spec.get("Configs") or []:
            file = ref.get("File")
            if not file:
                continue  # runtime-only configs (credential specs) are not mounted
            config_id = str(ref.get("ConfigID") or "")
            configs.append(
                ConfigRef(
                    config_id=config_id,
                    config_name=str(ref.get("ConfigName") or ""),
                    target=str(file.get("Name") or ""),
                    data=await self._config_payload(config_id),
                )
            )
        return secrets, configs

    async def _secret_payload(self, name: str, secret_id: str) -> bytes:
        """A secret's bytes, from where the swarm mounts the secrets granted to winspec."""
        path = self._secrets_dir / name
        if not name or os.sep in name or name in (".", ".."):
            raise PermanentError(f"secret {secret_id} has an unusable name {name!r}")
        start = time.perf_counter()
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as exc:
            raise PermanentError(
                f"secret {name!r} ({secret_id}) is not granted to winspec: grant it to the "
                f"winspec service so it appears in {self._secrets_dir}"
            ) from exc
        except OSError as exc:
            raise TransientError(f"cannot read secret {name!r}: {exc.strerror}") from exc
        finally:
            if self._observe is not None:
                self._observe("secret", time.perf_counter() - start)

    async def _config_payload(self, config_id: str) -> bytes:
        try:
            raw = await self._timed("config", f"/configs/{config_id}", "config_inspect")
        except NotFoundError as exc:
            raise PermanentError(f"swarm config {config_id} does not exist") from exc
        data = ((json.loads(raw).get("Spec") or {}).get("Data")) or ""
        try:
            return base64.b64decode(data, validate=True)
        except ValueError as exc:
            raise PermanentError(f"swarm config {config_id} has invalid data") from exc

    async def _config_credential_specs(
        self, container: Container, credspecs: ResolvedCredentialSpecs
    ) -> None:
        """Fetch ``config://`` credential specs of swarm tasks (S25)."""
        if not container.swarm_task_id or not container.host_config.security_opt:
            return
        try:
            options = parse_security_options(container.host_config.security_opt)
        except SpecError:
            return  # the generator reports the bad option with its exact message
        for opt in options:
            if opt.scheme == "config" and opt.value not in credspecs.config:
                data = await self._config_payload(opt.value)
                credspecs.config[opt.value] = data.decode("utf-8", "replace")


def _read_layer_chain(rw_dir: str) -> list[str]:
    """The parent layers of a windowsfilter layer, from its ``layerchain.json``."""
    path = os.path.join(rw_dir, "layerchain.json")
    try:
        with open(path, "rb") as f:
            chain = json.load(f)
    except FileNotFoundError as exc:
        raise TransientError(f"{path} does not exist (yet)") from exc
    except (OSError, ValueError) as exc:
        raise PermanentError(f"cannot read layer chain {path}: {exc}") from exc
    if not isinstance(chain, list) or not all(isinstance(p, str) for p in chain):
        raise PermanentError(f"layer chain {path} is not a list of paths")
    return list(chain)
