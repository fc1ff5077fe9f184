"""``winspec agent`` that stops, once, at a chosen point inside its bundle writer (tests only).

``python -m tests.agent_pause <point> <marker> <winspec arguments>`` runs ``adapters.cli``
unchanged except that the first call of the function ``<point>`` names (:data:`POINTS`)
creates the file ``<marker>`` and then blocks for good. A test that waits for
the marker knows the agent is inside that step of a write and can SIGKILL it there, at the same
step every run: no sleep decides where the kill lands.

The points, in a write's order (see :mod:`adapters.bundles.local`):

* ``_make_durable`` (:func:`adapters.bundles.fsops.make_durable`, its first call): the new
  version is complete in its ``.tmp-`` directory, not yet made durable (neither synced nor
  fsynced) and not yet swapped in; the old version (if any) is still at ``<root>/<id>``.
* ``_finish_carry``: an update that carries payload directories over has been swapped in, its
  payload directories still stand-in links into the old version, now under ``.tmp-``.
* ``answer``: the write is complete and durable, the agent has not answered yet (it is about to
  read back the digest it keeps, :mod:`adapters.bundles.namespaced`).
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapters.bundles import fsops, local, namespaced

#: Point name: (module, function) patched.
POINTS: dict[str, tuple[Any, str]] = {
    "_make_durable": (fsops, "make_durable"),
    "_finish_carry": (local, "_finish_carry"),
    "answer": (namespaced, "_read_digest"),
}


def pause_at(point: str, marker: Path) -> None:
    """Make the first call of the function at ``point`` create ``marker`` and never return."""
    if point not in POINTS:
        raise SystemExit(f"unknown pause point {point!r}; one of {', '.join(POINTS)}")
    module, function = POINTS[point]
    original: Callable[..., Any] = getattr(module, function)
    first = threading.Lock()

    @functools.wraps(original)
    def paused(*args: Any, **kwargs: Any) -> Any:
        if first.acquire(blocking=False):
            marker.write_text(point)
            threading.Event().wait()  # until the process is killed
        return original(*args, **kwargs)

    setattr(module, function, paused)


def main(argv: list[str]) -> int:
    """Install the pause, then run ``winspec`` with the remaining arguments."""
    point, marker, *rest = argv
    pause_at(point, Path(marker))
    from adapters.cli import main as winspec

    return winspec(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
