"""Every metric the alerts and the Grafana dashboard use is one winspec exports: read from the
live /metrics of a real `winspec run --source kubernetes` (leader election on) and a real
`winspec agent` over TLS, both against the fixtures' kube-apiserver."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent import AgentProcess, make_tls
from tests.kube import KubeCluster
from tests.manifests import PROMETHEUS_OWN, metric_names, used_metric_names
from tests.processes import clean_env, free_port, http_status, winspec_run_command
from tests.readme_commands import ROOT

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def exported_names(exposition: str) -> set[str]:
    """Every series name an exposition offers, including families with no sample yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names


def _scrape_controller(kube: KubeCluster, tmp_path: Path) -> str:
    """/metrics of `winspec run --source kubernetes` once it is ready (it leads the Lease)."""
    kube.create_namespace("winspec-system")  # the Lease's namespace
    port = free_port()
    proc = subprocess.Popen(
        winspec_run_command(
            "--source", "kubernetes", "--kubeconfig", str(kube.admin_kubeconfig),
            "--bundle-root", str(tmp_path / "bundles"), "--listen", f"127.0.0.1:{port}",
            "--leader-election-id", f"metrics-{port}", "--log-format", "console",
        ),
        cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while http_status(f"http://127.0.0.1:{port}/readyz") != 200:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "winspec run did not get ready within 60 s"
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())
    finally:
        proc.terminate()
        proc.communicate(timeout=40)


def _scrape_agent(kube: KubeCluster, tmp_path: Path) -> str:
    """/metrics of a ready `winspec agent`, over HTTPS with the test's CA."""
    tls = make_tls(tmp_path / "tls")
    agent = AgentProcess(
        root=tmp_path / "agent-bundles",
        tls=tls,
        kubeconfig=kube.admin_kubeconfig,
        allowed=["system:serviceaccount:winspec-system:winspec"],
        audience="winspec-agent",
    )
    agent.start()
    try:
        with urllib.request.urlopen(
            agent.url.replace("127.0.0.1", "localhost") + "/metrics",
            context=tls.client_context(),
            timeout=10,
        ) as response:
            return str(response.read().decode())
    finally:
        agent.stop()


#: What both processes export beside their own series: prometheus-client's default collectors
#: and the build info (the dashboard's memory, CPU and version per pod).
STANDARD_SERIES = {
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "python_gc_objects_collected_total",
    "python_gc_collections_total",
    "python_info",
    "winspec_build_info",
}


def _sampled(exposition: str) -> set[str]:
    """The series names that have a sample (not only a family declared)."""
    return {s.name for f in text_string_to_metric_families(exposition) for s in f.samples}


@pytest.mark.kube
@pytest.mark.timeout(180)
def test_alerts_and_dashboard_use_only_exported_metrics(kube: KubeCluster, tmp_path: Path) -> None:
    """Each metric name in the PrometheusRule and the dashboard is on a live winspec /metrics."""
    controller = _scrape_controller(kube, tmp_path)
    agent = _scrape_agent(kube, tmp_path)
    # Both processes: the standard series, each with a sample.
    for exposition in (controller, agent):
        assert _sampled(exposition) >= STANDARD_SERIES, STANDARD_SERIES - _sampled(exposition)
    assert "winspec_resources" in _sampled(controller)
    exported = exported_names(controller) | exported_names(agent)
    used = used_metric_names()
    assert len(used) > 10
    missing = {
        name: sorted(where)
        for name, where in used.items()
        if name not in exported and name not in PROMETHEUS_OWN
    }
    assert not missing, f"metrics no winspec process exports: {missing}"
    # The controller leads here, so the leader gauge is a real sample, not only a family.
    assert "leader_election_master_status" in exported


def test_exported_names_cover_families_without_samples() -> None:
    """A labelled counter with no child yet still counts as exported (as name_total)."""
    exposition = (
        "# HELP x_total Xs\n# TYPE x_total counter\n"
        "# HELP h Hs\n# TYPE h histogram\n"
        'h_bucket{le="+Inf"} 1.0\nh_sum 0.5\nh_count 1.0\n'
    )
    assert {"x_total", "h_bucket", "h_sum", "h_count"} <= exported_names(exposition)
    assert "x" not in exported_names(exposition) - {"x_created"}


def test_metric_names_ignore_functions_labels_keywords_and_durations() -> None:
    """Only selected series count: not functions, label names, keywords, durations, variables."""
    expr = (
        'histogram_quantile(0.99, sum by (le, kind) (rate(a_bucket{namespace="$namespace",'
        ' kind=~"x|y"}[5m]))) > on (job) group_left b offset 1h and time() - c_total > 1e3'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c_total"}
