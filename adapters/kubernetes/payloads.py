"""The Secrets and ConfigMaps resolves read, kept while their watch reports no change.

A Secret shared by many WindowsContainers is read once, not once per reconcile, and a restart's
first pass reads each distinct one once. An entry is dropped as soon as the metadata watch of
its kind reports the object (changed, deleted, or merely re-sent), and every entry of a kind
at each list of that kind (a relist after a gap may hide changes). A read that a change
overtook while in flight is not kept (nor one that ran beside it): the next resolve reads
again. At most :data:`MAX_ENTRIES` objects are kept (the oldest go first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from controller.cluster import Ref

MAX_ENTRIES = 4096

_V = TypeVar("_V")


@dataclass(slots=True)
class _Reads:
    """The reads of one object in flight: how many, and whether a change overtook them."""

    count: int = 0
    overtaken: bool = False


class PayloadCache(Generic[_V]):
    """Decoded payload objects by :data:`~controller.cluster.Ref` ``(kind, namespace, name)``."""

    def __init__(self, *, max_entries: int = MAX_ENTRIES) -> None:
        self._max = max_entries
        self._entries: dict[Ref, _V] = {}
        self._reading: dict[Ref, _Reads] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, ref: Ref) -> _V | None:
        """The object as last read, unless a change was reported since."""
        return self._entries.get(ref)

    def begin(self, ref: Ref) -> None:
        """A read of ``ref`` begins; :meth:`end` says how it ended."""
        self._reading.setdefault(ref, _Reads()).count += 1

    def end(self, ref: Ref, value: _V | None) -> None:
        """A read of ``ref`` ended with ``value`` (None: it failed); the value is kept unless a
        change of the object was reported while a read of it was in flight."""
        entry = self._reading.get(ref)
        if entry is None:
            return
        entry.count -= 1
        if entry.count <= 0:
            del self._reading[ref]
        if value is None or entry.overtaken:
            return
        self._entries.pop(ref, None)
        while len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]
        self._entries[ref] = value

    def changed(self, ref: Ref) -> None:
        """The watch reported ``ref``: forget it, and any read of it in flight."""
        self._entries.pop(ref, None)
        entry = self._reading.get(ref)
        if entry is not None:
            entry.overtaken = True

    def clear(self, kind: str) -> None:
        """Forget every object of ``kind`` (a list of that kind: changes may have gone unseen),
        and every read of one in flight."""
        for ref in [r for r in self._entries if r[0] == kind]:
            del self._entries[ref]
        for ref, entry in self._reading.items():
            if ref[0] == kind:
                entry.overtaken = True
