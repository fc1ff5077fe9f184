"""The ports the core needs, as Protocols; adapters implement them.

Each port is owned by its consumer and kept small: the reconciler needs to resolve a key into
a request, write or remove a bundle, and nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal, Protocol

from controller.bundle import BundleContent, WriteOutcome
from controller.models import Request


class RequestResolver(Protocol):
    """Turns a key into the full generator request, resolving every dependency."""

    async def resolve(self, key: str) -> Request | None:
        """The request for ``key``, or ``None`` when the object no longer exists.

        Raises :class:`~controller.errors.TransientError` for failures worth retrying and
        :class:`~controller.errors.PermanentError` for bad input.
        """
        ...


class BundleWriter(Protocol):
    """Makes bundles durable where the container will run."""

    async def write(self, bundle_id: str, content: BundleContent) -> bool | WriteOutcome:
        """Write the bundle atomically; false when the same content was already there (a
        :class:`~controller.bundle.WriteOutcome` also says what drift the write repaired)."""
        ...

    async def remove(self, bundle_id: str) -> bool:
        """Remove the bundle; ``False`` when there was none."""
        ...

    async def list_ids(self) -> list[str]:
        """The ids of every bundle present."""
        ...


class InitialKeys(Protocol):
    """What a key source's first complete list held: the loop reports its first pass by it."""

    async def initial_keys(self) -> Collection[str]:
        """The keys of the objects the source's first complete list found, once it has them."""
        ...


class Source(InitialKeys, Protocol):
    """Puts keys on the queue: a Docker engine's events, a cluster's list+watch.

    The runtime runs it until it asks it to :meth:`stop`; a source that returns of itself, or
    fails, ends the mode.
    """

    async def run(self) -> None:
        """Watch and put keys on the queue until :meth:`stop` is called."""
        ...

    def stop(self) -> None:
        """Ask :meth:`run` to return, promptly, whatever it is waiting for."""
        ...


@dataclass(frozen=True, slots=True)
class SourceHooks:
    """What a source reports (metrics and readiness live elsewhere); every hook is optional."""

    #: An event received, by its type (``create``, ``MODIFIED``, ...).
    on_event: Callable[[str], None] | None = None
    #: A watch or stream restarted, by why (``closed``, ``idle``, ``error``, ``expired``, ...).
    on_restart: Callable[[str], None] | None = None
    #: A complete list was put on the queue.
    on_synced: Callable[[], None] | None = None
    #: Whether the source is watching (a stream open and listed).
    on_ready: Callable[[bool], None] | None = None


#: How far a reconcile got: resolving the request, generating the spec and bundle content,
#: writing the bundle, or all the way (``done``); ``remove``: removing the bundle of an object
#: that is gone or being deleted.
Stage = Literal["resolve", "generate", "write", "remove", "done"]


class StatusReporter(Protocol):
    """Tells the owner of a key how its last reconcile went (a resource's status, events)."""

    async def report(
        self,
        key: str,
        *,
        ok: bool,
        message: str,
        stage: Stage = "done",
        reason: str = "",
        digest: str | None = None,
        permanent: bool = False,
    ) -> None:
        """Record the outcome of reconciling ``key``; ``message`` is shown to users.

        ``stage`` says where a failure happened (``done`` on success), ``reason`` is its
        CamelCase reason (on success, set only for one worth telling: the bundle's drift
        repaired), ``digest`` the bundle's content digest once it was built, and
        ``permanent`` whether the failure will not be retried.
        """
        ...
