"""The agent's bundles on disk: ``<root>/<namespace>/<name>/``, written by the local writer.

Each namespace directory is the root of one :class:`~adapters.bundles.local.LocalBundleWriter`,
which makes every write atomic and durable, rewrites nothing when the content is unchanged and
keeps the bundle's digest in ``.digest``. That digest is what the agent reports: it is read
back after each write under the bundle's own lock, so a PUT answers with the digest of exactly
the version it left in place.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from adapters.agent.wire import is_valid_namespace, split_bundle_id
from adapters.bundles.local import DIGEST_FILE, LocalBundleWriter
from controller.bundle import BundleContent, is_valid_bundle_id
from controller.errors import TransientError

_DIGEST_MAX_BYTES = 200


class AgentStore:
    """Bundles below ``root`` by ``<namespace>/<name>``; ids are checked before any path."""

    def __init__(self, root: Path, *, fsync_threads: int = 4) -> None:
        self._root = root
        self._fsync_threads = fsync_threads
        self._writers: dict[str, LocalBundleWriter] = {}
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

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

    async def put(
        self,
        bundle_id: str,
        files: Mapping[str, bytes],
        admit: Callable[[], None] | None = None,
    ) -> tuple[bool, str]:
        """Write the bundle; whether anything changed, and the digest now kept for it.

        ``admit`` runs under the bundle's lock before the write (nothing written if it raises),
        so uploads of one id are admitted in the order they are written.

        Raises :class:`~controller.errors.PermanentError` for a bad id or file name (nothing
        written) and :class:`~controller.errors.TransientError` when the file system fails.
        """
        namespace, name = split_bundle_id(bundle_id)
        # Building the content may hash every payload: not on the event loop.
        content = await asyncio.to_thread(BundleContent, files=dict(files))
        async with self._lock(bundle_id):
            if admit is not None:
                admit()
            changed = await self._writer(namespace).write(name, content)
            digest = await asyncio.to_thread(_read_digest, self._root / namespace / name)
        if digest is None:
            raise TransientError(f"bundle {bundle_id} was written but has no digest")
        return changed, digest

    async def delete(self, bundle_id: str, admit: Callable[[], None] | None = None) -> bool:
        """Remove the bundle; ``False`` when there was none. ``admit`` as for :meth:`put`."""
        namespace, name = split_bundle_id(bundle_id)
        async with self._lock(bundle_id):
            if admit is not None:
                admit()
            return await self._writer(namespace).remove(name)

    async def list_bundles(self) -> list[tuple[str, str]]:
        """Every bundle present with a digest, as ``(id, digest)`` sorted by id.

        A bundle caught without ``.digest`` (an interrupted in-place update, which the next
        write repairs) is left out, so a resync delivers it again.
        """
        try:
            return await asyncio.to_thread(_list_sync, self._root)
        except OSError as exc:
            raise TransientError(f"cannot list bundles in {self._root}: {exc}") from exc

    async def sweep(self) -> list[str]:
        """Delete what an interrupted write left (temporary directories); the names deleted.

        Run at start-up, before serving: every bundle present is kept, whole.
        """
        removed: list[str] = []
        try:
            namespaces = await asyncio.to_thread(_namespaces, self._root)
        except OSError as exc:
            raise TransientError(f"cannot read the bundle root {self._root}: {exc}") from exc
        for namespace in namespaces:
            writer = self._writer(namespace)
            removed += [f"{namespace}/{n}" for n in await writer.sweep(await writer.list_ids())]
        return removed

    async def check_root(self) -> None:
        """Create the root if needed; a :class:`TransientError` when it cannot be used."""
        try:
            await asyncio.to_thread(self._root.mkdir, mode=0o700, parents=True, exist_ok=True)
            if not await asyncio.to_thread(os.access, self._root, os.W_OK | os.X_OK):
                raise TransientError(f"the bundle root {self._root} is not writable")
        except OSError as exc:
            raise TransientError(f"cannot use the bundle root {self._root}: {exc}") from exc

    def close(self) -> None:
        """Let every writer's fsync threads end."""
        for writer in self._writers.values():
            writer.close()

    @asynccontextmanager
    async def _lock(self, bundle_id: str) -> AsyncIterator[None]:
        # Held only while in use, so the map does not grow with every id ever seen.
        lock, users = self._locks.setdefault(bundle_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[bundle_id]


def _read_digest(bundle_dir: Path) -> str | None:
    try:
        with open(bundle_dir / DIGEST_FILE, "rb") as f:
            text = f.read(_DIGEST_MAX_BYTES).decode("ascii", "replace").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return text or None


def _namespaces(root: Path) -> list[str]:
    names: list[str] = []
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                if is_valid_namespace(entry.name) and entry.is_dir(follow_symlinks=False):
                    names.append(entry.name)
    except FileNotFoundError:
        return []
    return sorted(names)


def _list_sync(root: Path) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for namespace in _namespaces(root):
        base = root / namespace
        try:
            with os.scandir(base) as entries:
                names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            continue
        for name in sorted(names):
            if not is_valid_bundle_id(name):
                continue  # temporary and leftover entries
            digest = _read_digest(base / name)
            if digest is not None:
                found.append((f"{namespace}/{name}", digest))
    return found
