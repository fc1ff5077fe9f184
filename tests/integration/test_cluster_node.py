"""The central shape as users deploy it, on a real one-node cluster (tests/node.py): the
controller image (built by the README's commands) imported with ``docker save``, the Secret
winspec-agent-tls created with kubectl as the agent's manifest asks, then ``kubectl apply -k``
of manifests/overlays/test-central: the central overlay exactly as shipped except for what a
Linux node without a registry needs (its comment says what). The agent DaemonSet runs
``winspec agent`` from the same Linux image, standing in for the Windows one, with its bundle
root a hostPath on the node.

The WindowsContainers are made here in the README's shape; the node is labelled with the
Windows build a Windows kubelet would label it with. Throughout the module a thread reads every
bundle on the node's hostPath (tests/bundlewatch.py): no read may ever find one torn, and each
Ready resource's status digest is the one its bundle on the node has. Across each failover,
every bundle's version on the node and the agent's count of bundles written
(``winspec_agent_bundles_total{result="written"}``, read from its /metrics) say that nothing was
written twice: the new leader's first pass over every resource rewrote none that was current.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent import make_tls
from tests.bundlewatch import TreeWatch, Version
from tests.clustermode import secret, wc_path
from tests.dashboard_picture import panel_queries, variables
from tests.images import IMAGE, Built
from tests.kube import KubeAPIError
from tests.manifests import DASHBOARD, MANIFESTS
from tests.node import KubeNode
from tests.nodedeploy import (
    NAMESPACE,
    NODE_BUNDLES,
    START_TIMEOUT,
    Deployed,
    command_line,
    create_on_node,
    mounted_payloads,
    new_namespace,
    node_bundle,
    prepare,
    ready_on_node,
    wait_or_fail,
)
from tests.prometheus import (
    EndpointsDiscovery,
    Prometheus,
    rule_groups,
    scrape_configs,
    service_monitors,
)
from tests.readme_commands import DASHBOARD_PICTURE, ROOT, RUN_EXAMPLE, argv
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.node, pytest.mark.kube, pytest.mark.docker, pytest.mark.timeout(600)]

OVERLAY = MANIFESTS / "overlays" / "test-central"
CONTROLLER = "app.kubernetes.io/name=winspec,app.kubernetes.io/component=controller"
AGENT = "app.kubernetes.io/name=winspec,app.kubernetes.io/component=agent"
#: The tag a rolling update moves the controller to.
NEW_IMAGE = "winspec-controller:0.1.1"
#: The controller's --lease-duration (the shipped Deployment keeps the default).
LEASE_DURATION = 15.0
#: WinspecAgentDown's ``for:`` in the test copy of the rules (the shipped one says 5m).
AGENT_DOWN_FOR = "4s"
#: Where the node test draws the dashboard with its scenario's data (docs/metrics.md).
PICTURE_ENV = "WINSPEC_DASHBOARD_PNG"
#: Resources made Ready on the node before each failover, beside those earlier tests left.
FAILOVER_RESOURCES = 20


@pytest.fixture(scope="module")
def deployed(
    kube_node: KubeNode, controller_image: Built, tmp_path_factory: pytest.TempPathFactory
) -> Deployed:
    """The image imported, the agents' TLS Secret created, the test overlay applied, and
    both controller replicas and the agent Running and Ready."""
    work = tmp_path_factory.mktemp("central")
    deployed = prepare(kube_node, controller_image, work)
    tls = make_tls(work / "tls", f"DNS:winspec-agent.{NAMESPACE}.svc,DNS:{kube_node.name}")
    deployed.kubectl(
        "create", "secret", "generic", "winspec-agent-tls", "-n", NAMESPACE,
        f"--from-file=tls.crt={tls.cert}", f"--from-file=tls.key={tls.key}",
        f"--from-file=ca.crt={tls.ca}",
    )  # fmt: skip
    deployed.kubectl("apply", "-k", str(OVERLAY))
    wait_or_fail(deployed, lambda: len(deployed.ready_pods(CONTROLLER)) == 2, START_TIMEOUT,
          "both controller replicas Ready")  # fmt: skip
    wait_or_fail(deployed, lambda: len(deployed.ready_pods(AGENT)) == 1, START_TIMEOUT,
          "the agent Ready")  # fmt: skip
    return deployed


@pytest.fixture(scope="module", autouse=True)
def prometheus(
    deployed: Deployed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """A real Prometheus on the host for the whole module, scraping every 2 s (the shipped
    ServiceMonitors say 30 s) what the shipped ServiceMonitors select, its targets discovered
    from the test API server's Endpoints (tests/prometheus.py: Debian's Prometheus has no
    Kubernetes discovery), and evaluating every 1 s a copy of the shipped rules in which only
    WinspecAgentDown's ``for:`` is shortened (5m to 4s). Started once the controllers and the
    agent are Ready, stopped at the end of the module."""
    work = tmp_path_factory.mktemp("prometheus")
    kube = deployed.kube

    def secret_file(namespace: str, name: str, key: str) -> Path:
        data = kube.api("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")["data"]
        path = work / f"{namespace}-{name}-{key}"
        path.write_bytes(base64.b64decode(data[key]))
        return path

    with EndpointsDiscovery(kube) as discovery:
        scrape = scrape_configs(service_monitors(), discovery=discovery.url,
                                secret_file=secret_file, interval="2s")  # fmt: skip
        rules = rule_groups({"WinspecAgentDown": AGENT_DOWN_FOR})
        server = Prometheus(work, scrape, rules, evaluation_interval="1s")
        server.start()
        try:
            yield server
        finally:
            server.stop()
        assert discovery.errors == []


@pytest.fixture(scope="module")
def node_bundles(deployed: Deployed) -> Iterator[TreeWatch]:
    """A thread reading every bundle on the node's hostPath for the whole module."""
    with TreeWatch(NODE_BUNDLES) as watch:
        yield watch


@pytest.fixture(autouse=True)
def never_torn(node_bundles: TreeWatch) -> Iterator[None]:
    """After each test: no bundle on the node was ever seen torn."""
    yield
    node_bundles.check()
    assert node_bundles.torn == []


@pytest.fixture
def app_namespace(deployed: Deployed) -> str:
    """A fresh namespace for one test's WindowsContainers."""
    return new_namespace(deployed)


def test_two_controller_replicas_run_one_leads_and_the_agent_is_ready(deployed: Deployed) -> None:
    """Both controller replicas run Ready, exactly one holds the Lease, the agent is Ready."""
    controllers = {p["metadata"]["name"] for p in deployed.ready_pods(CONTROLLER)}
    assert len(controllers) == 2
    holder = wait_or_fail(deployed, deployed.leader, 60, "a leader")
    assert holder.rsplit("_", 1)[0] in controllers
    (agent,) = deployed.ready_pods(AGENT)
    assert agent["spec"]["nodeName"] == deployed.node.name
    # What runs is the shipped container, not a test's: the shipped arguments and user.
    (controller_pod, _) = deployed.pods(CONTROLLER)
    container = controller_pod["spec"]["containers"][0]
    assert "--delivery=agent" in container["args"]
    assert controller_pod["spec"]["securityContext"]["runAsUser"] == 10001


def test_prometheus_scrapes_the_controllers_and_agent_the_servicemonitors_select(
    deployed: Deployed, prometheus: Prometheus
) -> None:
    """Prometheus finds both controllers and the agent (HTTPS) through the API and scrapes them."""
    pods = {
        p["metadata"]["name"] for p in deployed.ready_pods(CONTROLLER) + deployed.ready_pods(AGENT)
    }

    def all_up() -> list[dict[str, Any]] | None:
        targets = prometheus.targets()
        up = {t["labels"].get("pod") for t in targets if t["health"] == "up"}
        return targets if pods <= up else None

    try:
        targets = wait_for(all_up, 60, interval=1, what="every winspec pod scraped")
    except TimeoutError as exc:
        pytest.fail(f"{exc}: {prometheus.targets()}\n{prometheus.tail()}")
    by_job = {
        (t["labels"]["job"], t["labels"]["pod"], t["scrapeUrl"].split(":")[0]) for t in targets
    }
    controllers = {p["metadata"]["name"] for p in deployed.ready_pods(CONTROLLER)}
    (agent,) = deployed.ready_pods(AGENT)
    assert by_job == {("winspec-controller-metrics", name, "http") for name in controllers} | {
        ("winspec-agent", agent["metadata"]["name"], "https")
    }
    assert {t["labels"]["namespace"] for t in targets} == {NAMESPACE}
    # Every shipped rule loaded and evaluates without error.
    shipped = {r["alert"] for r in rule_groups()[0]["rules"]}

    def evaluated() -> list[dict[str, Any]] | None:
        rules = prometheus.rules()
        return rules if rules and all(r["health"] == "ok" for r in rules) else None

    loaded = wait_for(evaluated, 30, interval=1, what="every rule evaluated")
    assert {r["name"] for r in loaded} == shipped


def test_windowscontainer_becomes_ready_with_its_bundle_on_the_node(
    deployed: Deployed, node_bundles: TreeWatch, app_namespace: str
) -> None:
    """The README's WindowsContainer is Ready, its bundle and payload on the node, mounts in it."""
    ns = app_namespace
    password = os.urandom(24)
    deployed.kube.api("POST", f"/api/v1/namespaces/{ns}/secrets",
                      secret("db", {"password": password}))  # fmt: skip
    settings = b'{"Logging": {}}'
    deployed.kube.api(
        "POST",
        f"/api/v1/namespaces/{ns}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"},
         "data": {"appsettings.json": settings.decode()}},
    )  # fmt: skip
    create_on_node(
        deployed, ns, "web",
        image={"os": "windows", "argsEscaped": False},
        layerFolders=["C:\\ProgramData\\docker\\windowsfilter\\base",
                      "C:\\ProgramData\\docker\\windowsfilter\\web"],
        command=["C:\\ServiceMonitor.exe"], args=["w3svc"],
        env=[{"name": "ASPNETCORE_URLS", "value": "http://+:80"}],
        resources={"cpuCount": 2, "memory": 1073741824},
        secrets=[{"secretName": "db", "key": "password", "target": "db-password"}],
        configs=[{"configMapName": "web", "key": "appsettings.json",
                  "target": "C:\\app\\appsettings.json"}],
    )  # fmt: skip
    ready_on_node(deployed, ns, "web")
    bundle = node_bundle(ns, "web")
    config = json.loads((bundle / "config.json").read_bytes())
    assert config["ociVersion"] == "1.0.2"
    assert "w3svc" in command_line(ns, "web")
    # The payload directories are mounted from the bundle where it is on the node (Windows
    # mounts directories): the agent's bundle root, as it reports it, and <namespace>\<name>.
    assert mounted_payloads(ns, "web") == {password, settings}
    node_bundles.check()
    assert node_bundles.whole(bundle) > 0


def _samples(url: str, name: str, context: ssl.SSLContext | None = None) -> list[Any]:
    """The samples called ``name`` on the /metrics at ``url``."""
    with urllib.request.urlopen(url, timeout=10, context=context) as answer:
        text = answer.read().decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def _sample(url: str, name: str, context: ssl.SSLContext | None = None, **labels: str) -> float:
    """The one sample called ``name`` with ``labels`` on the /metrics at ``url``."""
    (value,) = [s.value for s in _samples(url, name, context) if labels.items() <= s.labels.items()]
    return float(value)


class FailoverWrites:
    """What is on the node before a failover, to check after it that nothing was written twice:
    every bundle's version (tests/bundlewatch.py) and the agent's count of bundles it wrote,
    read from its /metrics (over HTTPS, the certificate checked against the agents' CA, not
    for its name: it names the Service, the agent is reached at its pod's address)."""

    def __init__(self, deployed: Deployed, watch: TreeWatch) -> None:
        self.deployed = deployed
        self.watch = watch
        (agent,) = deployed.ready_pods(AGENT)
        self.agent_uid = agent["metadata"]["uid"]
        self.agent_metrics = f"https://{agent['status']['podIP']}:8443/metrics"
        secret = f"/api/v1/namespaces/{NAMESPACE}/secrets/winspec-agent-tls"
        ca = base64.b64decode(deployed.kube.api("GET", secret)["data"]["ca.crt"]).decode()
        self.tls = ssl.create_default_context(cadata=ca)
        self.tls.check_hostname = False
        self.before: dict[Path, Version] = watch.snapshot()
        self.written = self.agent_bundles("written")
        self.unchanged = self.agent_bundles("unchanged")

    def agent_bundles(self, result: str) -> float:
        """Uploads the agent has answered with ``result``: ``written`` (a write on disk; a
        removal is not one) or ``unchanged`` (the bundle on disk was current)."""
        return _sample(self.agent_metrics, "winspec_agent_bundles_total", self.tls, result=result)

    def check(self, new_leader: str, changed: set[Path]) -> str:
        """Once the new leader has reconciled every resource there is: the bundles in
        ``changed`` (changed or created during the failover, once each) are each at a new
        version, every other one at the version it had before, and the agent wrote exactly
        one bundle per change. What was measured, as a sentence."""
        # The lease can change hands before the kubelet has reported the new leader's address.
        ip = wait_for(
            lambda: (
                self.deployed.kube.api("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{new_leader}")
                .get("status", {})
                .get("podIP")
            ),
            within=60,
            what=f"an address for {new_leader}",
        )
        url = f"http://{ip}:8080/metrics"
        items = self.deployed.kube.api("GET", "/apis/winspec.io/v1alpha1/windowscontainers")
        total = len(items["items"])

        def first_pass_done() -> bool:
            # Every resource's last reconcile by the new leader succeeded; none waits for one.
            states = {s.labels["state"]: s.value for s in _samples(url, "winspec_resources")}
            return states.get("ready") == total and states.get("pending") == 0

        wait_or_fail(self.deployed, first_pass_done, 90,
                     f"the new leader {new_leader} through all {total} resources")  # fmt: skip
        (agent,) = self.deployed.ready_pods(AGENT)
        assert agent["metadata"]["uid"] == self.agent_uid  # the same agent, its counter kept
        written = self.agent_bundles("written") - self.written
        unchanged = self.agent_bundles("unchanged") - self.unchanged
        after = self.watch.snapshot()
        rewritten = sorted(
            str(b)
            for b, version in self.before.items()
            if b not in changed and after.get(b) != version
        )
        assert rewritten == [], "bundles rewritten though nothing in them changed"
        assert all(after.get(b) not in (None, self.before.get(b)) for b in changed), changed
        # Any write puts a new version in place, so the unchanged ones were not written: the
        # agent's writes are the changed ones', one each.
        assert written == len(changed)
        # The new leader did send every current bundle again (its first pass): the agent
        # found each one current.
        kept = len(self.before) - len(changed & set(self.before))
        assert unchanged >= kept
        return (
            f"{len(after)} bundles on the node, {total} resources reconciled by the new leader; "
            f"{kept} unchanged ones uploaded again ({unchanged:g} uploads found current) and "
            f"not rewritten, {len(changed)} changed ones written {written:g} times in all"
        )


def _failover_resources(deployed: Deployed, namespace: str) -> list[str]:
    """:data:`FAILOVER_RESOURCES` resources Ready on the node, in ``namespace``: their names."""
    names = [f"r{i}" for i in range(FAILOVER_RESOURCES)]
    for name in names:
        create_on_node(deployed, namespace, name)
    for name in names:
        ready_on_node(deployed, namespace, name)
    return names


def _change(deployed: Deployed, namespace: str, name: str, line: str) -> None:
    """Change the resource's arguments to ``line``."""
    deployed.kube.api("PATCH", wc_path(namespace, name), {"spec": {"args": [line]}},
                      content_type="application/merge-patch+json")  # fmt: skip


def test_leader_pod_deleted_the_other_replica_leads_within_the_lease(
    deployed: Deployed, node_bundles: TreeWatch, app_namespace: str
) -> None:
    """Leader pod deleted: the standby leads within the lease, nothing written twice or lost."""
    ns = app_namespace
    names = _failover_resources(deployed, ns)
    holder = wait_or_fail(deployed, deployed.leader, 60, "a leader")
    leader_pod = holder.rsplit("_", 1)[0]
    writes = FailoverWrites(deployed, node_bundles)
    deleted_at = time.monotonic()
    deployed.kube.api("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{leader_pod}", expect=(200,))
    _change(deployed, ns, names[0], "echo changed")  # while the Lease changes hands
    new_holder = wait_or_fail(
        deployed,
        lambda: (h := deployed.leader()) and h != holder and h,
        LEASE_DURATION + 30,
        "a new leader",
    )
    # A graceful stop hands the Lease over at once; at worst it expires.
    assert time.monotonic() - deleted_at <= LEASE_DURATION + 10
    assert new_holder.rsplit("_", 1)[0] != leader_pod
    create_on_node(deployed, ns, "after")
    ready_on_node(deployed, ns, "after")
    assert command_line(ns, "after").endswith("echo hello")
    ready_on_node(deployed, ns, names[0], generation=2)
    assert command_line(ns, names[0]).endswith("echo changed")
    changed = {node_bundle(ns, names[0]), node_bundle(ns, "after")}
    print(f"leader pod deleted: {writes.check(new_holder.rsplit('_', 1)[0], changed)}")
    # The Deployment replaces the deleted replica.
    wait_or_fail(deployed, lambda: len(deployed.ready_pods(CONTROLLER)) == 2, START_TIMEOUT,
          "two controller replicas again")  # fmt: skip


def test_agent_pod_deleted_the_daemonset_brings_it_back_and_deliveries_resume(
    deployed: Deployed, app_namespace: str
) -> None:
    """The agent's pod deleted: a new one comes, and a changed resource reaches the node."""
    create_on_node(deployed, app_namespace, "web")
    ready_on_node(deployed, app_namespace, "web")
    (agent,) = deployed.ready_pods(AGENT)
    deployed.kube.api("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{agent['metadata']['name']}")
    new_agent = wait_or_fail(
        deployed,
        lambda: [
            p
            for p in deployed.ready_pods(AGENT)
            if p["metadata"]["uid"] != agent["metadata"]["uid"]
        ],
        START_TIMEOUT,
        "a new agent pod Ready",
    )
    assert new_agent[0]["spec"]["nodeName"] == deployed.node.name
    try:
        deployed.kube.api(
            "PATCH",
            wc_path(app_namespace, "web"),
            {"spec": {"args": ["echo changed"]}},
            content_type="application/merge-patch+json",
        )
    except KubeAPIError as exc:
        pytest.fail(str(exc))
    ready_on_node(deployed, app_namespace, "web", generation=2)
    assert command_line(app_namespace, "web").endswith("echo changed")


def test_leader_container_killed_through_the_runtime_the_other_replica_leads(
    deployed: Deployed, node_bundles: TreeWatch, app_namespace: str
) -> None:
    """Leader's container killed via the CRI: the standby leads, nothing written twice or lost."""
    ns = app_namespace
    names = _failover_resources(deployed, ns)
    holder = wait_or_fail(deployed, deployed.leader, 60, "a leader")
    leader_pod = holder.rsplit("_", 1)[0]
    restarts = _restarts(deployed, leader_pod)
    (container,) = [
        line.split()[0]
        for line in deployed.node.cri("containers").splitlines()
        if line.split()[1:4] == ["CONTAINER_RUNNING", f"{NAMESPACE}/{leader_pod}", "winspec"]
    ]
    writes = FailoverWrites(deployed, node_bundles)
    killed_at = time.monotonic()
    deployed.node.cri("stop-container", container)
    _change(deployed, ns, names[0], "echo changed")  # while nobody leads
    new_holder = wait_or_fail(
        deployed,
        lambda: (h := deployed.leader()) and h != holder and h,
        LEASE_DURATION + 30,
        "a new leader",
    )
    # The Lease expires at most LEASE_DURATION after the last renewal; the standby tries
    # every retry period (2 s) after that.
    assert time.monotonic() - killed_at <= LEASE_DURATION + 10
    create_on_node(deployed, ns, "after")
    ready_on_node(deployed, ns, "after")
    ready_on_node(deployed, ns, names[0], generation=2)
    assert command_line(ns, names[0]).endswith("echo changed")
    changed = {node_bundle(ns, names[0]), node_bundle(ns, "after")}
    print(f"leader container killed: {writes.check(new_holder.rsplit('_', 1)[0], changed)}")
    wait_or_fail(deployed, lambda: _restarts(deployed, leader_pod) > restarts, START_TIMEOUT,
          "the killed container restarted")  # fmt: skip
    wait_or_fail(deployed, lambda: len(deployed.ready_pods(CONTROLLER)) == 2, START_TIMEOUT,
          "both replicas Ready again")  # fmt: skip


def _restarts(deployed: Deployed, pod: str) -> int:
    """How often the kubelet restarted the winspec container of ``pod``."""
    status = deployed.kube.api("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}")["status"]
    return sum(c["restartCount"] for c in status.get("containerStatuses") or [])


def test_rolling_update_to_a_new_image_tag_under_a_stream_of_changes(
    deployed: Deployed, app_namespace: str
) -> None:
    """A rolling update to a new image tag under a stream of changes: every last change lands."""
    ns = app_namespace
    names = [f"r{i}" for i in range(4)]
    for name in names:
        create_on_node(deployed, ns, name)
    for name in names:
        ready_on_node(deployed, ns, name)
    before = {p["metadata"]["name"] for p in deployed.pods(CONTROLLER)}
    # The new tag is the same image under another name: imported, never pulled.
    deployed.node.tag_image(f"docker.io/library/{IMAGE}", f"docker.io/library/{NEW_IMAGE}")
    last: dict[str, tuple[int, str]] = {}
    stop = threading.Event()
    errors: list[str] = []

    def stream() -> None:
        count = 0
        while not stop.is_set():
            name = names[count % len(names)]
            line = f"echo change {count}"
            try:
                obj = deployed.kube.api(
                    "PATCH",
                    wc_path(ns, name),
                    {"spec": {"args": [line]}},
                    content_type="application/merge-patch+json",
                )
            except (KubeAPIError, OSError) as exc:
                errors.append(str(exc))
            else:
                last[name] = (obj["metadata"]["generation"], line)
            count += 1
            stop.wait(0.25)

    changes = threading.Thread(target=stream, daemon=True)
    changes.start()
    try:
        deployed.kubectl(
            "-n", NAMESPACE, "set", "image", "deployment/winspec-controller",
            f"winspec={NEW_IMAGE}",
        )  # fmt: skip
        rollout = deployed.kubectl(
            "-n", NAMESPACE, "rollout", "status", "deployment/winspec-controller",
            f"--timeout={int(START_TIMEOUT)}s", check=False,
        )  # fmt: skip
        assert rollout.returncode == 0, f"{rollout.stdout}{rollout.stderr}\n{deployed.describe()}"
        stop.wait(3)  # changes go on under the new replicas
    finally:
        stop.set()
        changes.join(timeout=10)
    assert errors == []
    after = deployed.ready_pods(CONTROLLER)
    assert len(after) == 2
    assert not before & {p["metadata"]["name"] for p in after}
    assert {p["spec"]["containers"][0]["image"] for p in after} == {NEW_IMAGE}
    holder = wait_or_fail(deployed, deployed.leader, 60, "a leader")
    assert holder.rsplit("_", 1)[0] in {p["metadata"]["name"] for p in after}
    assert len(last) == len(names)
    for name, (generation, line) in last.items():
        ready_on_node(deployed, ns, name, generation=generation)
        assert command_line(ns, name).endswith(line)


def test_readme_example_commands_bring_examples_cluster_to_ready_on_the_node(
    deployed: Deployed,
) -> None:
    """The README's examples/cluster commands: web Ready, its payload and gMSA spec on the node."""
    for command in RUN_EXAMPLE:
        words = shlex.split(command)
        assert words[0] == "kubectl"
        deployed.kubectl(*words[1:])
    ready_on_node(deployed, "apps", "web")
    bundle = node_bundle("apps", "web")
    config = json.loads((bundle / "config.json").read_bytes())
    credential_spec = json.loads(config["windows"]["credentialSpec"])
    assert credential_spec["DomainJoinConfig"]["MachineAccountName"] == "WebApp01"
    assert b"change-me" in mounted_payloads("apps", "web")


def _agent_down(prometheus: Prometheus) -> list[dict[str, str]]:
    """The labels of each WinspecAgentDown alert firing now."""
    alerts = prometheus.api("alerts")["alerts"]
    return [
        a["labels"]
        for a in alerts
        if a["labels"]["alertname"] == "WinspecAgentDown" and a["state"] == "firing"
    ]


def _schedule_agents(deployed: Deployed, nowhere: bool) -> None:
    """Make the agent DaemonSet's nodeSelector match no node (its pods go), or undo that."""
    selector = {"winspec.test/nowhere": "true" if nowhere else None}
    deployed.kube.api(
        "PATCH",
        f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets/winspec-agent",
        {"spec": {"template": {"spec": {"nodeSelector": selector}}}},
        content_type="application/merge-patch+json",
    )


def test_agent_pod_gone_altogether_fires_its_alert_from_the_controllers_gauge(
    deployed: Deployed, prometheus: Prometheus, app_namespace: str
) -> None:
    """No agent pod at all (no `up` series): WinspecAgentDown fires for the node all the same."""
    ns = app_namespace
    node = deployed.node.name
    create_on_node(deployed, ns, "web")
    ready_on_node(deployed, ns, "web")
    pods = f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={AGENT}"
    _schedule_agents(deployed, nowhere=True)
    try:
        wait_or_fail(deployed, lambda: not deployed.kube.api("GET", pods)["items"],
                     START_TIMEOUT, "the agent pod gone")  # fmt: skip

        def firing() -> list[dict[str, str]] | None:
            # Nothing scrapes an agent any more (no `up` series): only the controller's
            # gauge can say so.
            if prometheus.query('up{job="winspec-agent"}'):
                return None
            return [a for a in _agent_down(prometheus) if a.get("node") == node] or None

        try:
            alerts = wait_for(firing, 90, interval=1, what="WinspecAgentDown firing, no `up`")
        except TimeoutError as exc:
            pytest.fail(f"{exc}: {prometheus.api('alerts')}\n{prometheus.targets()}")
        assert alerts == [{"alertname": "WinspecAgentDown", "severity": "critical",
                           "namespace": NAMESPACE, "node": node}]  # fmt: skip
    finally:
        _schedule_agents(deployed, nowhere=False)
    wait_or_fail(deployed, lambda: len(deployed.ready_pods(AGENT)) == 1, START_TIMEOUT,
                 "the agent back")  # fmt: skip
    # The agent back: the alert resolves, and a change reaches the node again.
    wait_for(lambda: not _agent_down(prometheus), 90, interval=1, what="WinspecAgentDown resolved")
    _change(deployed, ns, "web", "echo back")
    ready_on_node(deployed, ns, "web", generation=2)
    assert command_line(ns, "web").endswith("echo back")


@pytest.fixture(scope="module")
def agent_lost(deployed: Deployed) -> str:
    """Last in the module, the node does not come back: a resource "lost" Ready on the node
    (in the namespace returned), then the kubelet stopped and the agent's container killed.
    The machine is gone with its agent; the controllers stand for replicas elsewhere."""
    namespace = new_namespace(deployed)
    create_on_node(deployed, namespace, "lost")
    ready_on_node(deployed, namespace, "lost")
    (agent,) = deployed.ready_pods(AGENT)
    deployed.node.stop_kubelet()
    (container,) = [
        line.split()[0]
        for line in deployed.node.cri("containers").splitlines()
        if line.split()[1:4] == ["CONTAINER_RUNNING", f"{NAMESPACE}/{agent['metadata']['name']}",
                                 "agent"]
    ]  # fmt: skip
    deployed.node.cri("stop-container", container)
    return namespace


def test_agent_lost_fires_its_alert_and_every_dashboard_panel_has_data(
    deployed: Deployed, prometheus: Prometheus, agent_lost: str, tmp_path: Path
) -> None:
    """Agent killed: WinspecAgentDown fires, deliveries fail, and every panel query has series."""
    try:
        wait_for(lambda: "WinspecAgentDown" in prometheus.firing(), 90, interval=1,
                 what="WinspecAgentDown firing")  # fmt: skip
    except TimeoutError as exc:
        pytest.fail(f"{exc}: {prometheus.api('alerts')}\n{prometheus.targets()}")
    # A change while the agent is down: its delivery fails (the delivery-failures panel).
    deployed.kube.api("PATCH", wc_path(agent_lost, "lost"), {"spec": {"args": ["echo lost"]}},
                      content_type="application/merge-patch+json")  # fmt: skip
    failures = f'sum(winspec_delivery_failures_total{{namespace="{NAMESPACE}"}}) > 0'
    wait_for(lambda: prometheus.query(failures), 60, interval=1, what="a delivery failure scraped")
    # Every query of every panel, the dashboard's variables at their values (namespace
    # winspec-system), has series over the module's run.
    board = json.loads(DASHBOARD.read_text())
    start, end = prometheus.started_at, time.time()
    empty = [
        f"{panel['title']}: {expr}"
        for panel, exprs in panel_queries(board, variables(board))
        for expr in exprs
        if not prometheus.query_range(expr, start, end, 2)
    ]
    assert empty == []
    # The documented picture command, run against this Prometheus over the same window.
    out = Path(os.environ.get(PICTURE_ENV) or tmp_path / "dashboard.png")
    words = argv(DASHBOARD_PICTURE, ("--minutes", f"{(end - start) / 60 + 0.5:.2f}"))
    words[words.index("http://127.0.0.1:9090")] = prometheus.url
    words[words.index("docs/dashboard.png")] = str(out)
    drawn = subprocess.run(
        words, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert drawn.returncode == 0, drawn.stderr
    assert out.read_bytes().startswith(b"\x89PNG")


def test_node_lost_deleting_its_resources_does_not_wedge(
    deployed: Deployed, agent_lost: str
) -> None:
    """Kubelet stopped, agent killed, Node deleted: deleting its resource ends, the bundle left."""
    app_namespace = agent_lost
    deployed.kube.api("DELETE", f"/api/v1/nodes/{deployed.node.name}")
    deployed.kube.api("DELETE", wc_path(app_namespace, "lost"))
    gone = wait_or_fail(
        deployed,
        lambda: deployed.kube.status_of("GET", wc_path(app_namespace, "lost")) == 404,
        90,
        "the deleted resource gone",
    )
    assert gone
    events = deployed.kube.api("GET", f"/api/v1/namespaces/{app_namespace}/events")["items"]
    assert "BundleNotRemoved" in {e["reason"] for e in events}
    # Nobody could remove it: the bundle stays on the lost machine.
    assert (node_bundle(app_namespace, "lost") / "config.json").exists()
