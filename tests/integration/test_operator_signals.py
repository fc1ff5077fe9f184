"""What an operator reads of a real `winspec run`: the line saying the existing objects were
worked through, failures logged once per key and cause (and when they clear), the objects by
readiness and the standard process series on /metrics. Both modes run as child processes with
JSON logs, against the fixtures' dockerd and kube-apiserver."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.docker.resolver import DEPENDENCY_KINDS as DOCKER_KINDS
from adapters.kubernetes.resolver import DEPENDENCY_KINDS as CLUSTER_KINDS
from adapters.version import version
from tests.clustermode import condition, wc_path, windows_container
from tests.dockerd import DockerDaemon
from tests.integration.winspec_process import WinspecProcess
from tests.kube import KubeCluster
from tests.processes import REPO, clean_env, free_port, http_status, winspec_run_command
from tests.support.waiting import wait_for

FIRST_PASS_DONE = "reconciled the existing resources"
RETRYING = "reconcile failed; retrying with backoff"
RECOVERED = "reconcile succeeded after failing"
#: The series of prometheus-client's default collectors every winspec process exports.
PROCESS_SERIES = (
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "python_gc_objects_collected_total",
    "python_info",
)


def log_records(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON log line of a process so far (anything else skipped)."""
    records = []
    # The last piece has no newline yet: a line the process is still writing (a reader can see
    # part of a write), or nothing.
    *complete, _ = path.read_text(errors="replace").split("\n")
    for line in complete:
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def wait_for_log(
    path: Path, match: Callable[[dict[str, Any]], bool], *, within: float = 60.0
) -> dict[str, Any]:
    """The first log record ``match`` accepts, once the process has written it."""
    try:
        return wait_for(
            lambda: next(filter(match, log_records(path)), None), within, what="the log line"
        )
    except TimeoutError:
        pytest.fail(f"no such log line:\n{path.read_text()[-3000:]}")


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``url``/metrics, by name and sorted labels."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def names(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    """The sample names of a scrape."""
    return {name for name, _ in samples}


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """One sample of a scrape (KeyError when it is not there)."""
    return samples[(name, tuple(sorted(labels.items())))]


def kinds(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    """The ``kind`` label values of winspec_dependency_fetch_seconds in a scrape."""
    return {
        dict(labels)["kind"]
        for name, labels in samples
        if name == "winspec_dependency_fetch_seconds_count"
    }


def assert_process_series(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> None:
    """The standard process series and the build info are in a scrape, with live values."""
    assert set(PROCESS_SERIES) <= names(samples), set(PROCESS_SERIES) - names(samples)
    assert value(samples, "process_resident_memory_bytes") > 10_000_000
    assert value(samples, "process_open_fds") > 0
    assert value(samples, "winspec_build_info", version=version()) == 1


# -- Docker mode -------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_docker_mode_says_when_existing_containers_are_reconciled(
    dockerd: DockerDaemon, tmp_path: Path
) -> None:
    """Docker mode logs its first pass over every container, exports them as ready, no node kind."""
    created = [dockerd.create_container() for _ in range(3)]
    proc = WinspecProcess(dockerd, tmp_path, "--log-format", "json")
    try:
        existing = len(dockerd.call("GET", "/containers/json", query={"all": "1"}))
        proc.start()
        proc.wait_ready()
        done = wait_for_log(proc.log, lambda r: r.get("event") == FIRST_PASS_DONE)
        assert done["level"] == "info"
        assert done["resources"] == existing
        assert done["controller"] == "docker-bundles"
        samples = scrape(proc.url)
        states = {
            state: value(samples, "winspec_resources", controller="docker-bundles", state=state)
            for state in ("ready", "not_ready", "pending")
        }
        assert states["ready"] >= len(created)
        assert states["ready"] + states["not_ready"] == existing
        assert states["pending"] == 0
        assert_process_series(samples)
        # Docker mode's dependency kinds only; no cluster-mode series, not even at zero.
        assert kinds(samples) == set(DOCKER_KINDS)
        assert "winspec_delivery_failures_total" not in names(samples)
        assert "winspec_delivery_agent_missing" not in names(samples)
        assert "leader_election_master_status" not in names(samples)
        assert proc.stop() == 0
    finally:
        proc.close()
        for cid in created:
            dockerd.remove_container(cid)


# -- cluster mode ------------------------------------------------------------------------------


@contextmanager
def cluster_process(kube: KubeCluster, ns: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`winspec run --source kubernetes` for ``ns`` (no election: it starts reconciling at
    once), logging JSON to a file: its URL and log."""
    port = free_port()
    log = tmp_path / "winspec.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            winspec_run_command(
                "--source", "kubernetes", "--kubeconfig", str(kube.admin_kubeconfig),
                "--namespace", ns, "--no-leader-elect", "--bundle-root", str(tmp_path / "b"),
                "--listen", f"127.0.0.1:{port}", "--log-format", "json",
            ),
            cwd=REPO, env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while http_status(f"{url}/readyz") != 200:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "winspec run did not get ready within 60 s"
            time.sleep(0.1)
        yield url, log
    finally:
        proc.terminate()
        proc.wait(timeout=40)


@pytest.mark.kube
@pytest.mark.timeout(180)
def test_cluster_mode_logs_a_missing_configmap_once_and_when_it_clears(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path
) -> None:
    """A missing ConfigMap: one warning while retried, one info line once created; states too."""
    ns = kube_namespace
    count = 12
    for i in range(count - 1):
        kube.api("POST", wc_path(ns), windows_container(f"r{i:02d}"))
    ref = {"configMapName": "settings", "key": "app.json", "target": "C:\\app\\app.json"}
    kube.api("POST", wc_path(ns), windows_container("waits", configs=[ref]))
    key = f"{ns}/waits"
    with cluster_process(kube, ns, tmp_path) as (url, log):
        done = wait_for_log(log, lambda r: r.get("event") == FIRST_PASS_DONE)
        assert (done["resources"], done["failed"]) == (count, 1)
        assert done["controller"] == "windowscontainer-bundles"

        # Retried with backoff for a while: the counters carry the rate, the log one line.
        deadline = time.monotonic() + 30
        while (errors := value(scrape(url), "controller_runtime_reconcile_errors_total",
                               controller="windowscontainer-bundles")) < 8:  # fmt: skip
            assert time.monotonic() < deadline, f"only {errors} retries"
            time.sleep(0.2)
        failures = [r for r in log_records(log) if r.get("key") == key and r["event"] == RETRYING]
        assert len(failures) == 1, failures
        assert failures[0]["level"] == "warning"
        assert "ConfigMap" in failures[0]["error"]
        assert not [r for r in log_records(log) if r["level"] in ("warning", "error")
                    and r not in failures]  # fmt: skip

        samples = scrape(url)
        controller = "windowscontainer-bundles"
        assert (
            value(samples, "winspec_resources", controller=controller, state="ready") == count - 1
        )
        assert value(samples, "winspec_resources", controller=controller, state="not_ready") == 1
        assert value(samples, "winspec_resources", controller=controller, state="pending") == 0
        assert_process_series(samples)
        # Cluster mode's dependency kinds only: none of Docker mode's at zero.
        assert kinds(samples) == set(CLUSTER_KINDS)

        kube.api("POST", f"/api/v1/namespaces/{ns}/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
            "data": {"app.json": "{}"},
        })  # fmt: skip
        recovered = wait_for_log(log, lambda r: r.get("key") == key and r["event"] == RECOVERED)
        assert recovered["level"] == "info"
        assert "ConfigMap" in recovered["previous_error"]
        assert recovered["retries"] >= 8

        def all_ready() -> bool:
            items = kube.api("GET", wc_path(ns))["items"]
            return all((condition(o, "Ready") or {}).get("status") == "True" for o in items)

        deadline = time.monotonic() + 30
        while not all_ready():
            assert time.monotonic() < deadline, "the resources never all became Ready"
            time.sleep(0.2)
        samples = scrape(url)
        assert value(samples, "winspec_resources", controller=controller, state="ready") == count
        assert value(samples, "winspec_resources", controller=controller, state="not_ready") == 0
        # The whole time, one warning for the key: the repeats were at debug level.
        assert [r for r in log_records(log) if r.get("key") == key and r["event"] == RETRYING] == (
            failures
        )
