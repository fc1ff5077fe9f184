"""The scrape configuration tests/prometheus.py generates from the shipped ServiceMonitors is one
Prometheus accepts, and keeps exactly the Services and ports the ServiceMonitors select (the
one-node cluster test, tests/integration/test_cluster_node.py, scrapes with it)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.manifests import required_tool
from tests.prometheus import Prometheus, rule_groups, scrape_configs, service_monitors


def test_generated_configuration_passes_promtool_check_config(tmp_path: Path) -> None:
    """``promtool check config`` accepts the generated configuration and the rules' test copy."""
    promtool = required_tool("promtool")

    def secret_file(namespace: str, name: str, key: str) -> Path:
        path = tmp_path / f"{namespace}-{name}-{key}"
        path.write_text("")
        return path

    scrape = scrape_configs(service_monitors(), discovery="http://127.0.0.1:9",
                            secret_file=secret_file, interval="2s")  # fmt: skip
    Prometheus(tmp_path, scrape, rule_groups({"WinspecAgentDown": "4s"}), evaluation_interval="1s")
    proc = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8 rules found" in proc.stdout


def test_relabelling_keeps_what_each_servicemonitor_selects() -> None:
    """Each endpoint keeps its selector's Service labels and its port name, as the operator does."""
    monitors = service_monitors()
    scrape = scrape_configs(monitors, discovery="http://127.0.0.1:9",
                            secret_file=lambda ns, name, key: Path(f"/{ns}/{name}/{key}"),
                            interval="2s")  # fmt: skip
    assert [c["job_name"] for c in scrape] == [
        f"serviceMonitor/winspec-system/{m['metadata']['name']}/0" for m in monitors
    ]
    for config, monitor in zip(scrape, monitors, strict=True):
        keeps = {
            tuple(r["source_labels"]): r["regex"]
            for r in config["relabel_configs"]
            if r.get("action") == "keep"
        }
        selector = monitor["spec"]["selector"]
        terms = {**(selector.get("matchLabels") or {})}
        for expression in selector.get("matchExpressions") or []:
            terms[expression["key"]] = "|".join(expression["values"])
        for key, values in terms.items():
            name = re.sub(r"[^a-zA-Z0-9_]", "_", key)
            regex = keeps.pop((f"__meta_kubernetes_service_label_{name}",
                               f"__meta_kubernetes_service_labelpresent_{name}"))  # fmt: skip
            assert re.fullmatch(regex, f"{values.split('|')[0]};true")
            assert not re.fullmatch(regex, "other;true")
        endpoint = monitor["spec"]["endpoints"][0]
        assert keeps == {("__meta_kubernetes_endpoint_port_name",): endpoint["port"]}
        assert config["metrics_path"] == endpoint["path"]
        assert config["scheme"] == endpoint.get("scheme", "http")
        targets = {r["target_label"]: r.get("source_labels") for r in config["relabel_configs"]
                   if "target_label" in r}  # fmt: skip
        assert targets["namespace"] == ["__meta_kubernetes_namespace"]
        assert targets["pod"] == ["__meta_kubernetes_pod_name"]
        assert targets["job"] == ["__meta_kubernetes_service_name"]
    agent = scrape[1]
    assert agent["tls_config"] == {
        "server_name": "winspec-agent.winspec-system.svc",
        "ca_file": "/winspec-system/winspec-agent-tls/ca.crt",
    }
