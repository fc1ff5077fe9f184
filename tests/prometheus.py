"""A real Prometheus server (Debian's ``prometheus`` package, `.ci/install-manifest-checks.sh`)
scraping a test cluster the way the shipped ServiceMonitors (manifests/monitoring) ask.

:func:`scrape_configs` translates each ServiceMonitor endpoint into the scrape configuration the
Prometheus Operator generates for it: Kubernetes discovery of role ``endpoints`` in the
ServiceMonitor's namespace, the Service selector and port name as ``keep`` relabellings, path,
scheme and TLS settings as given, and the targets labelled with ``namespace``, ``pod``,
``service``, ``endpoint`` and ``job`` (the Service's name, the operator's default job label).

Debian builds Prometheus without its Kubernetes discovery (``kubernetes_sd_configs`` is not a
field its configuration knows), so :class:`EndpointsDiscovery` stands in for it: an HTTP
discovery endpoint (``http_sd_configs``) answering from the API server's Endpoints, Services and
Pods with the targets and ``__meta_kubernetes_*`` labels Prometheus's role ``endpoints`` gives;
the relabelling is the real Prometheus's. :class:`Prometheus` runs the server on a loopback port
with its storage in a temporary directory and answers PromQL through the HTTP API.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.kube import KubeCluster
from tests.manifests import MANIFESTS, required_tool
from tests.processes import free_port
from tests.support.processes import log_tail, terminate
from tests.support.waiting import wait_for

SERVICE_MONITORS = MANIFESTS / "monitoring" / "servicemonitor.yaml"
PROMETHEUS_RULE = MANIFESTS / "monitoring" / "prometheusrule.yaml"


def service_monitors() -> list[dict[str, Any]]:
    """The shipped ServiceMonitor objects."""
    return [
        doc
        for doc in yaml.safe_load_all(SERVICE_MONITORS.read_text())
        if doc and doc["kind"] == "ServiceMonitor"
    ]


def _label_name(key: str) -> str:
    """A Kubernetes label key as Prometheus's service discovery spells it in a meta label."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def _selector_relabelings(selector: dict[str, Any]) -> list[dict[str, Any]]:
    """``keep`` relabellings for a label selector on the Service (what the operator writes)."""
    rules: list[dict[str, Any]] = []

    def keep(key: str, regex: str) -> None:
        name = _label_name(key)
        rules.append({
            "action": "keep",
            "source_labels": [f"__meta_kubernetes_service_label_{name}",
                              f"__meta_kubernetes_service_labelpresent_{name}"],
            "regex": f"({regex});true",
        })  # fmt: skip

    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        keep(key, re.escape(value))
    for expression in selector.get("matchExpressions") or []:
        if expression["operator"] != "In":
            raise ValueError(f"selector operator {expression['operator']} is not translated")
        keep(expression["key"], "|".join(re.escape(v) for v in expression["values"]))
    return rules


def scrape_configs(
    monitors: Iterable[dict[str, Any]],
    *,
    discovery: str,
    secret_file: Callable[[str, str, str], Path],
    interval: str,
) -> list[dict[str, Any]]:
    """The scrape configuration of every ServiceMonitor endpoint, discovering targets from
    :class:`EndpointsDiscovery` at ``discovery``. ``secret_file(namespace, secret, key)`` writes
    a Secret key a tlsConfig names to a file and returns its path. Every endpoint is scraped
    (and discovery refreshed) every ``interval`` instead of the ServiceMonitor's own."""
    configs = []
    for monitor in monitors:
        meta, spec = monitor["metadata"], monitor["spec"]
        namespace = meta["namespace"]
        for index, endpoint in enumerate(spec["endpoints"]):
            relabel = _selector_relabelings(spec["selector"])
            relabel += [
                {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"],
                 "regex": re.escape(endpoint["port"])},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_pod_container_name"],
                 "target_label": "container"},
                {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
                {"target_label": "endpoint", "replacement": endpoint["port"]},
            ]  # fmt: skip
            config: dict[str, Any] = {
                "job_name": f"serviceMonitor/{namespace}/{meta['name']}/{index}",
                "scrape_interval": interval,
                "metrics_path": endpoint.get("path", "/metrics"),
                "scheme": endpoint.get("scheme", "http"),
                # A real Prometheus: kubernetes_sd_configs, role endpoints, namespaces [namespace].
                "http_sd_configs": [{"url": f"{discovery}/{namespace}",
                                     "refresh_interval": interval}],
                "relabel_configs": relabel,
            }  # fmt: skip
            tls = endpoint.get("tlsConfig")
            if tls:
                tls_config: dict[str, Any] = {}
                if "serverName" in tls:
                    tls_config["server_name"] = tls["serverName"]
                if "ca" in tls:
                    ref = tls["ca"]["secret"]
                    tls_config["ca_file"] = str(secret_file(namespace, ref["name"], ref["key"]))
                unknown = set(tls) - {"serverName", "ca"}
                if unknown:
                    raise ValueError(f"tlsConfig fields not translated: {sorted(unknown)}")
                config["tls_config"] = tls_config
            configs.append(config)
    return configs


def _meta(prefix: str, labels: dict[str, str]) -> dict[str, str]:
    """Kubernetes labels as discovery meta labels: ``<prefix>_label_<name>`` and
    ``<prefix>_labelpresent_<name>``."""
    meta = {}
    for key, value in labels.items():
        meta[f"{prefix}_label_{_label_name(key)}"] = value
        meta[f"{prefix}_labelpresent_{_label_name(key)}"] = "true"
    return meta


def endpoints_targets(kube: KubeCluster, namespace: str) -> list[dict[str, Any]]:
    """The target groups Prometheus's Kubernetes discovery (role ``endpoints``) makes of a
    namespace's Endpoints: one target per address and port, ready or not, with the Service's
    labels and the pod's name, node and the container that declares the port."""
    base = f"/api/v1/namespaces/{namespace}"
    services = {s["metadata"]["name"]: s for s in kube.api("GET", f"{base}/services")["items"]}
    pods = {p["metadata"]["name"]: p for p in kube.api("GET", f"{base}/pods")["items"]}
    groups = []
    for endpoints in kube.api("GET", f"{base}/endpoints")["items"]:
        name = endpoints["metadata"]["name"]
        common = {
            "__meta_kubernetes_namespace": namespace,
            "__meta_kubernetes_endpoints_name": name,
            **_meta("__meta_kubernetes_endpoints", endpoints["metadata"].get("labels") or {}),
        }
        service = services.get(name)
        if service is not None:
            common["__meta_kubernetes_service_name"] = name
            common.update(_meta("__meta_kubernetes_service",
                                service["metadata"].get("labels") or {}))  # fmt: skip
        for subset in endpoints.get("subsets") or []:
            addresses = [(a, "true") for a in subset.get("addresses") or []]
            addresses += [(a, "false") for a in subset.get("notReadyAddresses") or []]
            for address, ready in addresses:
                for port in subset.get("ports") or []:
                    labels = {
                        **common,
                        "__meta_kubernetes_endpoint_port_name": port.get("name", ""),
                        "__meta_kubernetes_endpoint_port_protocol": port.get("protocol", "TCP"),
                        "__meta_kubernetes_endpoint_ready": ready,
                    }
                    target = address.get("targetRef") or {}
                    if target:
                        labels["__meta_kubernetes_endpoint_address_target_kind"] = target["kind"]
                        labels["__meta_kubernetes_endpoint_address_target_name"] = target["name"]
                    if address.get("nodeName"):
                        labels["__meta_kubernetes_endpoint_node_name"] = address["nodeName"]
                    pod = pods.get(target.get("name", "")) if target.get("kind") == "Pod" else None
                    if pod is not None:
                        labels["__meta_kubernetes_pod_name"] = pod["metadata"]["name"]
                        labels["__meta_kubernetes_pod_ip"] = pod["status"].get("podIP", "")
                        labels["__meta_kubernetes_pod_node_name"] = pod["spec"].get("nodeName", "")
                        labels.update(_meta("__meta_kubernetes_pod",
                                            pod["metadata"].get("labels") or {}))  # fmt: skip
                        for container in pod["spec"]["containers"]:
                            for declared in container.get("ports") or []:
                                if declared["containerPort"] == port["port"]:
                                    labels["__meta_kubernetes_pod_container_name"] = container[
                                        "name"
                                    ]
                                    labels["__meta_kubernetes_pod_container_port_name"] = (
                                        declared.get("name", "")
                                    )
                    groups.append({"targets": [f"{address['ip']}:{port['port']}"],
                                   "labels": labels})  # fmt: skip
    return groups


class EndpointsDiscovery:
    """An HTTP discovery endpoint on a loopback port: ``GET /<namespace>`` answers
    :func:`endpoints_targets` of that namespace, read from the API server on each request
    (as its admin: a real Prometheus has a ServiceAccount that may list endpoints, services
    and pods)."""

    def __init__(self, kube: KubeCluster) -> None:
        discovery = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    body = json.dumps(endpoints_targets(kube, self.path.strip("/"))).encode()
                except Exception as exc:  # answered as an error; Prometheus keeps the last list
                    discovery.errors.append(repr(exc))
                    self.send_error(500, repr(exc))
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.errors: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> EndpointsDiscovery:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def rule_groups(for_overrides: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The shipped PrometheusRule's groups as a Prometheus rule file has them; an alert named
    in ``for_overrides`` gets that ``for:`` instead (a test copy, for a short scenario)."""
    (rule,) = (
        doc
        for doc in yaml.safe_load_all(PROMETHEUS_RULE.read_text())
        if doc and doc["kind"] == "PrometheusRule"
    )
    groups: list[dict[str, Any]] = copy.deepcopy(rule["spec"]["groups"])
    overrides = dict(for_overrides or {})
    for group in groups:
        for item in group["rules"]:
            if item.get("alert") in overrides:
                item["for"] = overrides.pop(item["alert"])
    if overrides:
        raise ValueError(f"no such alerts: {sorted(overrides)}")
    return groups


class Prometheus:
    """One Prometheus server on a loopback port, its storage and configuration in ``work``."""

    def __init__(
        self,
        work: Path,
        scrape: list[dict[str, Any]],
        rules: list[dict[str, Any]],
        *,
        evaluation_interval: str,
    ) -> None:
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (work / "rules.yaml").write_text(yaml.safe_dump({"groups": rules}))
        self.config = {
            "global": {"evaluation_interval": evaluation_interval},
            "rule_files": [str(work / "rules.yaml")],
            "scrape_configs": scrape,
        }
        (work / "prometheus.yaml").write_text(yaml.safe_dump(self.config))
        self.log = work / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        """Start the server and wait until it answers ready."""
        argv = [
            required_tool("prometheus"),
            f"--config.file={self.work / 'prometheus.yaml'}",
            f"--storage.tsdb.path={self.work / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
        ]
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.started_at = time.time()

        def ready() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        wait_for(ready, 60, interval=0.5, what="prometheus ready")

    def stop(self) -> None:
        """Stop the server."""
        if self._proc is not None:
            terminate(self._proc, 15)
            self._proc = None

    def tail(self, lines: int = 20) -> str:
        """The end of the server's log, for a failure message."""
        return log_tail(self.log, lines)

    def api(self, path: str, **params: str | float) -> Any:
        """``GET /api/v1/<path>?<params>``: the answer's ``data``."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The series of an instant query now."""
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """The series of a range query."""
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets."""
        active: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return active

    def firing(self) -> set[str]:
        """The names of the alerts firing now."""
        return {a["labels"]["alertname"] for a in self.api("alerts")["alerts"]
                if a["state"] == "firing"}  # fmt: skip

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule, with its health."""
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]
