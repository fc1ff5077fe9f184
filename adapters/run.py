"""``winspec run``: settings from flags, environment and a config file, then the controller.

Precedence, lowest first: built-in defaults, the TOML config file (``--config`` or
``WINSPEC_CONFIG``), ``WINSPEC_*`` environment variables (and ``DOCKER_HOST``), flags.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.shutdown import SHUTDOWN_MARGIN_SECONDS
from controller.errors import PermanentError, TransientError, WinspecError
from controller.settings import Settings, env_settings, load_settings

if TYPE_CHECKING:
    from adapters.runtime import Runtime

# What only a running controller needs (aiohttp, prometheus_client, structlog, each mode's
# client) is imported once the command runs, and each mode imports only its own adapters: the
# command line, `--help` and `--version` are read without them, cluster mode without the Docker
# client and Docker mode without the Kubernetes client.

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2

#: The built-in defaults, quoted by the help texts (so the help cannot name other values).
_DEFAULTS = Settings()
_RUN_HELP = """\
Run winspec as a controller. In Docker mode it watches the engine's container create, start,
update, rename and destroy events and network connect and disconnect events, resolves each
container's image layers, networks, swarm secrets, configs and credential specs, and keeps an
OCI bundle for every container under --bundle-root (removed when the container is). It lists
all containers at start, after every reconnect and every --resync-interval, so no container is
missed. /metrics, /healthz and /readyz are served on --listen.

With --source kubernetes (cluster mode) it lists and watches WindowsContainer resources
(winspec.io/v1alpha1, an alpha API) on the API server of --kubeconfig (else KUBECONFIG,
~/.kube/config or the in-cluster service account) and keeps a bundle per resource under
--bundle-root/<namespace>/<name> (or, with --delivery agent, hands it to the node agent on the
resource's node), with the resource's status, a finalizer and events.

Exit codes: 0 stopped by SIGTERM/SIGINT (also before the engine was reached), 1 the engine
(or API server) unreachable or --listen unusable, 2 a bad setting (refused before anything
starts).

Every option can also be set as WINSPEC_<OPTION> (e.g. WINSPEC_BUNDLE_ROOT) or in a TOML file
given with --config (keys as the option names with underscores, e.g. bundle_root = "...").
"""


def _default(name: str) -> str:
    """A setting's built-in default as the help shows it: ``(default: 30)``."""
    value = getattr(_DEFAULTS, name)
    shown = f"{value:g}" if isinstance(value, float) else value
    return f"(default: {shown})"


def add_run_parser(sub: Any) -> None:
    """Register the ``run`` sub-command and its options, in groups: every mode's, Docker
    mode's, the node's, cluster mode's and ``--delivery agent``'s. The defaults the help quotes
    are :class:`Settings`' own."""
    p = sub.add_parser(
        "run",
        help="run the controller (Docker mode, or cluster mode with --source kubernetes)",
        description=_RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    _add_common_options(p.add_argument_group("every mode"))
    _add_docker_options(p.add_argument_group("Docker mode (--source docker)"))
    _add_node_options(
        p.add_argument_group(
            "the node", "what the generated specs assume of the Windows node (every mode)"
        )
    )
    _add_cluster_options(p.add_argument_group("cluster mode (--source kubernetes)"))
    _add_delivery_options(
        p.add_argument_group(
            "cluster mode, --delivery agent", "bundles handed to the node agent on each node"
        )
    )


def _add_common_options(g: Any) -> None:
    g.add_argument("--config", metavar="FILE", help="TOML settings file (WINSPEC_CONFIG)")
    g.add_argument(
        "--source",
        choices=["docker", "kubernetes"],
        help="where containers come from: a Docker engine's events, or WindowsContainer "
        f"resources on a Kubernetes API server (cluster mode) {_default('source')}",
    )
    g.add_argument(
        "--bundle-root",
        metavar="DIR",
        help=r"where bundles are written (default: C:\ProgramData\winspec\bundles on Windows, "
        "/var/lib/winspec/bundles elsewhere)",
    )
    g.add_argument(
        "--workers", type=int, metavar="N", help=f"concurrent reconciles {_default('workers')}"
    )
    g.add_argument(
        "--resync-interval",
        type=float,
        metavar="SECONDS",
        help=f"list every container this often {_default('resync_interval')}",
    )
    g.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help=f"restart an event stream silent for this long {_default('idle_timeout')}",
    )
    g.add_argument(
        "--retry-attempts",
        type=int,
        metavar="N",
        help="attempts per remote call before the reconcile fails and backs off "
        f"{_default('retry_attempts')}",
    )
    g.add_argument(
        "--api-timeout",
        type=float,
        metavar="SECONDS",
        help=f"timeout of one API call {_default('api_timeout')}",
    )
    g.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"address of /metrics, /healthz, /readyz {_default('listen')}",
    )
    g.add_argument(
        "--log-format",
        choices=["json", "console"],
        help=f"log format {_default('log_format')}",
    )
    g.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help=f"the least severe log messages written {_default('log_level')}",
    )
    g.add_argument(
        "--shutdown-timeout",
        type=float,
        metavar="SECONDS",
        help="how long in-flight reconciles may finish after SIGTERM; the whole shutdown "
        f"takes at most this plus {SHUTDOWN_MARGIN_SECONDS:g} s {_default('shutdown_timeout')}",
    )


def _add_docker_options(g: Any) -> None:
    g.add_argument(
        "--docker-host",
        metavar="URL",
        help="engine endpoint: unix:///path, npipe:////./pipe/NAME or tcp://HOST:PORT "
        "(default: DOCKER_HOST, else the platform's default)",
    )
    g.add_argument(
        "--swarm-host",
        metavar="URL",
        help="a swarm manager's Engine API (same forms and TLS settings as --docker-host), "
        "asked for swarm tasks and configs; needed on worker nodes (default: --docker-host)",
    )
    g.add_argument(
        "--secrets-dir",
        metavar="DIR",
        help="where the swarm mounts the secrets granted to winspec's own service "
        r"(default: C:\ProgramData\Docker\secrets or /run/secrets)",
    )


def _add_node_options(g: Any) -> None:
    g.add_argument(
        "--windows-build",
        type=int,
        metavar="N",
        help="node's Windows build (default: from the engine; 17763 on a Linux engine)",
    )
    g.add_argument("--cpu-count", type=int, metavar="N", help="node CPUs (default: engine's NCPU)")
    g.add_argument(
        "--default-isolation",
        choices=["process", "hyperv"],
        help="node default isolation (default: the engine's, else process)",
    )
    g.add_argument(
        "--lcow",
        action=argparse.BooleanOptionalAction,
        help="the node runs Linux containers (default: only when the engine is Linux)",
    )
    g.add_argument(
        "--dns-search",
        action="append",
        metavar="DOMAIN",
        help="node default DNS search domain (repeatable)",
    )
    g.add_argument(
        "--daemon-root",
        metavar="DIR",
        help="engine data root, base of file:// credential specs (default: engine's)",
    )


def _add_cluster_options(g: Any) -> None:
    g.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="kubeconfig file (default: KUBECONFIG, else ~/.kube/config, else the in-cluster "
        "service account)",
    )
    g.add_argument(
        "--service-account-dir",
        metavar="DIR",
        help="in-cluster: the directory of the pod's service account token and ca.crt "
        f"{_default('service_account_dir')}",
    )
    g.add_argument(
        "--namespace",
        action="append",
        metavar="NAME",
        help="watch this namespace (repeatable; default: all namespaces)",
    )
    g.add_argument(
        "--selector", metavar="LABELS", help="label selector of the WindowsContainers to reconcile"
    )
    g.add_argument(
        "--node-name",
        metavar="NODE",
        help="reconcile only the WindowsContainers labelled winspec.io/node-name=NODE (one "
        "instance per node; turns leader election off)",
    )
    g.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        help="only the holder of a Lease reconciles (default: on)",
    )
    g.add_argument(
        "--leader-election-namespace",
        metavar="NAME",
        help=f"namespace of the Lease {_default('leader_election_namespace')}",
    )
    g.add_argument(
        "--leader-election-id",
        metavar="NAME",
        help=f"name of the Lease {_default('leader_election_id')}",
    )
    g.add_argument(
        "--lease-duration",
        type=float,
        metavar="SECONDS",
        help="how long a Lease lasts without renewal; a standby takes over within it "
        f"{_default('lease_duration')}",
    )
    g.add_argument(
        "--watch-timeout",
        type=int,
        metavar="SECONDS",
        help=f"server-side timeout of each watch {_default('watch_timeout')}",
    )
    g.add_argument(
        "--list-from-cache",
        action=argparse.BooleanOptionalAction,
        help="let the first list of each collection come from the API server's watch cache "
        "(resourceVersion=0, as client-go does: one cheap response; it may lag etcd for a "
        "moment, which the watch then makes up); --no-list-from-cache reads etcd page by page "
        f"{_default('list_from_cache')}",
    )
    g.add_argument(
        "--pod-security-default",
        choices=["privileged", "baseline", "restricted"],
        help="the Pod Security level of a namespace without a "
        "pod-security.kubernetes.io/enforce label (default: "
        f"{_DEFAULTS.pod_security_default}, as Kubernetes')",
    )
    g.add_argument(
        "--dependency-grace-period",
        type=float,
        metavar="SECONDS",
        help="how long a bundle keeps the payload of a Secret, ConfigMap or GMSACredentialSpec "
        f"that went missing before it is withdrawn {_default('dependency_grace_period')}",
    )
    g.add_argument(
        "--delivery",
        choices=["local", "agent"],
        help="write bundles under --bundle-root (local), or hand each to the node agent on its "
        f"resource's node (agent) {_default('delivery')}",
    )


def _add_delivery_options(g: Any) -> None:
    g.add_argument(
        "--agent-port",
        type=int,
        metavar="PORT",
        help="the agents' HTTPS port when their pod declares no container port named https "
        f"{_default('agent_port')}",
    )
    g.add_argument(
        "--agent-ca-file",
        metavar="FILE",
        help="CA bundle the agents' certificates are checked against (default: the system's CAs)",
    )
    g.add_argument(
        "--agent-server-name",
        metavar="NAME",
        help="the name the agents' certificates must carry, checked instead of the pod IP "
        "dialled (e.g. winspec-agent.winspec-system.svc; default: the pod IP)",
    )
    g.add_argument(
        "--agent-token-file",
        metavar="FILE",
        help="projected service-account token (audience winspec-agent), re-read on every call "
        f"{_default('agent_token_file')}",
    )
    g.add_argument(
        "--agent-selector",
        metavar="LABELS",
        help=f"label selector of the agent pods {_default('agent_selector')}",
    )
    g.add_argument(
        "--agent-namespace",
        metavar="NAME",
        help=f"namespace of the agent pods {_default('agent_namespace')}",
    )
    g.add_argument(
        "--agent-concurrency",
        type=int,
        metavar="N",
        help=f"calls at once to one node's agent {_default('agent_concurrency')}",
    )
    g.add_argument(
        "--agent-timeout",
        type=float,
        metavar="SECONDS",
        help="deadline of one delivery to one node, retries included; a slower node's "
        f"resources are retried later {_default('agent_timeout')}",
    )
    g.add_argument(
        "--agent-removal-grace",
        type=float,
        metavar="SECONDS",
        help="how long a deleted resource waits for its node's agent to remove the bundle; "
        "after that without a reachable agent (at once when the Node is deleted) the "
        f"finalizer is released with a Warning Event {_default('agent_removal_grace')}",
    )


def _file_settings(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise PermanentError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PermanentError(f"invalid config file {path}: {exc}") from exc


#: What a bundle root is called in messages: it may come from any of the three.
_BUNDLE_ROOT = "bundle root (--bundle-root, WINSPEC_BUNDLE_ROOT, bundle_root)"


def check_bundle_root(path: str) -> None:
    """Refuse a bundle root winspec could not write bundles into, before anything connects.

    It must be a directory, or creatable (it is created here, as the writer would); winspec
    must be able to create a directory in it and rename it there, and that directory must be
    on the root's own file system, because every bundle is built beside its final place and
    swapped in by rename. Raises :class:`PermanentError` naming the path and what is wrong.
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise PermanentError(f"{_BUNDLE_ROOT} {path} exists and is not a directory")
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise PermanentError(
            f"{_BUNDLE_ROOT} {path} is not a directory and cannot be created: {exc.strerror}"
        ) from exc
    try:
        probe = Path(tempfile.mkdtemp(prefix=".tmp-probe-", dir=root))
    except OSError as exc:
        raise PermanentError(
            f"{_BUNDLE_ROOT} {path} is not writable (a directory cannot be created in it: "
            f"{exc.strerror})"
        ) from exc
    renamed = probe.with_name(probe.name + "-renamed")
    try:
        os.rename(probe, renamed)
        probe = renamed
        if os.stat(probe).st_dev != os.stat(root).st_dev:
            raise PermanentError(
                f"{_BUNDLE_ROOT} {path}: a directory created in it lands on another file "
                "system, so bundles cannot be swapped in by rename"
            )
    except OSError as exc:
        raise PermanentError(
            f"{_BUNDLE_ROOT} {path}: a directory in it cannot be renamed: {exc.strerror}"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


#: What the agent token file is called in messages.
_AGENT_TOKEN_FILE = (
    "agent token file (--agent-token-file, WINSPEC_AGENT_TOKEN_FILE, agent_token_file)"
)


def check_agent_token_file(path: str) -> None:
    """Refuse, at start, a ``--delivery agent`` token file that cannot be read or is empty
    (else the first delivery would be the first to find out). It is read again on every call:
    the kubelet rotates it. Raises :class:`PermanentError` naming the path."""
    from adapters.kubernetes.delivery import token_reader

    try:
        token_reader(Path(path))()
    except TransientError as exc:
        raise PermanentError(f"{_AGENT_TOKEN_FILE}: {exc}") from exc


def _mode(settings: Settings) -> Runtime:
    """The mode ``--source`` asks for (each imports only its own adapters)."""
    if settings.source == "kubernetes":
        from adapters.kubernetes.mode import ClusterMode

        return ClusterMode(settings)
    from adapters.docker.mode import DockerMode

    return DockerMode(settings)


def run_command(args: argparse.Namespace) -> int:
    """Run the controller until stopped; the process exit code."""
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    try:
        file_layer = _file_settings(
            getattr(args, "config", None) or os.environ.get("WINSPEC_CONFIG")
        )
        settings = load_settings(
            file_layer, env_settings(os.environ), flags, origins=("file", "env", "flag")
        )
        if settings.source == "docker":
            from adapters.docker.client import parse_host

            # The engine endpoints are parsed by the client's own parser, before anything starts.
            parse_host(settings.docker_host)
            if settings.swarm_host:
                parse_host(settings.swarm_host)
        check_bundle_root(settings.bundle_root)
        if settings.source == "kubernetes" and settings.delivery == "agent":
            check_agent_token_file(settings.agent_token_file)
    except PermanentError as exc:
        print(f"winspec: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    import prometheus_client

    from adapters.logs import configure_logging
    from adapters.runtime import StartupError, run_loop, run_until_signalled

    configure_logging(fmt=settings.log_format, level=settings.log_level)
    # controller-runtime exports no *_created series; dashboards built for it expect none.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    try:
        run_loop(run_until_signalled(_mode(settings)))
    except StartupError as exc:  # the engine or API server unreachable, the listen address
        print(f"winspec: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except PermanentError as exc:  # a setting found bad on use, e.g. missing TLS files
        print(f"winspec: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except WinspecError as exc:
        logging.getLogger("winspec").error("controller failed", extra={"error": str(exc)})
        return EXIT_FAILURE
    # Also when a signal stopped it before it reached the engine: a stop that was asked for.
    return EXIT_OK
