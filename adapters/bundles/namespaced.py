"""Bundles by ``<namespace>/<name>``: ``<root>/<namespace>/<name>/``, written by the local writer.

Cluster mode's local bundles and the node agent's are the same tree. :class:`NamespacedBundleWriter`
maps a key ``<namespace>/<name>`` (checked by :func:`controller.bundle.split_key` before it
becomes a path: the namespace a DNS-1123 label, the name a bundle id) onto one
:class:`~adapters.bundles.local.LocalBundleWriter` per namespace, rooted at
``<root>/<namespace>``: every write is atomic and durable, unchanged content is not rewritten,
and each bundle's digest is kept in ``.digest`` under that directory's own key.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path

from adapters.bundles.digestkey import load_digest_key
from adapters.bundles.local import LocalBundleWriter, is_intact, read_digest
from controller.bundle import BundleContent, WriteOutcome, is_valid_bundle_id, split_key
from controller.errors import TransientError
from controller.names import is_dns1123_label

log = logging.getLogger("winspec")

#: Which leftovers of interrupted writes a sweep may delete in one namespace: the names whose
#: leftovers go (None: all of them; empty: none, the namespace is skipped).
Owned = Callable[[str], Collection[str] | None]


class NamespacedBundleWriter:
    """A :class:`~controller.ports.BundleWriter` for keys ``<namespace>/<name>`` below ``root``."""

    def __init__(self, root: Path, *, fsync_threads: int = 8) -> None:
        self._root = root
        self._fsync_threads = fsync_threads
        self._writers: dict[str, LocalBundleWriter] = {}
        self._kept: dict[str, str] = {}

    @property
    def root(self) -> Path:
        """The directory that holds one directory per namespace."""
        return self._root

    def _writer(self, namespace: str) -> LocalBundleWriter:
        writer = self._writers.get(namespace)
        if writer is None:
            writer = LocalBundleWriter(self._root / namespace, fsync_threads=self._fsync_threads)
            self._writers[namespace] = writer
        return writer

    async def write(self, bundle_id: str, content: BundleContent) -> bool | WriteOutcome:
        """Write ``<root>/<namespace>/<name>`` atomically; false when unchanged and intact
        (the outcome says what drift was repaired)."""
        namespace, name = split_key(bundle_id)
        writer = self._writer(namespace)
        changed = await writer.write(name, content)
        self._kept[bundle_id] = await writer.digest(content)
        return changed

    async def remove(self, bundle_id: str) -> bool:
        """Remove ``<root>/<namespace>/<name>``; False when there was none."""
        namespace, name = split_key(bundle_id)
        self._kept.pop(bundle_id, None)
        return await self._writer(namespace).remove(name)

    def kept_digest(self, bundle_id: str) -> str | None:
        """The digest in ``.digest`` of the bundle this process last wrote for ``bundle_id``
        (keyed under its namespace directory's key: the same across restarts and for every
        process writing to this root; revealing nothing of the payloads)."""
        return self._kept.get(bundle_id)

    async def digest_on_disk(self, bundle_id: str) -> str | None:
        """What ``.digest`` of the bundle holds now (None: no bundle, or none with a digest)."""
        namespace, name = split_key(bundle_id)
        return await asyncio.to_thread(read_digest, self._root / namespace / name)

    async def list_ids(self) -> list[str]:
        """Every bundle present, as ``<namespace>/<name>``."""
        keys: list[str] = []
        for namespace in await self._namespaces():
            keys += [f"{namespace}/{name}" for name in await self._writer(namespace).list_ids()]
        return sorted(keys)

    async def list_digests(self) -> list[tuple[str, str]]:
        """Every bundle present with a digest, as ``(key, digest)`` sorted by key.

        Each bundle is read back and hashed (:func:`~adapters.bundles.local.is_intact`): one
        whose files do not match its ``.digest`` (drift: edited, truncated, deleted or added
        on the node) is left out and logged, as is one caught without ``.digest`` (an
        interrupted in-place update); the next write of its content repairs it.
        """
        try:
            return await asyncio.to_thread(_list_digests, self._root)
        except OSError as exc:
            raise TransientError(f"cannot list bundles in {self._root}: {exc}") from exc

    async def sweep(self, owned: Owned | None = None) -> list[str]:
        """Delete the leftovers of interrupted writes (of the names ``owned`` gives for each
        namespace; None: all); the keys deleted. No bundle is removed."""
        removed: list[str] = []
        for namespace in await self._namespaces():
            names = None if owned is None else owned(namespace)
            if names is not None and not names:
                continue
            writer = self._writer(namespace)
            # None, not a list of the bundles there: workers may publish new ones meanwhile.
            swept = await writer.sweep(None, owned=names)
            removed += [f"{namespace}/{n}" for n in swept]
        return removed

    async def atomic_replace_supported(self) -> bool:
        """Whether bundles below the root are replaced with one atomic swap."""
        return await LocalBundleWriter(self._root, fsync_threads=0).atomic_replace_supported()

    async def _namespaces(self) -> list[str]:
        try:
            return await asyncio.to_thread(_namespaces, self._root)
        except OSError as exc:
            raise TransientError(f"cannot read the bundle root {self._root}: {exc}") from exc

    def close(self) -> None:
        """Let every writer's fsync threads end."""
        for writer in self._writers.values():
            writer.close()


def _namespaces(root: Path) -> list[str]:
    names: list[str] = []
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                if is_dns1123_label(entry.name) and entry.is_dir(follow_symlinks=False):
                    names.append(entry.name)
    except FileNotFoundError:
        return []
    return sorted(names)


def _list_digests(root: Path) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for namespace in _namespaces(root):
        base = root / namespace
        try:
            with os.scandir(base) as entries:
                names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            continue
        key: bytes | None = None
        for name in sorted(names):
            if not is_valid_bundle_id(name):
                continue  # temporary and leftover entries
            digest = read_digest(base / name)
            if digest is None:
                continue
            key = load_digest_key(base) if key is None else key
            if not is_intact(base / name, digest, key):
                log.warning(
                    "bundle drift found: its files differ from its .digest; left out of the "
                    "listing, so that it is delivered and rewritten",
                    extra={"bundle": f"{namespace}/{name}"},
                )
                continue
            found.append((f"{namespace}/{name}", digest))
    return found
