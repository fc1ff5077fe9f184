"""A reference parser of Windows command lines, to check escaping by round trip (S9)."""

from __future__ import annotations


def command_line_to_argv(command_line: str) -> list[str]:
    """Split a command line as CommandLineToArgvW / msvcrt (2008 and later) split arguments.

    Outside quotes a space or tab ends an argument. 2n backslashes before a quote give n
    backslashes and the quote toggles quoting; 2n+1 give n backslashes and a literal quote;
    other backslashes are literal. Inside quotes, ``""`` is a literal quote and quoting goes
    on (the post-2008 rule). Every argument is parsed with these rules, the first included
    (``commandLine``'s program name is never escaped, so it is not parsed here).
    """
    args: list[str] = []
    i, n = 0, len(command_line)
    while True:
        while i < n and command_line[i] in " \t":
            i += 1
        if i >= n:
            return args
        current: list[str] = []
        quoted = False
        while i < n:
            ch = command_line[i]
            if ch in " \t" and not quoted:
                break
            if ch == "\\":
                j = i
                while j < n and command_line[j] == "\\":
                    j += 1
                count = j - i
                if j < n and command_line[j] == '"':
                    current.append("\\" * (count // 2))
                    if count % 2:
                        current.append('"')
                        j += 1
                else:
                    current.append("\\" * count)
                i = j
            elif ch == '"':
                if quoted and i + 1 < n and command_line[i + 1] == '"':
                    current.append('"')
                    i += 2
                else:
                    quoted = not quoted
                    i += 1
            else:
                current.append(ch)
                i += 1
        args.append("".join(current))
