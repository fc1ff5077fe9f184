"""The one runtime every long-running mode plugs into: listen, connect, run, signals, and a
bounded stop (as controller-runtime's Manager runs its Runnables).

A mode (Docker mode, cluster mode) subclasses :class:`Runtime` and says what it connects to,
what it runs and what it closes; the runtime does the rest, the same way for each:

- **listen** first for ``/metrics``, ``/healthz`` and ``/readyz`` (a busy port fails before
  anything connects; ``/healthz`` answers while the backend is still being reached);
- **connect**: a stop asked for meanwhile ends the start-up at once, without having connected;
- **run** the mode's parts under a :class:`Manager`: its sources, its controller and its
  background tasks, until a stop is asked or an essential part ends (its failure is raised once
  everything is shut down);
- **stop** within ``shutdown_timeout`` + :data:`SHUTDOWN_MARGIN_SECONDS`: the sources, the
  background tasks and the controller together (in-flight reconciles get ``shutdown_timeout``),
  then the HTTP server and the mode's clients together. Every step is bounded and runs whatever
  became of the others (a step that overruns is cancelled, then abandoned).

The node agent, a server rather than a controller, uses the same signal handling, the same
bounded steps and :func:`run_loop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry

from adapters.http import (
    bound_port,
    build_app,
    register_process_metrics,
    start_http_server,
    stop_http_server,
)
from adapters.shutdown import CANCEL_GRACE_SECONDS as CANCEL_GRACE_SECONDS
from adapters.shutdown import CLOSE_SECONDS as CLOSE_SECONDS
from adapters.shutdown import SHUTDOWN_MARGIN_SECONDS as SHUTDOWN_MARGIN_SECONDS
from adapters.shutdown import SOURCE_STOP_SECONDS as SOURCE_STOP_SECONDS
from adapters.threads import DaemonThreadPool
from controller.errors import WinspecError
from controller.health import HealthState
from controller.loop import Controller
from controller.metrics import Metrics
from controller.ports import Source
from controller.settings import Settings, split_listen

log = logging.getLogger("winspec")

T = TypeVar("T")


class StartupError(WinspecError):
    """winspec could not start (not bad input: the same settings may work later)."""


class ListenError(StartupError):
    """The HTTP endpoints could not listen on the address asked for."""


async def finish(task: asyncio.Future[Any], *, within: float, what: str) -> BaseException | None:
    """Give ``task`` up to ``within`` seconds to end, then cancel it and give it
    :data:`CANCEL_GRACE_SECONDS` more before abandoning it. Never raises (except when the caller
    itself is cancelled); returns the exception the task ended with, if any."""
    if not task.done():
        await asyncio.wait({task}, timeout=max(within, 0.0))
    if not task.done():
        if within > 0:  # with no time given, cancelling at once is the plan, not an overrun
            log.warning(
                "cancelling a shutdown step that overran", extra={"step": what, "seconds": within}
            )
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_GRACE_SECONDS)
        if not task.done():
            log.error("abandoning a shutdown step that ignores cancellation", extra={"step": what})
            return None
    if task.cancelled():
        return None
    return task.exception()


async def step(
    aw: Awaitable[Any], *, within: float, what: str, failed: BaseException | None = None
) -> None:
    """Run one shutdown step under :func:`finish`; its failure is logged (unless it is
    ``failed``, raised elsewhere), never raised."""
    exc = await finish(asyncio.ensure_future(aw), within=within, what=what)
    if exc is not None and exc is not failed:
        log.error("shutdown step failed", extra={"step": what, "error": repr(exc)}, exc_info=exc)


async def until_stopped(
    stop: asyncio.Event, aw: Awaitable[T], *, what: str
) -> tuple[bool, T | None]:
    """``(True, result of aw)``, or ``(False, None)`` when ``stop`` is set first (``aw`` is then
    cancelled and has ended, or been abandoned). What ``aw`` raises is raised."""
    task = asyncio.ensure_future(aw)
    stop_wait = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_wait.cancel()
        if not task.done() and not stop.is_set():  # the caller itself cancelled
            task.cancel()
    if stop.is_set():
        await finish(task, within=0, what=what)
        return False, None
    return True, task.result()


@dataclass(frozen=True, slots=True)
class _Background:
    name: str
    run: Callable[[], Coroutine[Any, Any, None]]
    essential: bool


class Manager:
    """Runs a mode's parts until a stop is asked or an essential part ends, then stops them
    all within ``shutdown_timeout`` + :data:`SHUTDOWN_MARGIN_SECONDS` (less the time the runtime
    keeps for closing the HTTP server)."""

    def __init__(self, stop: asyncio.Event, *, shutdown_timeout: float) -> None:
        self._stop = stop
        self._shutdown_timeout = shutdown_timeout
        self._sources: list[tuple[str, Source]] = []
        self._controllers: list[Controller] = []
        self._background: list[_Background] = []

    def add_source(self, name: str, source: Source) -> None:
        """A key source: run until stopped; the end of its run ends the mode."""
        self._sources.append((name, source))

    def add_controller(self, controller: Controller) -> None:
        """A controller: at shutdown its in-flight reconciles get ``shutdown_timeout``."""
        self._controllers.append(controller)

    def add_task(
        self, name: str, run: Callable[[], Coroutine[Any, Any, None]], *, essential: bool = False
    ) -> None:
        """A background task, cancelled at shutdown (beside the controllers' stop); an essential
        one ending (returning or failing) ends the mode, and its failure is raised."""
        self._background.append(_Background(name, run, essential))

    async def run(self, *, started: Callable[[], None] = lambda: None) -> None:
        """Run every part (``started`` once all are running) until stopped; raises the failure
        of the part that ended the run, once everything is stopped."""
        controllers = [(c, asyncio.create_task(c.run(), name=c.name)) for c in self._controllers]
        sources = [(s, asyncio.create_task(s.run(), name=n)) for n, s in self._sources]
        background = [(b, asyncio.create_task(b.run(), name=b.name)) for b in self._background]
        started()
        watched: list[asyncio.Task[None]] = [t for _, t in sources] + [t for _, t in controllers]
        watched += [t for b, t in background if b.essential]
        failed: BaseException | None = None
        try:
            ended, _ = await until_stopped(
                self._stop,
                asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED),
                what="parts",
            )
            if ended:
                for task in watched:  # sources, then the controller, then essential tasks
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        failed = task.exception()  # raised once, after the shutdown
                        break
        finally:
            log.info("shutting down", extra={"deadline_seconds": self._shutdown_timeout})
            for source, _ in sources:
                source.stop()
            await asyncio.gather(
                *(
                    step(task, within=SOURCE_STOP_SECONDS, what=task.get_name(), failed=failed)
                    for _, task in sources
                ),
                *(self._cancel(task, failed) for _, task in background),
                *(self._stop_controller(c, task, failed) for c, task in controllers),
            )
        if failed is not None:
            raise failed

    async def _stop_controller(
        self, controller: Controller, task: asyncio.Task[None], failed: BaseException | None
    ) -> None:
        deadline = self._shutdown_timeout
        await step(
            controller.stop(deadline), within=deadline + CANCEL_GRACE_SECONDS, what="reconciles"
        )
        await step(task, within=CANCEL_GRACE_SECONDS, what="controller", failed=failed)

    async def _cancel(self, task: asyncio.Task[None], failed: BaseException | None) -> None:
        task.cancel()
        await step(task, within=CANCEL_GRACE_SECONDS, what=task.get_name(), failed=failed)


@dataclass(frozen=True, slots=True)
class Meters:
    """What a mode's metrics are declared for from the start (every series at zero)."""

    #: The ``controller`` label of the controller-runtime series.
    controller: str
    #: The API calls counted, the source, its event types and the dependency kinds fetched.
    apis: Sequence[str]
    source: str
    event_types: Sequence[str]
    dependency_kinds: Sequence[str]


class Runtime:
    """One running mode; :meth:`run` returns when it has stopped.

    A mode subclasses it and says what :meth:`connect` reaches, what :meth:`serve` runs (on a
    :class:`Manager`) and what :meth:`close` closes; the runtime listens, connects, runs, stops
    within the bound and turns signals into a stop (:func:`run_until_signalled`).
    """

    #: What :meth:`connect` reaches, for the line logged when a stop comes first.
    backend = "backend"

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None,
        conditions: Sequence[str],
        meters: Meters,
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.health = HealthState(list(conditions))
        self.metrics = Metrics(self.registry, controller=meters.controller)
        register_process_metrics(self.registry)
        for api in meters.apis:
            self.metrics.declare_api(api)
        self.metrics.declare_source(meters.source, event_types=meters.event_types)
        self.metrics.declare_dependency_kinds(meters.dependency_kinds)
        self._bundle_root = os.path.abspath(settings.bundle_root)
        self._stop = asyncio.Event()
        self.http_port: int | None = None
        #: Set once connected and every part runs (a standby replica waiting to lead, too).
        self.started = asyncio.Event()

    def request_stop(self) -> None:
        """Ask the mode to shut down gracefully."""
        self._stop.set()

    async def run(self) -> None:
        """Listen, connect, serve until asked to stop, then stop within the bound.

        Returns when stopped (also when stopped before it connected). Raises
        :class:`ListenError` or the mode's :class:`StartupError` when it cannot start,
        :class:`~controller.errors.PermanentError` for settings found bad on use, and what a
        part that failed raised, once everything is shut down.
        """
        listen = self.settings.listen
        host, port = split_listen(listen)
        try:
            runner = await start_http_server(
                host, port, build_app(registry=self.registry, health=self.health)
            )
        except OSError as exc:  # in use, not an address of this host, a name that resolves not
            raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
        self.http_port = bound_port(runner)
        manager = Manager(self._stop, shutdown_timeout=self.settings.shutdown_timeout)
        stopped = False  # ended as asked (not by a failure to start or a part that failed)
        try:
            connected, _ = await until_stopped(self._stop, self.connect(), what="connect")
            if not connected:
                log.warning(
                    f"stop asked for before the {self.backend} was reached",
                    extra=self.backend_address(),
                )
                stopped = True
                return
            # Logged only now, so that a start-up that fails prints its one error line alone.
            log.info(
                "serving /metrics, /healthz and /readyz",
                extra={"listen": f"{host}:{self.http_port}"},
            )
            await self.serve(manager)
            stopped = True
        finally:
            await asyncio.gather(
                step(stop_http_server(runner), within=CLOSE_SECONDS, what="http server"),
                step(self.close(), within=CLOSE_SECONDS, what="clients"),
            )
            if stopped:
                log.info("stopped")

    @property
    def stopping(self) -> asyncio.Event:
        """Set once a stop is asked for."""
        return self._stop

    def backend_address(self) -> dict[str, str]:
        """Where :meth:`connect` reaches the backend, as log fields."""
        return {}

    async def connect(self) -> None:
        """Reach what the mode needs at start; raise :class:`StartupError` when it cannot."""

    async def serve(self, manager: Manager) -> None:
        """Add the mode's parts to ``manager`` and run it (``await manager.run(...)``)."""

    async def close(self) -> None:
        """Close what :meth:`connect` opened (bounded by the runtime: CLOSE_SECONDS)."""


def on_signals(stop: Callable[[], None]) -> None:
    """Turn SIGTERM and SIGINT into ``stop()`` (where the platform lets the loop catch them)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)


class Stoppable(Protocol):
    """What :func:`run_until_signalled` runs: a mode."""

    def request_stop(self) -> None:
        """Ask the mode to shut down gracefully."""
        ...

    async def run(self) -> None:
        """Run until stopped."""
        ...


async def run_until_signalled(mode: Stoppable) -> None:
    """Run a mode, turning SIGTERM and SIGINT into a graceful stop."""
    on_signals(mode.request_stop)
    await mode.run()


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)``, except that no worker thread can hold up the exit.

    ``asyncio.run`` joins the default executor's threads without a timeout (Python 3.11), and
    CPython joins every ``ThreadPoolExecutor`` thread again at interpreter exit: one thread stuck
    in a blocking read (a FIFO, a file system that stopped answering) would keep the process
    alive after SIGTERM for ever, past the promised ``--shutdown-timeout`` + 3.5 s. The default
    executor here is a pool of daemon threads that shutdown does not wait for: by then the
    mode has given its work in flight its deadline, and what still runs is stuck.
    """
    executor = DaemonThreadPool(max_workers=min(32, (os.cpu_count() or 1) + 4))
    with asyncio.Runner() as runner:
        runner.get_loop().set_default_executor(executor)
        runner.run(main)
