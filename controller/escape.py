"""Windows command-line escaping, as Go's ``syscall.EscapeArg`` does it (rule S9)."""

from __future__ import annotations

from collections.abc import Iterable


def escape_arg(arg: str) -> str:
    """Escape one argument so ``CommandLineToArgvW`` reads it back unchanged."""
    if arg == "":
        return '""'
    quote = " " in arg or "\t" in arg
    if not quote and '"' not in arg and "\\" not in arg:
        return arg
    escaped = _escape_quotes(arg) if '"' in arg else arg
    if not quote:
        return escaped
    # Trailing backslashes would escape the closing quote: double them.
    return '"' + escaped + "\\" * _trailing_backslashes(escaped) + '"'


def _escape_quotes(arg: str) -> str:
    """Escape each quote, after doubling the backslashes right before it; other backslashes
    stay as they are (``CommandLineToArgvW`` reads them literally)."""
    *before_quotes, last = arg.split('"')
    parts: list[str] = []
    for piece in before_quotes:
        parts.append(piece + "\\" * _trailing_backslashes(piece) + '\\"')
    parts.append(last)
    return "".join(parts)


def _trailing_backslashes(text: str) -> int:
    """How many backslashes ``text`` ends with."""
    return len(text) - len(text.rstrip("\\"))


def escape_args(args: Iterable[str]) -> str:
    """Join arguments into one Windows command line, each escaped by :func:`escape_arg`."""
    return " ".join([escape_arg(a) for a in args])
