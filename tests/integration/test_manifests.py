"""The deployment manifests: every kustomization builds, every object validates against the
Kubernetes schemas (kubernetes-validate, offline) or, for the Prometheus Operator's kinds, a
structural schema, the alert expressions parse with promtool, the workloads use only flags
winspec has, and the objects whose API exists in Kubernetes 1.20 pass a server-side dry-run
apply on the fixtures' real kube-apiserver."""

from __future__ import annotations

import copy
import shlex
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from adapters.agent.settings import load_agent_settings
from adapters.cli import _build_parser
from controller.settings import load_settings
from tests.agent import AgentProcess, make_tls
from tests.kube import KubeAPIError, KubeCluster
from tests.manifests import (
    DASHBOARD,
    KUSTOMIZATIONS,
    MANIFESTS,
    alert_rules,
    containers,
    metric_names,
    render,
    required_tool,
)
from tests.readme_commands import ROOT, RUN_MANIFESTS

_DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"}
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STRMAP},
}
#: The fields of monitoring.coreos.com/v1 these manifests use, as the operator's CRDs define
#: them (a subset: anything else, or a misspelt field, is refused).
_SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "tlsConfig": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "serverName": {"type": "string"},
                                    "insecureSkipVerify": {"type": "boolean"},
                                    "ca": {
                                        "type": "object",
                                        "properties": {
                                            "secret": {
                                                "type": "object",
                                                "required": ["name", "key"],
                                                "additionalProperties": False,
                                                "properties": {
                                                    "name": {"type": "string"},
                                                    "key": {"type": "string"},
                                                },
                                            }
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
_PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["expr"],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": _DURATION,
                                        "labels": _STRMAP,
                                        "annotations": _STRMAP,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}
_OPERATOR_SCHEMAS = {"ServiceMonitor": _SERVICE_MONITOR, "PrometheusRule": _PROMETHEUS_RULE}
_FIELD_MANAGER = "winspec-manifest-tests"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every kustomization, rendered once for the module."""
    return {name: render(name) for name in KUSTOMIZATIONS}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomization_builds(kustomization: str) -> None:
    """`kubectl kustomize` of the kustomization succeeds and yields named objects."""
    objects = render(kustomization)
    assert objects
    assert all(obj["metadata"]["name"] for obj in objects)


def test_central_overlay_has_the_deployment_shape(rendered: dict[str, Any]) -> None:
    """Central: 2 probed non-root controller replicas, a PDB, and a Windows agent DaemonSet."""
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in rendered["overlays/central"]}
    deployment = by_kind["Deployment", "winspec-controller"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--leader-elect" in container["args"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Not /readyz: only the leader is ready there, so rollouts and drains would stall.
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["limits"]["memory"]
    assert by_kind["PodDisruptionBudget", "winspec-controller"]["spec"]["minAvailable"] == 1
    agent = by_kind["DaemonSet", "winspec-agent"]["spec"]["template"]["spec"]
    assert agent["nodeSelector"] == {"kubernetes.io/os": "windows"}
    assert any("hostPath" in v for v in agent["volumes"])
    assert ("Service", "winspec-agent") in by_kind


def test_node_local_overlay_is_the_daemonset_alone(rendered: dict[str, Any]) -> None:
    """Node-local: no Deployment, no agent; one Windows DaemonSet with the downward-API node."""
    objects = rendered["overlays/node-local"]
    workloads = [o for o in objects if o["kind"] in ("Deployment", "DaemonSet")]
    assert [(o["kind"], o["metadata"]["name"]) for o in workloads] == [
        ("DaemonSet", "winspec-node")
    ]
    pod = workloads[0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "windows"}
    assert "--node-name=$(NODE_NAME)" in container["args"]
    assert "--no-leader-elect" in container["args"]
    (env,) = container["env"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_validates_against_its_schema(
    kustomization: str, rendered: dict[str, Any]
) -> None:
    """Kubernetes kinds pass kubernetes-validate (strict), operator kinds a structural schema."""
    version = kubernetes_validate.latest_version()
    for obj in rendered[kustomization]:
        if obj["kind"] in _OPERATOR_SCHEMAS:
            jsonschema.validate(obj, _OPERATOR_SCHEMAS[obj["kind"]])
        else:
            kubernetes_validate.validate(obj, version, strict=True)


def test_kubernetes_validate_refuses_a_broken_object(rendered: dict[str, Any]) -> None:
    """The validation above can fail: a misspelt field and a wrongly typed one are refused."""
    version = kubernetes_validate.latest_version()
    deployment = next(o for o in rendered["overlays/central"] if o["kind"] == "Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, version, strict=True)
    mistyped = copy.deepcopy(deployment)
    mistyped["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(mistyped, version, strict=True)
    rule = next(o for o in rendered["monitoring"] if o["kind"] == "PrometheusRule")
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][0]["rules"][0]["fro"] = "5m"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _PROMETHEUS_RULE)


def test_kubernetes_validate_ships_its_schemas() -> None:
    """kubernetes-validate works offline: the schemas it validates with are in the package."""
    package = Path(kubernetes_validate.__file__).parent
    version = kubernetes_validate.latest_version()
    assert (package / "kubernetes-json-schema" / f"v{version}-local-strict").is_dir()


@pytest.mark.parametrize("kustomization", ["overlays/central", "overlays/node-local"])
def test_workloads_use_only_flags_winspec_has(kustomization: str, rendered: dict[str, Any]) -> None:
    """Each container's args parse with winspec's own parser into valid settings."""
    seen = 0
    for where, container in containers(rendered[kustomization]):
        args = [a.replace("$(NODE_NAME)", "win-node-1") for a in container["args"]]
        parsed = _build_parser().parse_args(args)
        flags = {k: v for k, v in vars(parsed).items() if k not in ("command", "config")}
        if parsed.command == "agent":
            agent = load_agent_settings({k: v for k, v in flags.items() if v is not None})
            assert agent.allowed_identity, where
            assert agent.tls_cert, where  # TLS on, never --insecure-http
        else:
            assert parsed.command == "run", where
            settings = load_settings(flags, origins=("flag",))
            assert settings.source == "kubernetes", where
        seen += 1
    assert seen


def test_agent_allows_exactly_the_controller_service_account(rendered: dict[str, Any]) -> None:
    """The agent's --allowed-identity is the controller Deployment's ServiceAccount."""
    objects = rendered["overlays/central"]
    controller = next(o for o in objects if o["kind"] == "Deployment")
    account = controller["spec"]["template"]["spec"]["serviceAccountName"]
    namespace = controller["metadata"]["namespace"]
    _, agent = next(c for c in containers(objects) if c[0] == "DaemonSet/winspec-agent")
    allowed = [a.split("=", 1)[1] for a in agent["args"] if a.startswith("--allowed-identity=")]
    assert allowed == [f"system:serviceaccount:{namespace}:{account}"]


def test_promtool_accepts_the_alert_rules(tmp_path: Path) -> None:
    """`promtool check rules` parses every alert of the PrometheusRule."""
    promtool = required_tool("promtool")
    (rule,) = (
        doc
        for doc in yaml.safe_load_all((MANIFESTS / "monitoring/prometheusrule.yaml").read_text())
        if doc
    )
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in proc.stdout


def test_promtool_refuses_a_broken_expression(tmp_path: Path) -> None:
    """The promtool check can fail: an unbalanced expression is refused."""
    promtool = required_tool("promtool")
    rules_file = tmp_path / "rules.yaml"
    broken = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "sum(rate(x[5m])"}]}]}
    rules_file.write_text(yaml.safe_dump(broken))
    proc = subprocess.run(
        [promtool, "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0


def test_dashboard_panels_fit_the_grid_without_overlap() -> None:
    """Every dashboard panel has a unique id, a query, and a place in the 24-column grid."""
    import json

    board = json.loads(DASHBOARD.read_text())
    cells: set[tuple[int, int]] = set()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert metric_names(target["expr"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


# --- server-side dry-run on the real kube-apiserver (v1.20) ---------------------------------


def _served(kube: KubeCluster, api_version: str) -> dict[str, dict[str, Any]]:
    """The kinds an API group version serves on the server → their resource entry; {} if none."""
    path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    try:
        listing = kube.api("GET", path)
    except KubeAPIError:
        return {}
    return {r["kind"]: r for r in listing["resources"] if "/" not in r["name"]}


def _object_path(obj: dict[str, Any], resource: dict[str, Any]) -> str:
    """The URL path of one object (namespaced or cluster-scoped)."""
    api_version = obj["apiVersion"]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if resource["namespaced"]:
        base += f"/namespaces/{obj['metadata']['namespace']}"
    return f"{base}/{resource['name']}/{obj['metadata']['name']}"


def _dry_run_apply(kube: KubeCluster, obj: dict[str, Any], resource: dict[str, Any]) -> Any:
    """A server-side apply with dryRun=All: validated and admitted, never stored."""
    query = f"?dryRun=All&fieldManager={_FIELD_MANAGER}&force=true"
    return kube.api(
        "PATCH",
        _object_path(obj, resource) + query,
        obj,
        content_type="application/apply-patch+yaml",
    )


@pytest.mark.kube
@pytest.mark.parametrize("kustomization", ["overlays/central", "overlays/node-local"])
def test_overlay_passes_a_server_side_dry_run(
    kustomization: str, rendered: dict[str, Any], kube: KubeCluster
) -> None:
    """Every object of the overlay passes a dry-run apply on kube-apiserver 1.20."""
    # policy/v1 PodDisruptionBudget is not served by 1.20 (added in 1.21; policy/v1beta1 is
    # removed in 1.25): its spec is dry-run as policy/v1beta1 there, the fields used being the
    # same in both. Nothing else may be skipped.
    # The namespaced objects' dry-run needs their namespace to exist (a dry-run create of the
    # Namespace stores nothing).
    kube.create_namespace("winspec-system")
    applied = []
    for obj in rendered[kustomization]:
        kinds = _served(kube, obj["apiVersion"])
        target = obj
        if obj["kind"] not in kinds and obj["apiVersion"] == "policy/v1":
            target = {**obj, "apiVersion": "policy/v1beta1"}
            kinds = _served(kube, target["apiVersion"])
        assert obj["kind"] in kinds, f"{obj['apiVersion']} {obj['kind']} not served by 1.20"
        result = _dry_run_apply(kube, target, kinds[obj["kind"]])
        assert result["metadata"]["name"] == obj["metadata"]["name"]
        applied.append(obj["kind"])
    assert "DaemonSet" in applied
    # Dry-run stored nothing.
    daemonset = next(o for o in rendered[kustomization] if o["kind"] == "DaemonSet")
    name = daemonset["metadata"]["name"]
    kube.api("GET", f"/apis/apps/v1/namespaces/winspec-system/daemonsets/{name}", expect=(404,))


@pytest.mark.kube
def test_server_dry_run_refuses_an_invalid_object(
    rendered: dict[str, Any], kube: KubeCluster
) -> None:
    """The dry-run check can fail: the server refuses a DaemonSet whose selector misses its pods."""
    kube.create_namespace("winspec-system")
    daemonset = copy.deepcopy(
        next(o for o in rendered["overlays/node-local"] if o["kind"] == "DaemonSet")
    )
    daemonset["spec"]["selector"]["matchLabels"] = {"app": "something-else"}
    resource = _served(kube, "apps/v1")["DaemonSet"]
    with pytest.raises(KubeAPIError):
        _dry_run_apply(kube, daemonset, resource)


@pytest.mark.kube
def test_monitoring_kinds_are_not_dry_run_on_1_20(kube: KubeCluster) -> None:
    """monitoring.coreos.com is a Prometheus Operator CRD, not served by a bare API server."""
    assert _served(kube, "monitoring.coreos.com/v1") == {}


def _dockerfile_lines(path: Path) -> list[str]:
    """The instructions of a Dockerfile, comments dropped."""
    return [
        line.strip() for line in path.read_text().splitlines() if line.strip()[:1] not in ("#", "")
    ]


def test_controller_image_user_is_the_deployments_non_root_user(
    rendered: dict[str, Any],
) -> None:
    """The Linux image runs as the numeric non-root user the Deployment's securityContext names."""
    lines = _dockerfile_lines(MANIFESTS / "images/controller.Dockerfile")
    (user,) = (line.split()[1] for line in lines if line.startswith("USER "))
    deployment = next(o for o in rendered["overlays/central"] if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert user == f"{pod['runAsUser']}:{pod['runAsGroup']}"
    assert pod["runAsUser"] != 0
    assert 'ENTRYPOINT ["winspec"]' in lines


def test_windows_image_is_the_one_the_windows_workloads_run(rendered: dict[str, Any]) -> None:
    """The Windows workloads run the image whose entry point is winspec (manifests/swarm)."""
    lines = _dockerfile_lines(MANIFESTS / "swarm/Dockerfile")
    assert 'ENTRYPOINT ["winspec"]' in lines
    images = {
        c["image"]
        for name in ("overlays/central", "overlays/node-local")
        for where, c in containers(rendered[name])
        if where.startswith("DaemonSet/")
    }
    assert images == {"winspec-windows:0.2.0"}


@pytest.mark.parametrize(
    "command", [c for c in RUN_MANIFESTS if c.startswith("kubectl kustomize ")]
)
def test_readme_kustomize_command_prints_the_rendered_objects(command: str) -> None:
    """The README's `kubectl kustomize` command exits 0 and prints the objects the tests check."""
    words = shlex.split(command)
    proc = subprocess.run(
        [required_tool("kubectl"), *words[1:]],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    printed = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    assert printed == render(words[2].removeprefix("manifests/"))


@pytest.mark.kube
def test_readme_apply_of_node_local_passes_a_server_dry_run(kube: KubeCluster) -> None:
    """The README's `kubectl apply -k` of node-local succeeds with --dry-run=server on 1.20."""
    (command,) = (c for c in RUN_MANIFESTS if c.startswith("kubectl apply "))
    words = shlex.split(command)
    kube.create_namespace("winspec-system")
    proc = subprocess.run(
        [required_tool("kubectl"), *words[1:], "--dry-run=server"],
        cwd=ROOT, env=kube.kubectl_env(),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "daemonset.apps/winspec-node" in proc.stdout
    assert "(server dry run)" in proc.stdout


def _audience_token(kube: KubeCluster, namespace: str, name: str, audience: str) -> str:
    """A token of an existing ServiceAccount issued for ``audience`` (TokenRequest API)."""
    issued = kube.api(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600, "audiences": [audience]},
        },
    )
    token: str = issued["status"]["token"]
    return token


def _list_bundles(agent: AgentProcess, token: str) -> int:
    """The status of the agent's GET /v1/bundles with ``token``."""
    request = urllib.request.Request(
        agent.url.replace("127.0.0.1", "localhost") + "/v1/bundles",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(
            request, context=agent.tls.client_context(), timeout=30
        ) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_agent_rbac_rule_says_why() -> None:
    """Each rule of the agent's ClusterRole is preceded by a comment justifying it."""
    lines = (MANIFESTS / "base/agent-rbac.yaml").read_text().splitlines()
    rules = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert rules
    for i in rules:
        assert lines[i - 1].strip().startswith("#"), lines[i]


@pytest.mark.kube
@pytest.mark.timeout(120)
def test_agent_as_the_base_account_admits_only_the_controller(
    rendered: dict[str, Any], kube: KubeCluster, tmp_path: Path
) -> None:
    """With the base's RBAC applied, the agent (as winspec-agent) admits winspec, refuses others."""
    base = [o for o in rendered["overlays/central"] if o["kind"] != "CustomResourceDefinition"]
    for obj in base:
        if obj["kind"] in ("Namespace", "ServiceAccount") or "rbac" in obj["apiVersion"]:
            kube.apply(obj)
    _, container = next(c for c in containers(rendered["overlays/central"]) if "agent" in c[0])
    flags = dict(a.removeprefix("--").split("=", 1) for a in container["args"][1:])
    agent = AgentProcess(
        root=tmp_path / "bundles",
        tls=make_tls(tmp_path / "tls"),
        kubeconfig=kube.kubeconfig(kube.service_account_token("winspec-system", "winspec-agent")),
        allowed=[flags["allowed-identity"]],
        audience=flags["token-audience"],
    )
    agent.start()  # ready: its TokenReview access works with exactly the base's rule
    try:
        audience = flags["token-audience"]
        assert (
            _list_bundles(agent, _audience_token(kube, "winspec-system", "winspec", audience))
            == 200
        )
        other = _audience_token(kube, "winspec-system", "winspec-agent", audience)
        assert _list_bundles(agent, other) == 403
    finally:
        agent.stop()
