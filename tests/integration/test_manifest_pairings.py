"""The shipped manifests, winspec's defaults, its help and the README name the same things: what
one side of a pairing says, the other must match, read from the overlays as ``kubectl
kustomize`` builds them (nothing here restates a manifest value).

Pairs checked: the agent's port (its --listen, the container port, the Service, the controller's
--agent-port and its default), the agent pods' labels (the controller's --agent-selector and its
default select them and no other pod), the agents' namespace, the identity the agent admits (the
controller's ServiceAccount; also the README's and ``winspec agent --help``'s examples), the
token audience and the token, CA and TLS file paths (each inside the volume that provides it),
the agent certificate's name (the agent Service), the bundle roots (the hostPath mounted at
the same path, so the root winspec knows or the agent reports is the node's), the Services'
and probes' named ports, leader election's Lease and its Role, ServiceAccounts and their
bindings, and the ServiceMonitors' Services and ports.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import PurePath, PurePosixPath, PureWindowsPath
from typing import Any

import pytest

from adapters.agent.settings import (
    CONTROLLER_IDENTITY,
    DEFAULT_AUDIENCE,
    AgentSettings,
    load_agent_settings,
)
from adapters.cli import _build_parser
from controller.settings import Settings, load_settings, split_listen
from tests.agent import agent_command
from tests.manifests import render
from tests.processes import clean_env
from tests.readme_commands import WINDOWS_ONLY

_IDENTITY = re.compile(r"system:serviceaccount:[a-z0-9.-]+:[a-z0-9.-]+")
Objects = list[dict[str, Any]]


@pytest.fixture(scope="module")
def central() -> Objects:
    """The central overlay, built."""
    return render("overlays/central")


@pytest.fixture(scope="module")
def node_local() -> Objects:
    """The node-local overlay, built."""
    return render("overlays/node-local")


@pytest.fixture(scope="module")
def monitoring() -> Objects:
    """The monitoring kustomization, built."""
    return render("monitoring")


def _one(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    (found,) = (o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)
    return found


def _workloads(objects: Objects) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] in ("Deployment", "DaemonSet"))


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _settings(workload: dict[str, Any]) -> Settings | AgentSettings:
    """The settings the workload's container runs with (its flags over the defaults)."""
    args = [a.replace("$(NODE_NAME)", "win-node-1") for a in _container(workload)["args"]]
    parsed = _build_parser().parse_args(args)
    flags = {k: v for k, v in vars(parsed).items() if k not in ("command", "config")}
    if parsed.command == "agent":
        return load_agent_settings({k: v for k, v in flags.items() if v is not None})
    return load_settings(flags, origins=("flag",))


def _agent(central: Objects) -> tuple[dict[str, Any], AgentSettings]:
    (agent,) = (w for w in _workloads(central) if isinstance(_settings(w), AgentSettings))
    settings = _settings(agent)
    assert isinstance(settings, AgentSettings)
    return agent, settings


def _controller(central: Objects) -> tuple[dict[str, Any], Settings]:
    (controller,) = (o for o in central if o["kind"] == "Deployment")
    settings = _settings(controller)
    assert isinstance(settings, Settings)
    return controller, settings


def _selects(selector: str, labels: dict[str, str]) -> bool:
    """Whether an equality-based label selector (``a=b,c!=d,e,!f``) selects ``labels``."""
    for term in selector.split(","):
        term = term.strip()
        assert not re.search(r"\s(not)?in\s", term), f"set-based term {term!r}"
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def _ports(workload: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in _container(workload).get("ports", [])}


def _path_flavour(workload: dict[str, Any]) -> type[PurePath]:
    pod = workload["spec"]["template"]["spec"]
    windows = pod.get("nodeSelector", {}).get("kubernetes.io/os") == "windows"
    return PureWindowsPath if windows else PurePosixPath


def _volume_of(workload: dict[str, Any], path: str) -> tuple[dict[str, Any], PurePath]:
    """The volume whose mount holds ``path``, and ``path`` below its mountPath."""
    flavour = _path_flavour(workload)
    target = flavour(path)
    pod = workload["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = sorted(
        _container(workload)["volumeMounts"], key=lambda m: -len(flavour(m["mountPath"]).parts)
    )
    for mount in mounts:
        base = flavour(mount["mountPath"])
        if target == base or base in target.parents:
            return volumes[mount["name"]], target.relative_to(base)
    raise AssertionError(f"{path} is in no volume of {workload['metadata']['name']}")


def _secret_key(volume: dict[str, Any], below: PurePath) -> tuple[str, str]:
    """The (Secret, key) a file of a secret volume comes from."""
    secret = volume["secret"]
    items = {i["path"]: i["key"] for i in secret.get("items", [])}
    key = items[str(below)] if items else str(below)
    return secret["secretName"], key


def test_agent_port_pairs(central: Objects) -> None:
    """The agent's --listen port is its https container port, the Service's, and --agent-port."""
    agent, agent_settings = _agent(central)
    _, controller = _controller(central)
    port = split_listen(agent_settings.listen)[1]
    assert _ports(agent)["https"] == port
    assert controller.agent_port == Settings().agent_port == port
    default_agent = AgentSettings(insecure_http=True, allowed_identity=[CONTROLLER_IDENTITY])
    assert split_listen(default_agent.listen)[1] == Settings().agent_port
    service = _one(central, "Service", "winspec-agent")
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in ("https", port)
    for probe in ("livenessProbe", "readinessProbe"):
        assert _container(agent)[probe]["httpGet"]["port"] == "https"


def test_agent_selector_selects_the_agent_pods_only(central: Objects, node_local: Objects) -> None:
    """--agent-selector (given and default) selects the agent DaemonSet's pods and no other."""
    agent, _ = _agent(central)
    controller_obj, controller = _controller(central)
    others = [w for w in [*_workloads(central), *_workloads(node_local)] if w is not agent]
    assert others
    for selector in {controller.agent_selector, Settings().agent_selector}:
        assert _selects(selector, _pod_labels(agent)), selector
        for other in others:
            assert not _selects(selector, _pod_labels(other)), other["metadata"]["name"]
    namespace = agent["metadata"]["namespace"]
    assert controller.agent_namespace == Settings().agent_namespace == namespace
    # The controller may list pods there: a Role in that namespace bound to its account.
    account = controller_obj["spec"]["template"]["spec"]["serviceAccountName"]
    roles = {
        o["metadata"]["name"]
        for o in central
        if o["kind"] == "Role"
        and o["metadata"]["namespace"] == namespace
        and any("pods" in r["resources"] and "list" in r["verbs"] for r in o["rules"])
    }
    assert any(
        b["roleRef"]["name"] in roles and _binds(b, namespace, account)
        for b in central
        if b["kind"] == "RoleBinding" and b["metadata"]["namespace"] == namespace
    )


def _binds(binding: dict[str, Any], namespace: str, account: str) -> bool:
    return any(
        s["kind"] == "ServiceAccount" and s["name"] == account and s["namespace"] == namespace
        for s in binding.get("subjects", [])
    )


def _agent_help() -> str:
    """What ``winspec agent --help`` prints."""
    proc = subprocess.run(
        agent_command("--help"), capture_output=True, text=True, timeout=60,
        env={**clean_env(), "COLUMNS": "1000"},  # one line per option: no identity wrapped
        check=True,
    )  # fmt: skip
    return proc.stdout


def test_agent_admits_the_controllers_identity_everywhere(central: Objects) -> None:
    """The agent's --allowed-identity, its help's and the README's examples: the controller's."""
    controller_obj, _ = _controller(central)
    pod = controller_obj["spec"]["template"]["spec"]
    identity = f"system:serviceaccount:{controller_obj['metadata']['namespace']}:"
    identity += pod["serviceAccountName"]
    _one(central, "ServiceAccount", pod["serviceAccountName"])
    _, agent = _agent(central)
    assert agent.allowed_identity == [identity]
    assert identity == CONTROLLER_IDENTITY
    named = set(_IDENTITY.findall(" ".join(_agent_help().split())))
    assert named == {identity}
    (readme_agent,) = (c for c in WINDOWS_ONLY if c.startswith("winspec agent "))
    words = shlex.split(readme_agent)
    assert words[words.index("--allowed-identity") + 1] == identity


def test_token_audience_and_file_pair(central: Objects) -> None:
    """--agent-token-file is the projected token for the audience the agent checks."""
    controller_obj, controller = _controller(central)
    _, agent = _agent(central)
    assert controller.agent_token_file == Settings().agent_token_file
    volume, below = _volume_of(controller_obj, controller.agent_token_file)
    (source,) = volume["projected"]["sources"]
    token = source["serviceAccountToken"]
    assert token["path"] == str(below)
    assert token["audience"] == agent.token_audience == DEFAULT_AUDIENCE


def test_tls_files_and_server_name_pair(central: Objects, monitoring: Objects) -> None:
    """The agent's cert and key, the controller's CA and server name: one Secret, one Service."""
    agent_obj, agent = _agent(central)
    controller_obj, controller = _controller(central)
    assert agent.tls_cert is not None
    assert agent.tls_key is not None
    secret, cert = _secret_key(*_volume_of(agent_obj, agent.tls_cert))
    assert cert == "tls.crt"
    assert _secret_key(*_volume_of(agent_obj, agent.tls_key)) == (secret, "tls.key")
    assert controller.agent_ca_file is not None
    assert _secret_key(*_volume_of(controller_obj, controller.agent_ca_file)) == (
        secret,
        "ca.crt",
    )
    services = [
        s
        for s in central
        if s["kind"] == "Service" and _selects_map(s["spec"]["selector"], _pod_labels(agent_obj))
    ]
    names = {f"{s['metadata']['name']}.{s['metadata']['namespace']}.svc" for s in services}
    assert controller.agent_server_name in names
    monitor = _one(monitoring, "ServiceMonitor", "winspec-agent")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["tlsConfig"]["serverName"] == controller.agent_server_name
    ca = endpoint["tlsConfig"]["ca"]["secret"]
    assert (ca["name"], ca["key"]) == (secret, "ca.crt")


def _selects_map(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", ["central", "node-local"])
def test_daemonset_bundle_root_is_the_hostpath_at_the_same_path(
    overlay: str, central: Objects, node_local: Objects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each DaemonSet's --bundle-root, and the Windows default, is its hostPath's own path."""
    objects = central if overlay == "central" else node_local
    daemonsets = [o for o in objects if o["kind"] == "DaemonSet"]
    assert daemonsets
    monkeypatch.setattr(sys, "platform", "win32")
    windows_default = Settings().bundle_root  # the agent's default too
    monkeypatch.undo()
    for daemonset in daemonsets:
        root = _settings(daemonset).bundle_root
        volume, below = _volume_of(daemonset, root)
        assert str(below) == "."
        flavour = _path_flavour(daemonset)
        assert flavour(volume["hostPath"]["path"]) == flavour(root) == flavour(windows_default)


@pytest.mark.parametrize("overlay", ["central", "node-local"])
def test_services_and_probes_reach_named_ports(
    overlay: str, central: Objects, node_local: Objects
) -> None:
    """Each Service selects pods declaring its target port; probes and --listen use real ports."""
    objects = central if overlay == "central" else node_local
    workloads = list(_workloads(objects))
    for service in (o for o in objects if o["kind"] == "Service"):
        selected = [
            w for w in workloads if _selects_map(service["spec"]["selector"], _pod_labels(w))
        ]
        assert len(selected) == 1, service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in _ports(selected[0]), service["metadata"]["name"]
    for workload in workloads:
        container = _container(workload)
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] in _ports(workload)
        listen = split_listen(_settings(workload).listen)[1]
        assert listen in _ports(workload).values(), workload["metadata"]["name"]


def test_leader_election_lease_is_the_one_rbac_grants(central: Objects) -> None:
    """--leader-election-namespace/-id (given and default) name the Lease the Role grants."""
    controller_obj, controller = _controller(central)
    defaults = Settings()
    assert (controller.leader_election_namespace, controller.leader_election_id) == (
        defaults.leader_election_namespace,
        defaults.leader_election_id,
    )
    account = controller_obj["spec"]["template"]["spec"]["serviceAccountName"]
    namespace = controller.leader_election_namespace
    granted = {
        name
        for role in central
        if role["kind"] == "Role" and role["metadata"]["namespace"] == namespace
        and any(
            b["kind"] == "RoleBinding" and b["roleRef"]["name"] == role["metadata"]["name"]
            and _binds(b, controller_obj["metadata"]["namespace"], account)
            for b in central
        )
        for rule in role["rules"] if "leases" in rule["resources"] and "update" in rule["verbs"]
        for name in rule.get("resourceNames", [])
    }  # fmt: skip
    assert granted == {controller.leader_election_id}


@pytest.mark.parametrize("overlay", ["central", "node-local"])
def test_service_accounts_exist_and_are_bound(
    overlay: str, central: Objects, node_local: Objects
) -> None:
    """Every workload's ServiceAccount is in the overlay and bound to a ClusterRole."""
    objects = central if overlay == "central" else node_local
    for workload in _workloads(objects):
        namespace = workload["metadata"]["namespace"]
        account = workload["spec"]["template"]["spec"]["serviceAccountName"]
        assert _one(objects, "ServiceAccount", account)["metadata"]["namespace"] == namespace
        assert any(
            b["kind"] == "ClusterRoleBinding" and _binds(b, namespace, account) for b in objects
        ), account


def test_service_monitors_select_services_and_their_ports(
    central: Objects, node_local: Objects, monitoring: Objects
) -> None:
    """Each ServiceMonitor selects a shipped Service, and scrapes a port that Service names."""
    services = [o for o in [*central, *node_local] if o["kind"] == "Service"]
    for monitor in (o for o in monitoring if o["kind"] == "ServiceMonitor"):
        selected = [s for s in services if _monitor_selects(monitor, s["metadata"]["labels"])]
        assert selected, monitor["metadata"]["name"]
        for service in selected:
            names = {p["name"] for p in service["spec"]["ports"]}
            for endpoint in monitor["spec"]["endpoints"]:
                assert endpoint["port"] in names, (monitor["metadata"]["name"], names)


def _monitor_selects(monitor: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = monitor["spec"]["selector"]
    if not _selects_map(selector.get("matchLabels", {}), labels):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True
