"""The shipped alerts (manifests/monitoring/prometheusrule.yaml) behave as docs/metrics.md says:
``promtool test rules`` runs tests/promtool/alerts_test.yaml (input series, the alerts expected)
against the PrometheusRule's groups written as a Prometheus rule file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.manifests import alert_rules, required_tool
from tests.prometheus import rule_groups
from tests.readme_commands import ROOT

UNIT_TESTS = ROOT / "tests" / "promtool" / "alerts_test.yaml"


def test_every_alert_has_a_promtool_unit_test() -> None:
    """Each alert of the PrometheusRule is evaluated by at least one promtool unit test."""
    tested = {
        case["alertname"]
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert tested == {rule["alert"] for rule in alert_rules() if "alert" in rule}


def test_promtool_unit_tests_of_the_alerts_pass(tmp_path: Path) -> None:
    """``promtool test rules``: every alert fires, with its labels and text, only when it should."""
    promtool = required_tool("promtool")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    proc = subprocess.run(
        [promtool, "test", "rules", UNIT_TESTS.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
