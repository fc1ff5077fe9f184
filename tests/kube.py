"""A real Kubernetes API server for cluster-mode tests: etcd + kube-apiserver on loopback.

:class:`KubeCluster` starts Debian's etcd and a kube-apiserver v1.20.2 (built from Debian's
``kubernetes`` source package by ``.ci/install-kube-apiserver.sh`` into a cache directory) on
random 127.0.0.1 ports, everything in a private temporary directory: a CA, the server's
certificate, service-account signing keys and a static token file with two users:

- ``admin`` (group ``system:masters``): what tests set things up with;
- ``nobody`` (group ``winspec-tests``): authenticated, with no rights at all.

``with_controller_manager=True`` also starts kube-controller-manager (default ServiceAccounts,
namespace deletion, garbage collection); the server alone answers every API call winspec makes.
``node_ip`` makes a server a real node (tests/node.py) can join: it listens on that address
instead of loopback (pods reach it through the ``kubernetes`` Service, a DNAT to the advertised
address, which cannot be loopback), its certificate names the Service, it authorizes kubelets
with the Node authorizer and NodeRestriction, and it reaches them with a client certificate.
:meth:`KubeCluster.apply_crd` applies the project's own CRD from ``manifests/`` and waits until
it is established. :meth:`KubeCluster.kubeconfig` writes a kubeconfig for any token (a
service account's, from :meth:`KubeCluster.service_account_token`).

Everything here is synchronous and stdlib-only (``http.client`` over TLS), like
tests/dockerd.py: tests set up objects with :meth:`KubeCluster.api` while the code under test
talks to the same server asynchronously. A test fixture, never a server for anything else: the
admin token is in a file, etcd has no authentication.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.crd import CRD_PATH, load_crd
from tests.processes import clean_env, free_port
from tests.support.errors import APIStatusError, FixtureError
from tests.support.processes import log_tail, terminate
from tests.support.waiting import wait_for

KUBE_VERSION = "v1.20.2"
#: Where .ci/install-kube-apiserver.sh puts the binaries (WINSPEC_KUBE_CACHE changes it).
DEFAULT_CACHE = f"/var/cache/winspec/kube-{KUBE_VERSION}"
ADMIN_USER = "admin"
#: The Services' address range; its first address is the ``kubernetes`` Service's.
SERVICE_RANGE = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"
NOBODY_USER = "nobody"
_LOG_TAIL_LINES = 30
_READY_TIMEOUT = 90.0


class KubeError(FixtureError):
    """The API server could not be started, or stopped behaving."""


class KubeAPIError(APIStatusError):
    """The API server answered a request with an unexpected status."""


def kube_bin_dir() -> Path:
    """Where kube-apiserver and kube-controller-manager are looked for."""
    if os.environ.get("WINSPEC_KUBE_BIN"):
        return Path(os.environ["WINSPEC_KUBE_BIN"])
    return Path(os.environ.get("WINSPEC_KUBE_CACHE") or DEFAULT_CACHE) / "bin"


def kube_unavailable_reason(*, controller_manager: bool = False) -> str | None:
    """Why the cluster fixture cannot run here, or None when it can."""
    bin_dir = kube_bin_dir()
    wanted = ["kube-apiserver"] + (["kube-controller-manager"] if controller_manager else [])
    for name in wanted:
        if not os.access(bin_dir / name, os.X_OK):
            return (
                f"{name} not found in {bin_dir} (run .ci/install-kube-apiserver.sh, or set "
                "WINSPEC_KUBE_BIN to a directory holding it)"
            )
    for tool, package in (("etcd", "etcd-server"), ("openssl", "openssl")):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install {package})"
    return None


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a live process has used, from /proc."""
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def stat_cpu_seconds(stat: Path) -> float:
    """CPU time (user + system) in a /proc ``stat`` file: a process's, or one thread's
    (``/proc/<pid>/task/<tid>/stat``)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class KubeCluster:
    """One etcd + kube-apiserver (+ optional kube-controller-manager) for a test session."""

    def __init__(
        self,
        *,
        with_controller_manager: bool = False,
        watch_cache: bool = False,
        node_ip: str | None = None,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="winspec-kube-"))
        self.with_controller_manager = with_controller_manager
        #: The API server's watch cache: off by default (see the flag); on, it sends bookmarks.
        self.watch_cache = watch_cache
        #: The address a real node reaches the server at (None: loopback only, no node).
        self.node_ip = node_ip
        self.host = node_ip or "127.0.0.1"
        self.port = free_port()
        self.url = f"https://{self.host}:{self.port}"
        self.ca = self.dir / "ca.crt"
        self.admin_token = secrets.token_hex(24)
        self.nobody_token = secrets.token_hex(24)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._etcd_port = 0
        self._ssl: ssl.SSLContext | None = None
        atexit.register(self.stop)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start etcd, then the API server (and the controller manager); wait until ready."""
        reason = kube_unavailable_reason(controller_manager=self.with_controller_manager)
        if reason is not None:
            raise KubeError(reason)
        self._make_credentials()
        self._start_etcd()
        self._start_apiserver()
        if self.with_controller_manager:
            self._start_controller_manager()

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by etcd, the API server and the controller
        manager: what a benchmark phase cost the server side."""
        total = 0.0
        for proc in self._procs.values():
            with contextlib.suppress(OSError):
                total += process_cpu_seconds(proc.pid)
        return total

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL) and delete the directory. Idempotent."""
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self._procs.pop(name, None)
            if proc is None:
                continue
            terminate(proc, 10, group=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _make_credentials(self) -> None:
        d = self.dir
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
                 "-out", "ca.crt", "-days", "30", "-subj", "/CN=winspec-test-ca",
                 cwd=d)  # fmt: skip
        names = "IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc"
        if self.node_ip is not None:
            # In-cluster clients dial the kubernetes Service (the range's first address).
            names += f",IP:{self.node_ip},IP:{SERVICE_IP},DNS:kubernetes,DNS:kubernetes.default"
            names += ",DNS:kubernetes.default.svc.cluster.local"
        (d / "server.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage=serverAuth\nsubjectAltName={names}\n"
        )
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
                 "-out", "server.csr", "-subj", "/CN=kube-apiserver", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", "server.crt", "-days", "30",
                 "-extfile", "server.ext", cwd=d)  # fmt: skip
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
        (d / "tokens.csv").write_text(
            f'{self.admin_token},{ADMIN_USER},admin-uid,"system:masters"\n'
            f'{self.nobody_token},{NOBODY_USER},nobody-uid,"winspec-tests"\n'
        )
        if self.node_ip is not None:
            # What the server calls kubelets with (logs, exec): a system:masters certificate.
            self.client_certificate("kubelet-client", "/O=system:masters/CN=kube-apiserver")
        for name in ("ca.key", "server.key", "sa.key", "tokens.csv"):
            (d / name).chmod(0o600)
        self.kubeconfig(self.admin_token, d / "admin.kubeconfig")

    def client_certificate(self, name: str, subject: str) -> tuple[Path, Path]:
        """Write ``<name>.crt`` and ``<name>.key``, a client certificate for ``subject``
        (``/O=group/CN=user``) signed by the cluster's CA; their paths."""
        d = self.dir
        ext = d / "client.ext"
        if not ext.exists():
            ext.write_text(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=clientAuth\n"
            )
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", subject, cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "30",
                 "-extfile", "client.ext", cwd=d)  # fmt: skip
        (d / f"{name}.key").chmod(0o600)
        return d / f"{name}.crt", d / f"{name}.key"

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it open
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() kills the group
            )
        finally:
            log.close()
        self._procs[name] = proc
        return proc

    def log_tail(self, name: str) -> str:
        """The last lines of a component's log."""
        return log_tail(self.dir / f"{name}.log", _LOG_TAIL_LINES)

    def _check_alive(self, name: str) -> None:
        proc = self._procs[name]
        if proc.poll() is not None:
            raise KubeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def _start_etcd(self) -> None:
        self._etcd_port, peer = free_port(), free_port()
        data = self.dir / "etcd"
        data.mkdir(mode=0o700)
        client_url = f"http://127.0.0.1:{self._etcd_port}"
        peer_url = f"http://127.0.0.1:{peer}"
        self._spawn(
            "etcd",
            [
                "etcd", "--name", "winspec-test", "--data-dir", str(data),
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"winspec-test={peer_url}",
                "--initial-cluster-state", "new", "--unsafe-no-fsync",
            ],
        )  # fmt: skip

        def healthy() -> bool:
            self._check_alive("etcd")
            conn = http.client.HTTPConnection("127.0.0.1", self._etcd_port, timeout=2)
            try:
                conn.request("GET", "/health")
                return b'"true"' in conn.getresponse().read()
            except OSError:
                return False
            finally:
                conn.close()

        wait_for(healthy, 30, what="etcd to be healthy")

    def compact_etcd(self) -> int:
        """Compact etcd to its current revision (through its HTTP gateway); the revision.

        Every resourceVersion before it is gone: a watch from one gets 410 Gone.
        """
        conn = http.client.HTTPConnection("127.0.0.1", self._etcd_port, timeout=10)
        try:
            conn.request("POST", "/v3/kv/range", body=json.dumps({"key": "Lw==", "limit": 1}))
            revision = int(json.loads(conn.getresponse().read())["header"]["revision"])
            conn.request(
                "POST",
                "/v3/kv/compaction",
                body=json.dumps({"revision": revision, "physical": True}),
            )
            answer = conn.getresponse()
            body = answer.read()
            if answer.status != 200:
                raise KubeError(f"etcd compaction failed: {answer.status} {body!r}")
        finally:
            conn.close()
        return revision

    @property
    def etcd_url(self) -> str:
        """etcd's client URL (compaction tests talk to it directly)."""
        return f"http://127.0.0.1:{self._etcd_port}"

    def _node_flags(self) -> list[str]:
        """The API server's flags for a real node (none without ``node_ip``); later scalar
        flags win, so these override the loopback defaults (see also --authorization-mode)."""
        if self.node_ip is None:
            return []
        d = self.dir
        return [
            f"--bind-address={self.node_ip}", f"--advertise-address={self.node_ip}",
            # The kubernetes Service's endpoint is this server's advertised address, kept
            # up to date (with "none" there is no endpoint and pods cannot reach the server).
            "--endpoint-reconciler-type=lease",
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={d / 'kubelet-client.crt'}",
            f"--kubelet-client-key={d / 'kubelet-client.key'}",
            # The node's name is not in DNS: reach kubelets (logs, exec) by address.
            "--kubelet-preferred-address-types=InternalIP,Hostname",
        ]  # fmt: skip

    def _start_apiserver(self) -> None:
        d = self.dir
        issuer = "https://kubernetes.default.svc"
        self._spawn(
            "kube-apiserver",
            [
                str(kube_bin_dir() / "kube-apiserver"),
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}", "--insecure-port=0",
                f"--etcd-servers={self.etcd_url}",
                f"--tls-cert-file={d / 'server.crt'}", f"--tls-private-key-file={d / 'server.key'}",
                f"--client-ca-file={d / 'ca.crt'}", f"--token-auth-file={d / 'tokens.csv'}",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                f"--service-account-issuer={issuer}", f"--api-audiences={issuer}",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                # With a node, the Node authorizer gives kubelets exactly their rights (a list
                # flag: given twice, it would be appended to, not overridden).
                f"--authorization-mode={'RBAC' if self.node_ip is None else 'Node,RBAC'}",
                "--endpoint-reconciler-type=none", "--profiling=false",
                f"--cert-dir={d / 'apiserver-certs'}",
                # Watches go to etcd itself, not the watch cache (whose history window tests
                # cannot control): a watch from a compacted resourceVersion then gets 410 Gone
                # at once, so tests can produce it on demand (compact_etcd).
                # With the cache on (watch_cache=True) the server sends bookmarks, about 2 s
                # before each watch's timeoutSeconds ends.
                f"--watch-cache={'true' if self.watch_cache else 'false'}",
                *self._node_flags(),
            ],
        )  # fmt: skip

        def ready() -> bool:
            self._check_alive("kube-apiserver")
            try:
                status, _ = self._request("GET", "/readyz", None, self.admin_token, {})
            except OSError:
                return False
            return status == 200

        try:
            wait_for(ready, _READY_TIMEOUT, interval=0.2, what="kube-apiserver /readyz")
        except TimeoutError as exc:
            raise KubeError(f"{exc}:\n{self.log_tail('kube-apiserver')}") from exc

    def _start_controller_manager(self) -> None:
        d = self.dir
        if self.node_ip is None:
            # Only what an API server without nodes or cloud can run.
            controllers = [
                "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-route,"
                "-service,-attachdetach,-persistentvolume-binder,-persistentvolume-expander,"
                "-pv-protection,-pvc-protection,-ttl,-csrsigning"
            ]
        else:
            controllers = [
                # Node lifecycle lifts the not-ready taint admission puts on a new Node (and
                # evicts a lost node's pods); no cloud, and the pod subnet is set in CNI.
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-route,-service,-csrsigning",
                # Notice a Ready node within seconds (default 5 s); evict a lost node's pods
                # after a minute, not five.
                "--node-monitor-period=2s", "--pod-eviction-timeout=1m",
            ]  # fmt: skip
        self._spawn(
            "kube-controller-manager",
            [
                str(kube_bin_dir() / "kube-controller-manager"),
                f"--kubeconfig={d / 'admin.kubeconfig'}", "--port=0", "--secure-port=0",
                "--leader-elect=false", "--use-service-account-credentials=false",
                f"--service-account-private-key-file={d / 'sa.key'}",
                f"--root-ca-file={d / 'ca.crt'}",
                *controllers,
            ],
        )  # fmt: skip

    # -- API -----------------------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca))
        return self._ssl

    def _request(
        self,
        method: str,
        path: str,
        body: Any,
        token: str,
        headers: Mapping[str, str],
    ) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection(
            self.host, self.port, context=self._context(), timeout=30
        )
        try:
            data = None if body is None else json.dumps(body).encode()
            all_headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            if data is not None:
                all_headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers={**all_headers, **headers})
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            parsed: Any = json.loads(raw) if raw.strip() else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return response.status, parsed

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str | None = None,
        expect: tuple[int, ...] = (200, 201),
    ) -> Any:
        """One API call (as admin unless ``token``); the decoded body, or KubeAPIError."""
        headers = {"Content-Type": content_type} if content_type else {}
        status, parsed = self._request(method, path, body, token or self.admin_token, headers)
        if status not in expect:
            raise KubeAPIError(method, path, status, parsed)
        return parsed

    def status_of(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> int:
        """The HTTP status of one API call (for tests of what the server refuses)."""
        status, _ = self._request(method, path, body, token or self.admin_token, {})
        return status

    def apply(self, obj: Mapping[str, Any], *, namespace: str | None = None) -> Any:
        """Create ``obj`` or, when it exists, replace it (server-side apply as admin)."""
        path = resource_path(obj, namespace=namespace) + "/" + obj["metadata"]["name"]
        return self.api(
            "PATCH",
            path + "?fieldManager=winspec-tests&force=true",
            obj,
            content_type="application/apply-patch+yaml",
        )

    def apply_crd(self) -> dict[str, Any]:
        """Apply the project's CRD (manifests/base/crd.yaml) and wait until it is established."""
        crd = load_crd()
        self.apply(crd)
        name = crd["metadata"]["name"]

        def established() -> dict[str, Any] | None:
            current: dict[str, Any] = self.api(
                "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
            )
            for cond in (current.get("status") or {}).get("conditions") or []:
                if cond["type"] == "Established" and cond["status"] == "True":
                    return current
            return None

        try:
            return wait_for(established, 30, what=f"CRD {name} ({CRD_PATH}) established")
        except TimeoutError as exc:
            raise KubeError(str(exc)) from exc

    def apply_gmsa_crd(self) -> None:
        """Apply the GMSACredentialSpec CRD (as kubernetes-sigs/windows-gmsa defines it)."""
        self.apply(GMSA_CRD)
        wait_for(
            lambda: self.status_of("GET", "/apis/windows.k8s.io/v1/gmsacredentialspecs") == 200,
            30,
            what="the GMSACredentialSpec CRD to be served",
        )

    def create_namespace(self, name: str) -> None:
        """Create a namespace (no-op when it exists)."""
        self.api(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            expect=(201, 409),
        )

    def service_account_token(
        self,
        namespace: str,
        name: str,
        *,
        seconds: int = 3600,
        audiences: list[str] | None = None,
    ) -> str:
        """A bearer token of a ServiceAccount (created if needed), from the TokenRequest API;
        bound to ``audiences`` when given (else the API server's own)."""
        spec: dict[str, Any] = {"expirationSeconds": seconds}
        if audiences:
            spec["audiences"] = audiences
        self.api(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
            expect=(201, 409),
        )
        issued = self.api(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        token: str = issued["status"]["token"]
        return token

    def kubeconfig(
        self, token: str, path: Path | None = None, *, server: str | None = None
    ) -> Path:
        """Write a kubeconfig for ``token`` (and ``server``, e.g. a proxy); return its path."""
        path = path or self.dir / f"kubeconfig-{secrets.token_hex(4)}"
        plain = (server or self.url).startswith("http://")
        cluster: dict[str, Any] = {"server": server or self.url}
        if not plain:
            cluster["certificate-authority"] = str(self.ca)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
            "current-context": "test",
        }
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        path.chmod(0o600)
        return path

    @property
    def admin_kubeconfig(self) -> Path:
        """The admin's kubeconfig."""
        return self.dir / "admin.kubeconfig"

    def kubectl_env(self) -> dict[str, str]:
        """The environment for a kubectl run as this cluster's admin.

        kubectl caches discovery per host and port for hours; a fresh server on a port an
        earlier one used would be answered from that server's cache (a CRD it had, this one
        lacks), so each cluster has a cache of its own.
        """
        return {
            **clean_env(),
            "KUBECONFIG": str(self.admin_kubeconfig),
            "KUBECACHEDIR": str(self.dir / "kubectl-cache"),
        }


def resource_path(obj: Mapping[str, Any], *, namespace: str | None = None) -> str:
    """The collection path of an object's kind, for the few kinds tests create."""
    api_version: str = obj["apiVersion"]
    kind: str = obj["kind"]
    plural = _PLURALS.get(kind) or kind.lower() + "s"
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    ns = namespace or obj["metadata"].get("namespace")
    if ns and kind not in _CLUSTER_SCOPED:
        return f"{base}/namespaces/{urllib.parse.quote(ns)}/{plural}"
    return f"{base}/{plural}"


_PLURALS = {
    "CustomResourceDefinition": "customresourcedefinitions",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "GMSACredentialSpec": "gmsacredentialspecs",
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "ServiceAccount": "serviceaccounts",
    "Namespace": "namespaces",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "WindowsContainer": "windowscontainers",
}
_CLUSTER_SCOPED = frozenset(
    {
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "GMSACredentialSpec",
        "Namespace",
    }
)

#: windows.k8s.io/v1 GMSACredentialSpec, cluster-scoped, the JSON under ``credspec`` (the shape
#: kubernetes-sigs/windows-gmsa's chart installs; what a real cluster with gMSA support has).
GMSA_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {
        "name": "gmsacredentialspecs.windows.k8s.io",
        # *.k8s.io groups are protected: the server wants to see where the API was approved.
        "annotations": {
            "api-approved.kubernetes.io": "https://github.com/kubernetes/enhancements/pull/1111"
        },
    },
    "spec": {
        "group": "windows.k8s.io",
        "scope": "Cluster",
        "names": {
            "kind": "GMSACredentialSpec",
            "plural": "gmsacredentialspecs",
            "singular": "gmsacredentialspec",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "credspec": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                },
            }
        ],
    },
}
