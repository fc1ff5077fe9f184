"""The deployment manifests as tests see them: each kustomization rendered by ``kubectl
kustomize``, the monitoring objects, and the metric names their PromQL uses."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.readme_commands import ROOT

MANIFESTS = ROOT / "manifests"
#: Every kustomization CI builds: the two deployment shapes and the monitoring set.
KUSTOMIZATIONS: tuple[str, ...] = ("overlays/central", "overlays/node-local", "monitoring")
DASHBOARD = MANIFESTS / "monitoring" / "winspec-dashboard.json"
#: Metrics Prometheus itself makes for every scrape target (not winspec's to export).
PROMETHEUS_OWN = frozenset({"up"})

_PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
     "bool", "offset", "inf", "nan"}
)  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# Not inside a number or a duration (5m, 1e3): nothing word-like just before a name.
_IDENT = re.compile(r"(?<![\w:.])[a-zA-Z_:][a-zA-Z0-9_:]*")


def required_tool(name: str) -> str:
    """The path of a command-line tool; skipped without it, a failure with CI=true."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{name} is required when CI=true but is not on PATH")
        pytest.skip(f"{name} is not on PATH")
    return found


def render(kustomization: str) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize manifests/<kustomization>`` prints."""
    proc = subprocess.run(
        [required_tool("kubectl"), "kustomize", str(MANIFESTS / kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of the PrometheusRule in manifests/monitoring."""
    (rule,) = (
        doc
        for doc in yaml.safe_load_all((MANIFESTS / "monitoring/prometheusrule.yaml").read_text())
        if doc and doc["kind"] == "PrometheusRule"
    )
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the Grafana dashboard (panels and template queries)."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        query = variable.get("query", "")
        if variable["type"] == "query" and query.startswith("label_values("):
            # label_values(metric, label): the metric is a name the dashboard needs.
            exprs.append(query.removeprefix("label_values(").split(",")[0])
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = _GROUPING.sub("", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        name = match.group()
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or name.lower() in _PROMQL_WORDS:
            continue  # a function call, or an operator keyword
        if text[: match.start()].rstrip().endswith(("$", ".")):
            continue  # a Grafana variable or a template field
        names.add(name)
    return names


def used_metric_names() -> dict[str, set[str]]:
    """Every metric name the alerts and the dashboard use → where (alert names, panel titles)."""
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule.get('alert', rule.get('record'))}")
    for expr in dashboard_exprs():
        for name in metric_names(expr):
            used.setdefault(name, set()).add("dashboard")
    return used


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each workload's containers, as (``Kind/name``, container)."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "DaemonSet"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                yield f"{obj['kind']}/{obj['metadata']['name']}", container
