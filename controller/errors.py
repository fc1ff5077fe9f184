"""winspec's own error hierarchy.

The reconcile loop decides what to do with a failure by its type alone: a
:class:`PermanentError` is bad input, reported once and never retried; a
:class:`TransientError` is retried with backoff. Adapters wrap their libraries' exceptions in
these (``raise … from``) so the core never sees an HTTP library's types.
"""

from __future__ import annotations


class WinspecError(Exception):
    """Base class of every error winspec raises on purpose.

    ``reason`` is a short CamelCase word for machines (a Kubernetes condition's reason); empty
    means "derive it from the class" (:func:`reason_of`).
    """

    reason: str = ""


class PermanentError(WinspecError):
    """Bad input: retrying cannot help. The message is the exact text users see."""


class SpecError(PermanentError):
    """The request cannot become a spec (a rule of controller/RULES.md refused it)."""


class RequestDecodeError(PermanentError):
    """The request document is not valid JSON or has a field of the wrong type."""


class TransientError(WinspecError):
    """A remote call failed in a way that may pass (connection lost, 5xx, 429)."""


class WithdrawError(TransientError):
    """Retried like any transient failure, but meanwhile the object has no valid bundle: one
    written for an earlier state (a payload the cluster has since revoked) is removed."""


class NotFoundError(WinspecError):
    """The object asked for does not exist (any more)."""


def reason_of(exc: BaseException) -> str:
    """The CamelCase reason of a failure, for status conditions: the error's own, else by
    class. Never anything of an unexpected exception's text."""
    if isinstance(exc, WinspecError) and exc.reason:
        return exc.reason
    if isinstance(exc, SpecError):
        return "SpecRefused"
    if isinstance(exc, PermanentError):
        return "InvalidInput"
    if isinstance(exc, TransientError):
        return "TransientError"
    return "InternalError"
