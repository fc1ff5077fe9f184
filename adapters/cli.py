"""The ``winspec`` command line: ``generate`` one spec, ``run`` the controller, ``schema``.

Exit codes: 0 success, 1 a runtime failure (engine unreachable, I/O), 2 bad input (a request
the rules refuse, a malformed document, a bad option).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from adapters.version import version
from controller.errors import PermanentError, RequestDecodeError, WinspecError

if TYPE_CHECKING:
    from controller.models import Request

# Each command imports what it runs on when it runs (the generator, a mode's clients): the
# command line, `--help` and `--version` are read without them.

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2

_GENERATE_HELP = """\
Read one request document and print the OCI runtime spec (config.json) that Docker's Windows
daemon would generate for it.

A request is a JSON object whose "container" and "image" members are Docker inspect objects
verbatim (paste `docker inspect CONTAINER` output as "container" and `docker image inspect
IMAGE` output as "image": {"container": [...], "image": [...], "layerFolders": [...]}), and
whose other members carry what an inspect does not show: "node" facts, "layerFolders",
"volumePath", "endpoints" driver data, and resolved "secrets", "configs" and
"credentialSpecs". `winspec schema` prints its JSON Schema.

Warnings (e.g. CPU options discarded under process isolation) go to stderr. A request the
rules refuse prints the error to stderr and exits 2.
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="winspec",
        description="Generate the OCI runtime specs and bundles Docker's Windows daemon would "
        "write: for one request document (generate), continuously from a Docker engine's "
        "events or from WindowsContainer resources on a Kubernetes API server (run; cluster "
        "mode with --source kubernetes), and receive bundles on a Windows node from a "
        "cluster-mode controller (agent).",
    )
    parser.add_argument("--version", action="version", version=f"winspec {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser(
        "generate",
        help="print the config.json for one request document",
        description=_GENERATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument(
        "request",
        nargs="?",
        default=None,
        help="the request document (a JSON file); '-' reads standard input, and so does an "
        "absent argument unless standard input is a terminal",
    )
    gen.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write config.json to FILE instead of standard output",
    )
    gen.set_defaults(print_usage=gen.print_usage)
    gen.add_argument(
        "--links",
        metavar="FILE",
        help="also write the map of in-container links for secrets and configs (S5) to FILE",
    )

    sub.add_parser(
        "schema",
        help="print the JSON Schema of the request document",
        description="Print the JSON Schema of the request document `winspec generate` reads.",
    )

    from adapters.agent.options import add_agent_parser
    from adapters.explain_options import add_explain_parsers
    from adapters.run import add_run_parser

    add_explain_parsers(sub)
    add_run_parser(sub)
    add_agent_parser(sub)
    return parser


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of one sub-command (``generate``, ``run``, …)."""
    for action in parser._actions:  # argparse keeps no public list of its sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[command]
            return found
    raise KeyError(command)


#: How a request wraps what `docker inspect` prints (said when inspect output is pasted bare).
_WRAP_HINT = (
    'a request wraps it: {"container": <docker inspect CONTAINER>, "image": <docker image '
    'inspect IMAGE>, "layerFolders": ["C:\\\\ProgramData\\\\docker\\\\windowsfilter\\\\<layer>", '
    "...]} (`winspec schema` prints the whole schema)"
)


#: Members only an image inspect object has.
_IMAGE_MEMBERS = frozenset({"RootFS", "RepoTags", "RepoDigests"})


def _pasted_inspect(data: bytes) -> str | None:
    """What was pasted, when a document that is not a request is `docker inspect` output: the
    array it prints, or one inspect object; None otherwise."""
    import msgspec

    top_level = list[dict[str, msgspec.Raw]] | dict[str, msgspec.Raw]
    try:
        top = msgspec.json.decode(data, type=top_level)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    if isinstance(top, list):
        if top and "Id" in top[0]:
            return "`docker inspect` output (an array)"
        return None
    if "Id" not in top or "container" in top:
        return None
    if _IMAGE_MEMBERS.intersection(top):
        return "an image's inspect object, not a request"
    return "a container's inspect object, not a request"


def _read_request(source: str) -> Request:
    """The request document from ``source`` (``-``: standard input), read up to its limit."""
    from controller.models import MAX_REQUEST_BYTES, decode_request

    if source == "-":
        data = sys.stdin.buffer.read(MAX_REQUEST_BYTES + 1)
    else:
        with open(source, "rb") as f:
            data = f.read(MAX_REQUEST_BYTES + 1)
    if len(data) > MAX_REQUEST_BYTES:
        raise RequestDecodeError(f"invalid request: larger than {MAX_REQUEST_BYTES} bytes")
    try:
        return decode_request(data)
    except RequestDecodeError as exc:
        pasted = _pasted_inspect(data)
        if pasted is None:
            raise
        raise RequestDecodeError(f"{exc}; this is {pasted}: {_WRAP_HINT}") from exc


def _prepare(path: str, body: bytes) -> tuple[Path | None, IO[bytes] | None]:
    """Stage ``body`` for ``path``: a temporary file beside it to rename over it (returned
    first), or, for what exists and is not a regular file (a FIFO, ``/dev/stdout``), the file
    opened for writing (second). Raises OSError when ``path`` cannot be written."""
    target = Path(path)
    if target.exists() and not target.is_file():
        return None, open(target, "wb")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        if target.is_file():
            # A file that may be written in a directory that may not: opened now (not
            # truncated), written in place once every output is staged.
            return None, open(target, "r+b")
        # Named as the user wrote it, not by the temporary name.
        raise OSError(exc.errno, exc.strerror, path) from exc
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as a plain open() would have created it
        with os.fdopen(fd, "wb") as f:
            f.write(body)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp), None


def _write_outputs(outputs: list[tuple[str, bytes]]) -> None:
    """Write every ``(path, body)``, or none: each is staged first, then all are put in place.

    A path that cannot be written (no such directory, no permission) fails before any output
    is changed. Raises OSError."""
    staged: list[tuple[str, Path | None, IO[bytes] | None]] = []
    try:
        for path, body in outputs:
            tmp, opened = _prepare(path, body)
            staged.append((path, tmp, opened))
        for (path, tmp, opened), (_, body) in zip(staged, outputs, strict=True):
            try:
                if tmp is not None:
                    os.replace(tmp, path)
                elif opened is not None:
                    opened.write(body)
                    if opened.seekable():
                        opened.truncate()
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, path) from exc
    finally:
        for _, tmp, opened in staged:
            if opened is not None:
                with contextlib.suppress(OSError):
                    opened.close()
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()


def _generate(args: argparse.Namespace) -> int:
    import msgspec

    from adapters.credspecs import NodeCredentialSpecReader
    from controller.generate import encode_spec, generate

    if args.request is None:
        if sys.stdin.isatty():
            # Nothing piped in: waiting silently for a document typed by hand helps nobody.
            args.print_usage(sys.stderr)
            print(
                "winspec generate: error: give a request file, or '-' to read standard input "
                "(`winspec schema` prints the request's JSON Schema)",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        args.request = "-"
    try:
        request = _read_request(args.request)
    except OSError as exc:  # only the request's own file: nothing else is read here
        reason = exc.strerror or type(exc).__name__
        print(f"winspec: cannot read request {args.request}: {reason}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PermanentError as exc:
        print(f"winspec: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        generated = generate(request, reader=NodeCredentialSpecReader())
    except PermanentError as exc:
        print(f"winspec: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except WinspecError as exc:  # e.g. a credential spec file that did not answer in time
        print(f"winspec: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # a bug, not the input's fault: one line, never a traceback
        print(
            f"winspec: internal error ({type(exc).__name__}: {str(exc)[:200]}); please report it",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    for warning in generated.warnings:
        print(f"winspec: warning: {warning}", file=sys.stderr)
    body = encode_spec(generated.spec) + b"\n"
    files: list[tuple[str, bytes]] = []
    if args.output:
        files.append((args.output, body))
    if args.links:
        files.append((args.links, msgspec.json.encode({"links": generated.links}) + b"\n"))
    try:
        # Both files or neither; standard output only once they are written.
        _write_outputs(files)
        if not args.output:
            sys.stdout.buffer.write(body)
            sys.stdout.flush()
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"winspec: cannot write output{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


#: Standard padded base64, the only form msgspec decodes into ``bytes``; `(?![\s\S])` is the
#: end of the string in ECMA-262 and Python alike (`$` also matches before a final newline).
_BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?(?![\s\S])"


def _with_base64_patterns(node: Any) -> None:
    """Give every base64 string a pattern, so the schema refuses what the decoder refuses."""
    if isinstance(node, dict):
        if node.get("contentEncoding") == "base64":
            node["pattern"] = _BASE64_PATTERN
        for value in node.values():
            _with_base64_patterns(value)
    elif isinstance(node, list):
        for value in node:
            _with_base64_patterns(value)


def request_schema() -> bytes:
    """The JSON Schema of the request document, as shipped in controller/request.schema.json.

    Generated from :class:`Request`, then made to accept exactly what
    :func:`~controller.models.decode_request` accepts: the one-element array ``docker inspect``
    prints, for ``container`` and ``image``, and base64 payloads only in the form decoded.
    """
    import msgspec

    from controller.models import Request

    schema = msgspec.json.schema(Request)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "winspec request document"
    properties = schema["$defs"]["Request"]["properties"]
    for member in ("container", "image"):
        inspect_object = properties[member]
        properties[member] = {
            "anyOf": [
                inspect_object,
                {"type": "array", "items": inspect_object, "minItems": 1, "maxItems": 1},
            ]
        }
    _with_base64_patterns(schema)
    return msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``winspec`` console script."""
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Reported with the usage of the command they were given to, not winspec's own.
        _command_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "generate":
        return _generate(args)
    if args.command == "schema":
        sys.stdout.buffer.write(request_schema())
        return EXIT_OK
    if args.command in ("explain", "diff"):
        from adapters.explain import diff_command, explain_command

        return explain_command(args) if args.command == "explain" else diff_command(args)
    if args.command == "agent":
        from adapters.agent.command import agent_command

        return agent_command(args)
    from adapters.run import run_command

    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
