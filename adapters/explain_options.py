"""The options of ``winspec explain`` and ``winspec diff`` and their help (the commands:
:mod:`adapters.explain`).

Apart from the commands, so that building winspec's command line imports none of what they run
on (the generator, the Docker and Kubernetes clients).
"""

from __future__ import annotations

import argparse
from typing import Any

from controller.settings import Settings

_EXPLAIN_HELP = """\
Generate the spec for one request document (as `winspec generate` does) and print, for every
field, its value, the rules (S1-S32, controller/RULES.md) that decided it and the request fields
it came from: one line per field, `FIELD = VALUE  [RULES]  <- REQUEST FIELDS`. A credential
spec's JSON text is never printed: its size and SHA-256 digest stand in for it.

With --docker-host, the argument is a container of that engine (name or id): winspec fetches
what Docker mode would fetch for it (inspects, node facts from /info, layer folders, swarm
secrets and configs, credential specs) and explains the spec of that request. With
--kubeconfig, the argument is a WindowsContainer resource NAMESPACE/NAME: winspec fetches what
cluster mode would (the resource, its namespace's Pod Security label, its Secrets, ConfigMaps,
GMSACredentialSpec and Node). Secret values are fetched as the controller fetches them, but a
spec holds only paths: they are never printed.
"""

_DIFF_HELP = """\
Compare a spec made elsewhere (by a Docker host, or by containerd's Windows CRI:
`ctr containers info --spec`) with the spec Docker's rules give. The second document is either a
request (winspec generates its spec) or another spec. Mounts are matched by destination;
capabilities, environment and devices are compared as sets, and an order difference is reported
on its own. Each difference names the rules that decide winspec's value and why (given a
request, or --request with two specs). Exits 0 when the specs agree, 1 when they differ.
"""


def add_explain_parsers(sub: Any) -> None:
    """Register ``explain`` and ``diff`` on winspec's sub-command parser."""
    explain_parser = sub.add_parser(
        "explain",
        help="print a request's spec with the rules and request fields behind each field",
        description=_EXPLAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain_parser.add_argument(
        "request",
        metavar="REQUEST|CONTAINER",
        help="the request document (a JSON file; '-': stdin), or with --docker-host a container",
    )
    defaults = Settings()
    explain_parser.add_argument(
        "--docker-host",
        metavar="URL",
        help="explain the spec of a live container of this Docker engine (unix://, tcp://, npipe://)",
    )
    explain_parser.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="explain the spec of a WindowsContainer NAMESPACE/NAME of this cluster",
    )
    explain_parser.add_argument(
        "--bundle-root",
        default=defaults.bundle_root,
        help="with --docker-host or --kubeconfig: the bundle root the controller writes under "
        "(default: %(default)s)",
    )
    explain_parser.add_argument(
        "--secrets-dir",
        default=defaults.secrets_dir,
        help="with --docker-host: the granted secrets of swarm tasks (default: %(default)s)",
    )
    explain_parser.add_argument(
        "--field",
        metavar="PATH",
        help="only this field and those below it (e.g. process.user.username, mounts[0])",
    )
    explain_parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (text)"
    )
    diff_parser = sub.add_parser(
        "diff",
        help="the fields where a spec made elsewhere differs from Docker's rules",
        description=_DIFF_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    diff_parser.add_argument("spec", help="the spec made elsewhere (config.json)")
    diff_parser.add_argument("other", help="a request document, or winspec's (or any) spec")
    diff_parser.add_argument(
        "--request",
        metavar="FILE",
        help="with two specs: the request of the second, to name the rules of each difference",
    )
    diff_parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (text)"
    )
