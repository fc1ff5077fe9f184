"""The agent's bundles on disk: ``<root>/<namespace>/<name>/``, the tree of cluster mode.

A :class:`~adapters.bundles.namespaced.NamespacedBundleWriter` writes them (one
:class:`~adapters.bundles.local.LocalBundleWriter` per namespace directory), which makes every
write atomic and durable, rewrites nothing when the content is unchanged and keeps the bundle's
digest in ``.digest``. That digest is what the agent reports: it is read back after each write
under the bundle's own lock, so a PUT answers with the digest of exactly the version it left in
place.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from adapters.bundles.namespaced import NamespacedBundleWriter
from controller.bundle import BundleContent, WriteOutcome, split_key
from controller.errors import TransientError


class AgentStore:
    """Bundles below ``root`` by ``<namespace>/<name>``; ids are checked before any path."""

    def __init__(self, root: Path, *, fsync_threads: int = 4) -> None:
        self._root = root
        self._bundles = NamespacedBundleWriter(root, fsync_threads=fsync_threads)
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @property
    def root(self) -> Path:
        """The directory that holds one directory per namespace."""
        return self._root

    async def put(
        self,
        bundle_id: str,
        files: Mapping[str, bytes],
        admit: Callable[[], None] | None = None,
    ) -> tuple[bool | WriteOutcome, str]:
        """Write the bundle; whether anything changed (and what drift of the bundle on disk
        was repaired: unchanged content is read back, not trusted to ``.digest``), and the
        digest now kept for it.

        ``admit`` runs under the bundle's lock before the write (nothing written if it raises),
        so uploads of one id are admitted in the order they are written.

        Raises :class:`~controller.errors.PermanentError` for a bad id or file name (nothing
        written) and :class:`~controller.errors.TransientError` when the file system fails.
        """
        split_key(bundle_id)
        # Building the content may hash every payload: not on the event loop.
        content = await asyncio.to_thread(BundleContent, files=dict(files))
        async with self._lock(bundle_id):
            if admit is not None:
                admit()
            changed = await self._bundles.write(bundle_id, content)
            digest = await self._bundles.digest_on_disk(bundle_id)
        if digest is None:
            raise TransientError(f"bundle {bundle_id} was written but has no digest")
        return changed, digest

    async def delete(self, bundle_id: str, admit: Callable[[], None] | None = None) -> bool:
        """Remove the bundle; ``False`` when there was none. ``admit`` as for :meth:`put`."""
        split_key(bundle_id)
        async with self._lock(bundle_id):
            if admit is not None:
                admit()
            return await self._bundles.remove(bundle_id)

    async def list_bundles(self) -> list[tuple[str, str]]:
        """Every bundle present with a digest, as ``(id, digest)`` sorted by id.

        A bundle caught without ``.digest`` (an interrupted in-place update, which the next
        write repairs) is left out, so a resync delivers it again.
        """
        return await self._bundles.list_digests()

    async def sweep(self) -> list[str]:
        """Delete what an interrupted write left (temporary directories); the names deleted.

        Run at start-up, before serving: every bundle present is kept, whole.
        """
        return await self._bundles.sweep()

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
        self._bundles.close()

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
