"""``winspec agent`` that stops, once, at a chosen point inside its bundle writer (tests only).

``python -m tests.agent_pause <point> <marker> <winspec arguments>`` runs ``adapters.cli``
unchanged except that the first call of the function ``<point>`` names (:data:`POINTS`)
creates the file ``<marker>`` and then blocks for good. A test that waits for
the marker knows the agent is inside that step of a write and can SIGKILL it there, at the same
step every run: no sleep decides where the kill lands.

The points, in a write's order (see :mod:`adapters.bundles.local`):

* ``_make_durable`` (the first call of :func:`adapters.bundles.fsops.make_durable`, in a
  thread's write, or of ``LocalBundleWriter._make_durable``, in a new bundle's write on the
  loop): the new version is complete in its ``.tmp-`` directory, not yet made durable (neither
  synced nor fsynced) and not yet swapped in; the old version (if any) is still at
  ``<root>/<id>``.
* ``_finish_carry``: an update that carries payload directories over has been swapped in, its
  payload directories still stand-in links into the old version, now under ``.tmp-``.
* ``answer``: the write is complete and durable, the agent has not answered yet (it is about to
  read back the digest it keeps, :mod:`adapters.bundles.namespaced`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapters.bundles import fsops, local, namespaced

#: Point name: the (module or class, function) pairs patched; the first call of any pauses.
POINTS: dict[str, list[tuple[Any, str]]] = {
    "_make_durable": [(fsops, "make_durable"), (local.LocalBundleWriter, "_make_durable")],
    "_finish_carry": [(local, "_finish_carry")],
    "answer": [(namespaced, "read_digest")],
}


def pause_at(point: str, marker: Path) -> None:
    """Make the first call of a function at ``point`` create ``marker`` and never return."""
    if point not in POINTS:
        raise SystemExit(f"unknown pause point {point!r}; one of {', '.join(POINTS)}")
    first = threading.Lock()
    for owner, function in POINTS[point]:
        setattr(owner, function, _paused(getattr(owner, function), first, point, marker))


def _mark(marker: Path, point: str) -> None:
    """Tell the test where the process stopped."""
    marker.write_text(point)


def _paused(original: Callable[..., Any], first: threading.Lock, point: str, marker: Path) -> Any:
    """``original``, but for its first call (of all sharing ``first``), which never returns."""
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def paused_coroutine(*args: Any, **kwargs: Any) -> Any:
            if first.acquire(blocking=False):
                _mark(marker, point)
                await asyncio.Event().wait()  # until the process is killed; the loop runs on
            return await original(*args, **kwargs)

        return paused_coroutine

    @functools.wraps(original)
    def paused(*args: Any, **kwargs: Any) -> Any:
        if first.acquire(blocking=False):
            _mark(marker, point)
            threading.Event().wait()  # until the process is killed
        return original(*args, **kwargs)

    return paused


def main(argv: list[str]) -> int:
    """Install the pause, then run ``winspec`` with the remaining arguments."""
    point, marker, *rest = argv
    pause_at(point, Path(marker))
    from adapters.cli import main as winspec

    return winspec(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
