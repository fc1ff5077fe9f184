"""Structured logging for ``winspec run``: JSON lines or a console format, via structlog on
top of the standard library, so ``logging`` calls in every module come out the same way."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import structlog


def configure_logging(*, fmt: str, level: str) -> None:
    """Route every log record through structlog's formatter on standard error."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # kubernetes-asyncio logs every response body at debug level: Secret data, a TokenReview's
    # answer (which echoes the token). Never below warning, whatever --log-level says.
    logging.getLogger("kubernetes_asyncio").setLevel(max(logging.WARNING, root.level))


class RepeatFilter(logging.Filter):
    """Lets at most ``burst`` records of one kind (logger, level, message template) through per
    ``interval`` seconds; the first one of a kind after a suppression says how many were dropped.

    For processes whose clients can make them log at will (the node agent under a flood of bad
    requests or connections): the log stays readable and its size bounded. At most ``max_kinds``
    kinds are tracked (the oldest forgotten first).
    """

    def __init__(
        self,
        *,
        burst: int = 100,
        interval: float = 10.0,
        max_kinds: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._burst = burst
        self._interval = interval
        self._max = max_kinds
        self._clock = clock
        # kind -> [window start, records let through in it, records dropped]
        self._kinds: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is written; a written one may carry ``suppressed`` (a count)."""
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        state = self._kinds.pop(kind, None)
        if state is None or now - state[0] >= self._interval:
            dropped = int(state[2]) if state is not None else 0
            state = [now, 0.0, 0.0]
            if dropped:
                record.suppressed = dropped
        self._kinds[kind] = state  # most recently seen last
        if len(self._kinds) > self._max:
            del self._kinds[next(iter(self._kinds))]
        if state[1] >= self._burst:
            state[2] += 1
            return False
        state[1] += 1
        return True
