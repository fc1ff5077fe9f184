"""The ``winspec`` command line: ``generate`` one spec, ``run`` the controller, ``schema``.

Exit codes: 0 success, 1 a runtime failure (engine unreachable, I/O), 2 bad input (a request
the rules refuse, a malformed document, a bad option).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from adapters.credspecs import NodeCredentialSpecReader
from controller.errors import PermanentError
from controller.generate import encode_spec, generate
from controller.models import Request, decode_request

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2

_GENERATE_HELP = """\
Read one request document and print the OCI runtime spec (config.json) that Docker's Windows
daemon would generate for it.

A request is a JSON object whose "container" and "image" members are Docker inspect objects
verbatim (paste `docker inspect` output), and whose other members carry what an inspect does
not show: "node" facts, "layerFolders", "volumePath", "endpoints" driver data, and resolved
"secrets", "configs" and "credentialSpecs". `winspec schema` prints its JSON Schema.

Warnings (e.g. CPU options discarded under process isolation) go to stderr. A request the
rules refuse prints the error to stderr and exits 2.
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="winspec",
        description="Generate the OCI runtime specs and bundles Docker's Windows daemon would "
        "write, for one request or continuously from Docker events.",
    )
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
        default="-",
        help="the request document (a JSON file); '-' or absent reads standard input",
    )
    gen.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write config.json to FILE instead of standard output",
    )
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

    from adapters.agent.command import add_agent_parser
    from adapters.run import add_run_parser

    add_run_parser(sub)
    add_agent_parser(sub)
    return parser


def _read_request(source: str) -> Request:
    data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    return decode_request(data)


def _generate(args: argparse.Namespace) -> int:
    try:
        request = _read_request(args.request)
        generated = generate(request, reader=NodeCredentialSpecReader())
    except OSError as exc:
        print(f"winspec: cannot read request {args.request}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PermanentError as exc:
        print(f"winspec: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for warning in generated.warnings:
        print(f"winspec: warning: {warning}", file=sys.stderr)
    body = encode_spec(generated.spec) + b"\n"
    try:
        if args.output:
            Path(args.output).write_bytes(body)
        else:
            sys.stdout.buffer.write(body)
            sys.stdout.flush()
        if args.links:
            Path(args.links).write_bytes(msgspec.json.encode({"links": generated.links}) + b"\n")
    except OSError as exc:
        print(f"winspec: cannot write output: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def request_schema() -> bytes:
    """The JSON Schema of the request document, as shipped in controller/request.schema.json."""
    schema = msgspec.json.schema(Request)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "winspec request document"
    return msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``winspec`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "generate":
        return _generate(args)
    if args.command == "schema":
        sys.stdout.buffer.write(request_schema())
        return EXIT_OK
    if args.command == "agent":
        from adapters.agent.command import agent_command

        return agent_command(args)
    from adapters.run import run_command

    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
