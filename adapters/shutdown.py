"""The bounds of a shutdown, every mode's and the agent's (:mod:`adapters.runtime` applies them).

Here, apart from the runtime, so that the help texts can quote them without importing what a
running mode needs (aiohttp, prometheus_client).
"""

from __future__ import annotations

#: How long a source gets to return after being asked to stop.
SOURCE_STOP_SECONDS = 1.0
#: How long a task that overran its step gets to unwind once cancelled, before it is abandoned.
CANCEL_GRACE_SECONDS = 0.5
#: How long closing the HTTP server, a client or a background task may take.
CLOSE_SECONDS = 1.0
#: A shutdown ends within ``shutdown_timeout`` plus this. The steps, each bounded and cancelled
#: (then given CANCEL_GRACE_SECONDS) when it overruns: the sources (SOURCE_STOP_SECONDS) and the
#: background tasks (cancelled: a grace) beside the controller (its stop: ``shutdown_timeout`` +
#: a grace; its workers: a grace); then the HTTP server beside the mode's clients
#: (CLOSE_SECONDS each).
SHUTDOWN_MARGIN_SECONDS = 4 * CANCEL_GRACE_SECONDS + CLOSE_SECONDS + CANCEL_GRACE_SECONDS
