"""The options of ``winspec agent`` and its help (the command: :mod:`adapters.agent.command`).

Apart from the command, so that building winspec's command line imports none of what the agent
runs on (aiohttp, the Kubernetes client).
"""

from __future__ import annotations

import argparse
from typing import Any

from adapters.agent.settings import (
    CONTROLLER_IDENTITY,
    DEFAULT_AUDIENCE,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_PEER,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_REPLAY_WINDOW,
    DEFAULT_TOKEN_REVIEW_BURST,
    DEFAULT_TOKEN_REVIEW_RATE,
)
from adapters.shutdown import SHUTDOWN_MARGIN_SECONDS

_AGENT_HELP = f"""\
Run the node agent: an HTTPS server on a Windows node that receives OCI bundles from the
cluster controller and writes them below --bundle-root/<namespace>/<name>/ with the same
atomic, durable writer as `winspec run`.

  PUT    /v1/bundles/<namespace>/<name>   write a bundle (idempotent, integrity-checked)
  DELETE /v1/bundles/<namespace>/<name>   remove it
  GET    /v1/bundles                      every bundle and its digest (for a resync)
  GET    /v1/node                         the bundle root, as the node names it (the
                                          controller points each spec's mounts below it)
  /healthz, /readyz, /metrics             probes and Prometheus (no token needed)

Every /v1/ request needs `Authorization: Bearer <token>`: a token the API server accepts for
--token-audience (checked with a TokenReview, so the agent's own account needs `create` on
tokenreviews.authentication.k8s.io), of an identity given with --allowed-identity. No or an
invalid token: 401; another identity: 403; nothing is written on either.

Hostile clients: a TLS handshake, then each request head, must arrive within --header-timeout
seconds and a body within --body-timeout; at most --max-connections are open, at most
--max-connections-per-peer from one address (when all are taken, a peer with fewer gets one of
the busiest peer's). A PUT or DELETE replayed, or older than the newest accepted for its bundle
or than --replay-window, gets 409; a peer sending unknown tokens gets 429 beyond its
TokenReview budget (--token-review-burst, then --token-review-rate a second). Repeated log
lines are summarised.

Exit codes: 0 stopped by SIGTERM/SIGINT, 1 --listen unusable, 2 a bad setting (refused
before anything starts: missing TLS files, no allowed identity, an unusable kubeconfig).

Every option can also be set as WINSPEC_AGENT_<OPTION> (e.g. WINSPEC_AGENT_BUNDLE_ROOT;
--allowed-identity as a comma-separated list). Defaults: --listen 0.0.0.0:8443,
--token-audience {DEFAULT_AUDIENCE}, --max-request-bytes {DEFAULT_MAX_REQUEST_BYTES}.
"""


def add_agent_parser(sub: Any) -> None:
    """Register the ``agent`` sub-command and its options."""
    p = sub.add_parser(
        "agent",
        help="run the node agent that receives bundles from the cluster controller",
        description=_AGENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--listen", metavar="HOST:PORT", help="address of the HTTPS API (default: 0.0.0.0:8443)"
    )
    p.add_argument(
        "--bundle-root",
        metavar="DIR",
        help=r"where bundles are written, one directory per namespace (default: "
        r"C:\ProgramData\winspec\bundles on Windows, /var/lib/winspec/bundles elsewhere)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="server certificate chain (PEM); required")
    p.add_argument("--tls-key", metavar="FILE", help="its private key (PEM); required")
    p.add_argument(
        "--tls-reload-interval",
        type=float,
        metavar="SECONDS",
        help="how often the certificate files are checked for a rotation; a changed pair is "
        "loaded for new connections without a restart (default: 60)",
    )
    p.add_argument(
        "--insecure-http",
        action="store_true",
        help="serve plain HTTP without --tls-cert/--tls-key: tests and development only, "
        "tokens then travel in clear text",
    )
    p.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="credentials for TokenReview (default: KUBECONFIG, else ~/.kube/config, else "
        "the in-cluster service account)",
    )
    p.add_argument(
        "--token-audience",
        metavar="AUDIENCE",
        help="the audience tokens must be issued for (the controller's projected token "
        f"audience; default: {DEFAULT_AUDIENCE})",
    )
    p.add_argument(
        "--allowed-identity",
        action="append",
        metavar="USER",
        help=f"a user allowed to deliver bundles, e.g. {CONTROLLER_IDENTITY}, the shipped "
        "controller's ServiceAccount (repeatable; at least one)",
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        metavar="N",
        help=f"largest accepted upload; larger ones get 413 (default: {DEFAULT_MAX_REQUEST_BYTES})",
    )
    p.add_argument(
        "--token-cache-ttl",
        type=float,
        metavar="SECONDS",
        help="how long an accepted token's review is reused (default: 60)",
    )
    p.add_argument(
        "--token-negative-ttl",
        type=float,
        metavar="SECONDS",
        help="how long a refused token's review is reused (default: 5)",
    )
    p.add_argument(
        "--token-cache-size",
        type=int,
        metavar="N",
        help="most token verdicts kept, of those that let a request in and of the others each "
        "(least recently used go first; default: 1024)",
    )
    p.add_argument(
        "--token-review-rate",
        type=float,
        metavar="N",
        help="TokenReviews of tokens not in the cache one client address may cause a second, "
        f"after its burst; beyond it: 429 (default: {DEFAULT_TOKEN_REVIEW_RATE:g})",
    )
    p.add_argument(
        "--token-review-burst",
        type=int,
        metavar="N",
        help="TokenReviews one client address may cause at once (default: "
        f"{DEFAULT_TOKEN_REVIEW_BURST})",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        metavar="SECONDS",
        help="time for the TLS handshake, and for each request line and headers from the "
        "connection's start or its last answer (idle keep-alive connections close after it "
        f"too; default: {DEFAULT_HEADER_TIMEOUT:g})",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        metavar="SECONDS",
        help=f"time for a whole request body; slower ones get 408 (default: "
        f"{DEFAULT_BODY_TIMEOUT:g})",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="connections open at once, lowered to fit the file descriptor limit "
        f"(default: {DEFAULT_MAX_CONNECTIONS})",
    )
    p.add_argument(
        "--max-connections-per-peer",
        type=int,
        metavar="N",
        help=f"connections open at once from one address (default: "
        f"{DEFAULT_MAX_CONNECTIONS_PER_PEER})",
    )
    p.add_argument(
        "--replay-window",
        type=float,
        metavar="SECONDS",
        help="how far an upload's time may be from the agent's clock; older or replayed "
        f"uploads get 409 (default: {DEFAULT_REPLAY_WINDOW:g})",
    )
    p.add_argument(
        "--api-timeout",
        type=float,
        metavar="SECONDS",
        help="timeout of one TokenReview call (default: 10)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        metavar="SECONDS",
        help="how long requests in flight may finish after SIGTERM; the whole shutdown takes "
        f"at most this plus {SHUTDOWN_MARGIN_SECONDS:g} s (default: 10)",
    )
    p.add_argument("--log-format", choices=["json", "console"], help="log format (default: json)")
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="the least severe log messages written (default: info)",
    )
