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
    out: list[str] = ['"'] if quote else []
    slashes = 0
    for ch in arg:
        if ch == "\\":
            slashes += 1
            out.append(ch)
        elif ch == '"':
            # Backslashes before a quote are doubled, then the quote itself is escaped.
            out.append("\\" * slashes)
            out.append('\\"')
            slashes = 0
        else:
            slashes = 0
            out.append(ch)
    if quote:
        # Trailing backslashes would escape the closing quote: double them.
        out.append("\\" * slashes)
        out.append('"')
    return "".join(out)


def escape_args(args: Iterable[str]) -> str:
    """Join arguments into one Windows command line, each escaped by :func:`escape_arg`."""
    return " ".join(escape_arg(a) for a in args)
