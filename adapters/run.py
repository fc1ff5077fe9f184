"""``winspec run``: settings from flags, environment and a config file, then the controller.

Precedence, lowest first: built-in defaults, the TOML config file (``--config`` or
``WINSPEC_CONFIG``), ``WINSPEC_*`` environment variables (and ``DOCKER_HOST``), flags.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import tomllib
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import prometheus_client

from adapters.compose import DockerMode, RunnableMode, StartupError, run_until_signalled
from adapters.docker.client import parse_host
from adapters.logs import configure_logging
from adapters.threads import DaemonThreadPool
from controller.errors import PermanentError, TransientError, WinspecError
from controller.settings import Settings, env_settings, load_settings

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


def add_run_parser(sub: Any) -> None:
    """Register the ``run`` sub-command and its options."""
    p = sub.add_parser(
        "run",
        help="run the controller (Docker mode, or cluster mode with --source kubernetes)",
        description=_RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", metavar="FILE", help="TOML settings file (WINSPEC_CONFIG)")
    p.add_argument(
        "--source",
        choices=["docker", "kubernetes"],
        help="where containers come from: a Docker engine's events, or WindowsContainer "
        "resources on a Kubernetes API server (cluster mode) (default: docker)",
    )
    p.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="cluster mode: kubeconfig file (default: KUBECONFIG, else ~/.kube/config, else "
        "the in-cluster service account)",
    )
    p.add_argument(
        "--service-account-dir",
        metavar="DIR",
        help="cluster mode, in-cluster: the directory of the pod's service account token and "
        "ca.crt (default: /var/run/secrets/kubernetes.io/serviceaccount)",
    )
    p.add_argument(
        "--namespace",
        action="append",
        metavar="NAME",
        help="cluster mode: watch this namespace (repeatable; default: all namespaces)",
    )
    p.add_argument(
        "--selector",
        metavar="LABELS",
        help="cluster mode: label selector of the WindowsContainers to reconcile",
    )
    p.add_argument(
        "--node-name",
        metavar="NODE",
        help="cluster mode: reconcile only the WindowsContainers labelled "
        "winspec.io/node-name=NODE (one instance per node; turns leader election off)",
    )
    p.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        help="cluster mode: only the holder of a Lease reconciles (default: on)",
    )
    p.add_argument(
        "--leader-election-namespace",
        metavar="NAME",
        help="cluster mode: namespace of the Lease (default: winspec-system)",
    )
    p.add_argument(
        "--leader-election-id",
        metavar="NAME",
        help="cluster mode: name of the Lease (default: winspec)",
    )
    p.add_argument(
        "--lease-duration",
        type=float,
        metavar="SECONDS",
        help="cluster mode: how long a Lease lasts without renewal; a standby takes over "
        "within it (default: 15)",
    )
    p.add_argument(
        "--watch-timeout",
        type=int,
        metavar="SECONDS",
        help="cluster mode: server-side timeout of each watch (default: 300)",
    )
    p.add_argument(
        "--pod-security-default",
        choices=["privileged", "baseline", "restricted"],
        help="cluster mode: the Pod Security level of a namespace without a "
        "pod-security.kubernetes.io/enforce label (default: privileged, as Kubernetes')",
    )
    p.add_argument(
        "--dependency-grace-period",
        type=float,
        metavar="SECONDS",
        help="cluster mode: how long a bundle keeps the payload of a Secret, ConfigMap or "
        "GMSACredentialSpec that went missing before it is withdrawn (default: 30)",
    )
    p.add_argument(
        "--delivery",
        choices=["local", "agent"],
        help="cluster mode: write bundles under --bundle-root (local), or hand each to the "
        "node agent on its resource's node (agent; default: local)",
    )
    p.add_argument(
        "--agent-port",
        type=int,
        metavar="PORT",
        help=f"--delivery agent: the agents' HTTPS port when their pod declares no container "
        f"port named https (default: {_DEFAULTS.agent_port})",
    )
    p.add_argument(
        "--agent-ca-file",
        metavar="FILE",
        help="--delivery agent: CA bundle the agents' certificates are checked against "
        "(default: the system's CAs)",
    )
    p.add_argument(
        "--agent-server-name",
        metavar="NAME",
        help="--delivery agent: the name the agents' certificates must carry, checked instead "
        "of the pod IP dialled (e.g. winspec-agent.winspec-system.svc; default: the pod IP)",
    )
    p.add_argument(
        "--agent-token-file",
        metavar="FILE",
        help="--delivery agent: projected service-account token (audience winspec-agent), "
        f"re-read on every call (default: {_DEFAULTS.agent_token_file})",
    )
    p.add_argument(
        "--agent-selector",
        metavar="LABELS",
        help="--delivery agent: label selector of the agent pods "
        f"(default: {_DEFAULTS.agent_selector})",
    )
    p.add_argument(
        "--agent-namespace",
        metavar="NAME",
        help="--delivery agent: namespace of the agent pods "
        f"(default: {_DEFAULTS.agent_namespace})",
    )
    p.add_argument(
        "--agent-concurrency",
        type=int,
        metavar="N",
        help="--delivery agent: calls at once to one node's agent (default: 4)",
    )
    p.add_argument(
        "--agent-timeout",
        type=float,
        metavar="SECONDS",
        help="--delivery agent: deadline of one delivery to one node, retries included; "
        "a slower node's resources are retried later (default: 60)",
    )
    p.add_argument(
        "--agent-removal-grace",
        type=float,
        metavar="SECONDS",
        help="--delivery agent: how long a deleted resource waits for its node's agent to "
        "remove the bundle; after that without a reachable agent (at once when the Node is "
        "deleted) the finalizer is released with a Warning Event (default: 600)",
    )
    p.add_argument(
        "--docker-host",
        metavar="URL",
        help="engine endpoint: unix:///path, npipe:////./pipe/NAME or tcp://HOST:PORT "
        "(default: DOCKER_HOST, else the platform's default)",
    )
    p.add_argument(
        "--swarm-host",
        metavar="URL",
        help="a swarm manager's Engine API (same forms and TLS settings as --docker-host), "
        "asked for swarm tasks and configs; needed on worker nodes (default: --docker-host)",
    )
    p.add_argument(
        "--bundle-root",
        metavar="DIR",
        help=r"where bundles are written (default: C:\ProgramData\winspec\bundles on Windows, "
        "/var/lib/winspec/bundles elsewhere)",
    )
    p.add_argument(
        "--secrets-dir",
        metavar="DIR",
        help="where the swarm mounts the secrets granted to winspec's own service "
        r"(default: C:\ProgramData\Docker\secrets or /run/secrets)",
    )
    p.add_argument("--workers", type=int, metavar="N", help="concurrent reconciles (default: 4)")
    p.add_argument(
        "--resync-interval",
        type=float,
        metavar="SECONDS",
        help="list every container this often (default: 300)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="restart an event stream silent for this long (default: 600)",
    )
    p.add_argument(
        "--retry-attempts",
        type=int,
        metavar="N",
        help="attempts per remote call before the reconcile fails and backs off (default: 5)",
    )
    p.add_argument(
        "--api-timeout", type=float, metavar="SECONDS", help="timeout of one API call (default: 30)"
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="address of /metrics, /healthz, /readyz (default: 0.0.0.0:8080)",
    )
    p.add_argument("--log-format", choices=["json", "console"], help="log format (default: json)")
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="the least severe log messages written (default: info)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        metavar="SECONDS",
        help="how long in-flight reconciles may finish after SIGTERM; the whole shutdown "
        "takes at most this plus 3.5 s (default: 30)",
    )
    p.add_argument(
        "--windows-build",
        type=int,
        metavar="N",
        help="node's Windows build (default: from the engine; 17763 on a Linux engine)",
    )
    p.add_argument("--cpu-count", type=int, metavar="N", help="node CPUs (default: engine's NCPU)")
    p.add_argument(
        "--default-isolation",
        choices=["process", "hyperv"],
        help="node default isolation (default: the engine's, else process)",
    )
    p.add_argument(
        "--lcow",
        action=argparse.BooleanOptionalAction,
        help="the node runs Linux containers (default: only when the engine is Linux)",
    )
    p.add_argument(
        "--dns-search",
        action="append",
        metavar="DOMAIN",
        help="node default DNS search domain (repeatable)",
    )
    p.add_argument(
        "--daemon-root",
        metavar="DIR",
        help="engine data root, base of file:// credential specs (default: engine's)",
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


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)``, except that no worker thread can hold up the exit.

    ``asyncio.run`` joins the default executor's threads without a timeout (Python 3.11), and
    CPython joins every ``ThreadPoolExecutor`` thread again at interpreter exit: one thread stuck
    in a blocking read (a FIFO, a file system that stopped answering) would keep the process
    alive after SIGTERM for ever, past the promised ``--shutdown-timeout`` + 3.5 s. The default
    executor here is a pool of daemon threads that shutdown does not wait for: by then the
    controller has given in-flight reconciles their deadline, and what still runs is stuck.
    """
    executor = DaemonThreadPool(max_workers=min(32, (os.cpu_count() or 1) + 4))
    with asyncio.Runner() as runner:
        runner.get_loop().set_default_executor(executor)
        runner.run(main)


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
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    # controller-runtime exports no *_created series; dashboards built for it expect none.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    mode: RunnableMode
    if settings.source == "kubernetes":
        from adapters.kubernetes.mode import ClusterMode

        mode = ClusterMode(settings)
    else:
        mode = DockerMode(settings)
    try:
        run_loop(run_until_signalled(mode))
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
