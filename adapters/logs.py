"""Structured logging for ``winspec run``: JSON lines or a console format, via structlog on
top of the standard library, so ``logging`` calls in every module come out the same way."""

from __future__ import annotations

import logging
import sys

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
