"""A real one-node Kubernetes cluster for tests: the API server of tests/kube.py plus a node.

:class:`KubeNode` joins a node to a :class:`~tests.kube.KubeCluster` started with ``node_ip``
(and its controller manager): Debian's containerd 1.6 and runc, the CNI bridge and host-local
plugins, and kube-scheduler, kubelet and kube-proxy v1.20.2 built into the same cache as the
API server by ``.ci/install-kube-apiserver.sh``. Nothing is ever pulled: the pod sandbox image
is made here from the cached static ``pause`` binary, and tests import theirs
(:meth:`KubeNode.import_image`, a ``docker save`` tarball).

Everything the node writes lives in the cluster's temporary directory, with private containerd
root, state, socket, runc root, CNI configuration and IPAM state. What cannot be private is
global to the machine, so there is one node per machine (a lock in /run) and :meth:`stop`
undoes it all: pod sandboxes removed through the CRI (``winspec-cri``, so that CNI DEL frees
veths, addresses and network namespaces), containerd's shims, mounts, the KUBE-* iptables
chains, the bridge, the kubepods cgroups, the pods' /var/log/pods directories, the Node object,
and the sysctls kubelet and kube-proxy change.

Gotchas this works around (each found on these machines):

- root has no CAP_SYS_RESOURCE, so no process may lower its oom_score_adj; the pod sandbox
  asks for -998, and runc fails ("can't get final child's PID from pipe: EOF") unless
  containerd's CRI plugin has ``restrict_oom_score_adj``;
- the kubelet sets ``kernel.panic=10`` and ``kernel.panic_on_oops=1`` once at start: they are
  put back as soon as the node is Ready, the rest at :meth:`stop`;
- there is no cluster DNS (Debian has no CoreDNS): pods get the host's resolv.conf, and
  in-cluster clients use ``KUBERNETES_SERVICE_HOST``.

A test fixture, never a node for anything else: no network policy, the admin's credentials in
files, the pods' subnet bridged on the host.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from tests.kube import KubeCluster, kube_bin_dir, kube_unavailable_reason
from tests.processes import free_port, stop_group
from tests.support.waiting import wait_for

#: The node examples/cluster's resource names (a user changes it to one of theirs).
NODE_NAME = "win-node-1"
BRIDGE = "winspec0"
#: This node's pod subnet (host-local IPAM) and the cluster's (kube-proxy's --cluster-cidr).
POD_CIDR = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
#: The pod sandbox image, made here; its registry name says it is never pulled.
SANDBOX_IMAGE = "winspec.invalid/pause:3.2"
#: One node per machine: KUBE-* chains, kubepods cgroups and /var/log/pods are global.
LOCK = Path("/run/winspec-node.lock")
#: Where the test overlay (manifests/overlays/test-node) puts the node's bundle root.
HOST_BUNDLE_PARENT = Path("/var/lib/winspec-test-node")
#: Built by .ci/install-kube-apiserver.sh beside kube-apiserver.
NODE_BINARIES = ("kube-scheduler", "kubelet", "kube-proxy", "pause", "winspec-cri")
#: Commands the node runs, and the Debian package each comes from.
NODE_TOOLS = (
    ("containerd", "containerd"),
    ("containerd-shim-runc-v2", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("iptables", "iptables"),
    ("iptables-save", "iptables"),
    ("conntrack", "conntrack"),
    ("ip", "iproute2"),
)
CNI_BIN = Path("/usr/lib/cni")
#: Sysctls the kubelet and kube-proxy change, put back by stop().
_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.conf.all.route_localnet",
    "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables",
)
#: Made by the kubelet (container logs) and CNI (network namespaces) if absent.
_HOST_DIRS = (Path("/var/log/pods"), Path("/var/log/containers"), Path("/var/run/netns"))
_READY_TIMEOUT = 120.0


class NodeError(RuntimeError):
    """The node could not be started, or stopped behaving."""


def node_unavailable_reason() -> str | None:
    """Why a node cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (containerd, kubelet, iptables, mounts, cgroups)"
    reason = kube_unavailable_reason(controller_manager=True)
    if reason is not None:
        return reason
    for name in NODE_BINARIES:
        if not os.access(kube_bin_dir() / name, os.X_OK):
            return f"{name} not found in {kube_bin_dir()} (run .ci/install-kube-apiserver.sh)"
    for tool, package in NODE_TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install {package})"
    for plugin in ("bridge", "host-local", "loopback"):
        if not os.access(CNI_BIN / plugin, os.X_OK):
            return f"{CNI_BIN / plugin} not found (apt-get install containernetworking-plugins)"
    if host_ip() is None:
        return "no global IPv4 address for the API server to listen on"
    return None


def host_ip() -> str | None:
    """The machine's first global IPv4 address: where the API server listens for the node."""
    proc = subprocess.run(
        ["ip", "-json", "-4", "addr", "show", "scope", "global"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    for link in json.loads(proc.stdout or "[]"):
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet" and addr.get("local"):
                local: str = addr["local"]
                return local
    return None


def image_tarball(
    out: Path, ref: str, files: dict[str, tuple[bytes, int]], entrypoint: list[str]
) -> Path:
    """Write a one-layer image holding ``files`` (path: content, mode) as ``docker save``
    would (what ``ctr images import`` reads); no daemon, no registry."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(content), mode, 1_600_000_000
            tar.addfile(info, io.BytesIO(content))
    layer_bytes = layer.getvalue()
    diff_id = hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [ref], "Layers": [f"{diff_id}/layer.tar"]}]
    ).encode()
    with tarfile.open(out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in (
            (f"{diff_id}/layer.tar", layer_bytes),
            (config_name, config),
            ("manifest.json", manifest),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
    return out


def _sysctl(key: str) -> str | None:
    try:
        return Path("/proc/sys", key.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def _set_sysctl(key: str, value: str) -> None:
    with contextlib.suppress(OSError):
        Path("/proc/sys", key.replace(".", "/")).write_text(value)


class KubeNode:
    """containerd, kubelet, kube-proxy and kube-scheduler joining ``cluster`` as one node."""

    def __init__(self, cluster: KubeCluster, *, name: str = NODE_NAME) -> None:
        if cluster.node_ip is None or not cluster.with_controller_manager:
            raise NodeError("the cluster needs node_ip and its controller manager")
        self.cluster = cluster
        self.name = name
        self.dir = cluster.dir / "node"
        self.socket = self.dir / "containerd" / "containerd.sock"
        self.endpoint = f"unix://{self.socket}"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._sysctls: dict[str, str] = {}
        self._var_log_pods: set[str] = set()
        #: Host directories the kubelet and CNI create when missing (removed again if empty).
        self._absent_dirs: list[Path] = []
        self._lock: IO[str] | None = None
        # Before the cluster's own (atexit runs the last registered first): its directory must
        # not be deleted while containers still have host paths bind-mounted below it.
        atexit.register(self.stop)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the node and wait until it is Ready with no taint left."""
        reason = node_unavailable_reason()
        if reason is not None:
            raise NodeError(reason)
        self._take_lock()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._sysctls = {k: v for k in _SYSCTLS if (v := _sysctl(k)) is not None}
        with contextlib.suppress(OSError):
            self._var_log_pods = set(os.listdir("/var/log/pods"))
        self._absent_dirs = [p for p in _HOST_DIRS if not p.exists()]
        shutil.rmtree(HOST_BUNDLE_PARENT, ignore_errors=True)
        # Pods reach each other and the API server through the host: forwarding on, and bridged
        # traffic through iptables, for kube-proxy's DNAT (needs br_netfilter).
        if shutil.which("modprobe") is not None:  # else built in, or loaded already
            for module in ("br_netfilter", "overlay"):
                subprocess.run(["modprobe", module], capture_output=True, check=False)
        _set_sysctl("net.ipv4.ip_forward", "1")
        _set_sysctl("net.bridge.bridge-nf-call-iptables", "1")
        self._credentials()
        self._cni()
        self._start_containerd()
        pause = image_tarball(
            self.dir / "pause.tar",
            SANDBOX_IMAGE,
            {"pause": ((kube_bin_dir() / "pause").read_bytes(), 0o755)},
            ["/pause"],
        )
        self.import_image(pause)
        self._start_scheduler()
        self._start_kubelet()
        self._start_kube_proxy()
        self.wait_ready()
        # The kubelet set these once at start and never looks again: a kernel oops on a
        # machine shared with other work must not reboot it.
        for key in ("kernel.panic", "kernel.panic_on_oops"):
            if key in self._sysctls:
                _set_sysctl(key, self._sysctls[key])

    def stop(self) -> None:
        """Undo everything start() did (also after a start that failed half-way). Idempotent."""
        if self._lock is None and not self._procs:
            return  # never started, or stopped already
        for name in ("kubelet", "kube-proxy", "kube-scheduler"):
            self._stop_process(name)
        with contextlib.suppress(Exception):
            self.cluster.api("DELETE", f"/api/v1/nodes/{self.name}", expect=(200, 404))
        removed_uids: list[str] = []
        if "containerd" in self._procs and self._procs["containerd"].poll() is None:
            # Stopping a sandbox runs its CNI DEL: veth, address and netns mount go with it.
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                proc = self._cri("remove-pods", check=False)
                removed_uids = [line.split()[-1] for line in proc.stdout.splitlines() if line]
        self._remove_pod_logs(removed_uids)
        self._stop_process("containerd")
        self._kill_shims()
        self._unmount_all()
        self._remove_iptables_chains()
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
        self._remove_kubepods_cgroups()
        for key, value in self._sysctls.items():
            _set_sysctl(key, value)
        self._sysctls = {}
        shutil.rmtree(HOST_BUNDLE_PARENT, ignore_errors=True)
        for path in self._absent_dirs:
            with contextlib.suppress(OSError):
                path.rmdir()
        if self._lock is not None:
            with contextlib.suppress(OSError):
                LOCK.unlink()
            self._lock.close()
            self._lock = None

    def wait_ready(self, timeout: float = _READY_TIMEOUT) -> dict[str, Any]:
        """Wait until the Node is Ready with no taint; the Node."""

        def ready() -> dict[str, Any] | None:
            for name in self._procs:
                self._check_alive(name)
            node: dict[str, Any] = self.cluster.api(
                "GET", f"/api/v1/nodes/{self.name}", expect=(200, 404)
            )
            if node.get("kind") != "Node":  # not registered yet
                return None
            conditions = {
                c["type"]: c["status"] for c in (node.get("status") or {}).get("conditions", [])
            }
            if conditions.get("Ready") == "True" and not node["spec"].get("taints"):
                return node
            return None

        try:
            return wait_for(ready, timeout, interval=0.5, what=f"node {self.name} Ready")
        except TimeoutError as exc:
            raise NodeError(f"{exc}:\n{self.log_tail('kubelet')}") from exc

    # -- what tests use ------------------------------------------------------------------------

    def import_image(self, tarball: Path) -> None:
        """Import a ``docker save`` tarball into the node's containerd (the kubelet's images)."""
        self._ctr("images", "import", str(tarball))

    def tag_image(self, source: str, target: str) -> None:
        """Give an imported image another name (e.g. a new tag for a rolling update)."""
        self._ctr("images", "tag", "--force", source, target)

    def cri(self, *args: str) -> str:
        """``winspec-cri <endpoint> <args>``: the node's containers and sandboxes, as the
        kubelet sees them; its output."""
        return self._cri(*args).stdout

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines of a node component's log."""
        try:
            text = (self.dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- start ----------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        lock = open(LOCK, "a+")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise NodeError(f"another test node runs on this machine ({LOCK})") from None
        lock.truncate(0)
        lock.write(f"{os.getpid()} {self.dir}\n")
        lock.flush()
        self._lock = lock

    def _kubeconfig(self, user: str, cert: Path, key: Path) -> Path:
        path = self.dir / f"{user}.kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": self.cluster.url,
                        "certificate-authority": str(self.cluster.ca),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {"client-certificate": str(cert), "client-key": str(key)},
                }
            ],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
            "current-context": "test",
        }
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        path.chmod(0o600)
        return path

    def _credentials(self) -> None:
        # The Node authorizer and NodeRestriction give system:node:<name> exactly its rights.
        cert, key = self.cluster.client_certificate(
            "kubelet", f"/O=system:nodes/CN=system:node:{self.name}"
        )
        self._kubeconfig("kubelet", cert, key)
        cert, key = self.cluster.client_certificate("kube-proxy", "/CN=system:kube-proxy")
        self._kubeconfig("kube-proxy", cert, key)

    def _cni(self) -> None:
        # containerd's CRI plugin reads the directory at start. No ipMasq: pods need no way
        # out, and that is fewer rules to clean up. IPAM state here, not in /var/lib/cni.
        conf = self.dir / "cni" / "net.d"
        conf.mkdir(parents=True, exist_ok=True)
        network = {
            "cniVersion": "0.4.0",
            "name": "winspec-pods",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.dir / "cni" / "ipam"),
                    },
                }
            ],
        }
        (conf / "10-winspec-pods.conflist").write_text(json.dumps(network, indent=2))

    def _start_containerd(self) -> None:
        cd = self.dir / "containerd"
        for sub in ("root", "state", "runc"):
            (cd / sub).mkdir(parents=True, exist_ok=True)
        config = f"""\
version = 2
root = "{cd / "root"}"
state = "{cd / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  # Root here may not lower an oom_score_adj (no CAP_SYS_RESOURCE): without this, runc fails
  # to start the sandbox, which asks for -998.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{cd / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.dir / "cni" / "net.d"}"
    max_conf_num = 1
"""
        (cd / "config.toml").write_text(config)
        self._spawn("containerd", ["containerd", "--config", str(cd / "config.toml")])

        def answering() -> bool:
            self._check_alive("containerd")
            return self._ctr("version", check=False).returncode == 0

        wait_for(answering, 30, interval=0.1, what="containerd to answer")
        plugins = self._ctr("plugins", "ls").stdout
        if not any(
            line.split()[:2] == ["io.containerd.grpc.v1", "cri"] and line.split()[-1] == "ok"
            for line in plugins.splitlines()
            if line.strip()
        ):
            raise NodeError(f"containerd's CRI plugin did not load:\n{self.log_tail('containerd')}")

    def _start_scheduler(self) -> None:
        self._spawn(
            "kube-scheduler",
            [
                str(kube_bin_dir() / "kube-scheduler"),
                f"--kubeconfig={self.cluster.admin_kubeconfig}",
                "--port=0", "--secure-port=0", "--leader-elect=false",
            ],
        )  # fmt: skip

    def _start_kubelet(self) -> None:
        cluster = self.cluster
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # No systemd here: cgroupfs, as containerd's runc (SystemdCgroup = false).
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "address": cluster.node_ip,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            # The API server calls with its client certificate; anyone else through webhooks.
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(cluster.ca)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDomain": "cluster.local",
            "resolvConf": "/etc/resolv.conf",
            # Images are imported, never pulled: never collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            # A busy shared disk must not evict the test's pods.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            # Status changes are posted within 3 s (heartbeats are Leases: cheap).
            "nodeStatusUpdateFrequency": "3s",
            "maxPods": 30,
        }
        path = self.dir / "kubelet-config.json"
        path.write_text(json.dumps(config, indent=2))
        self._spawn(
            "kubelet",
            [
                str(kube_bin_dir() / "kubelet"),
                f"--config={path}", f"--kubeconfig={self.dir / 'kubelet.kubeconfig'}",
                "--container-runtime=remote", f"--container-runtime-endpoint={self.endpoint}",
                f"--pod-infra-container-image={SANDBOX_IMAGE}",
                f"--hostname-override={self.name}", f"--node-ip={cluster.node_ip}",
                f"--root-dir={self.dir / 'kubelet'}", f"--cert-dir={self.dir / 'kubelet-pki'}",
                "--v=1",
            ],
        )  # fmt: skip

    def _start_kube_proxy(self) -> None:
        self._spawn(
            "kube-proxy",
            [
                str(kube_bin_dir() / "kube-proxy"),
                f"--kubeconfig={self.dir / 'kube-proxy.kubeconfig'}",
                "--proxy-mode=iptables", f"--hostname-override={self.name}",
                f"--bind-address={self.cluster.node_ip}", f"--cluster-cidr={CLUSTER_CIDR}",
                f"--healthz-bind-address=127.0.0.1:{free_port()}",
                f"--metrics-bind-address=127.0.0.1:{free_port()}",
                # Leave the host's conntrack settings alone.
                "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
                "--conntrack-tcp-timeout-close-wait=0",
                "--v=1",
            ],
        )  # fmt: skip

    # -- processes ------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it open
        try:
            self._procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    def _check_alive(self, name: str) -> None:
        proc = self._procs[name]
        if proc.poll() is not None:
            raise NodeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def _stop_process(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is not None:
            stop_group(proc, grace=15)

    def stop_kubelet(self) -> None:
        """Stop the kubelet alone (a node lost: its pods run on, nobody reports them)."""
        self._stop_process("kubelet")

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._tool(["ctr", "--address", str(self.socket), "--namespace", "k8s.io"],
                          args, check)  # fmt: skip

    def _cri(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._tool([str(kube_bin_dir() / "winspec-cri"), self.endpoint], args, check)

    def _tool(
        self, command: list[str], args: tuple[str, ...], check: bool
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=300, check=False
        )
        if check and proc.returncode != 0:
            name = Path(command[0]).name
            raise NodeError(f"{name} {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    # -- clean-up -------------------------------------------------------------------------------

    def _remove_pod_logs(self, uids: Iterable[str]) -> None:
        # The kubelet writes container logs to the fixed /var/log/pods/<ns>_<pod>_<uid>: those
        # of this node's pods, and whatever was not there before start().
        logs = Path("/var/log/pods")
        with contextlib.suppress(OSError):
            for entry in logs.iterdir():
                if entry.name not in self._var_log_pods or any(
                    entry.name.endswith("_" + uid) for uid in uids
                ):
                    shutil.rmtree(entry, ignore_errors=True)
        with contextlib.suppress(OSError):
            for link in Path("/var/log/containers").iterdir():
                if link.is_symlink() and not link.exists():
                    link.unlink()

    def _kill_shims(self) -> None:
        # A shim outlives containerd by design; ours name our socket on their command line.
        marker = str(self.socket).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"containerd-shim" in argv[0] and marker in argv:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)

    def _unmount_all(self) -> None:
        # Containers' root file systems, shm, the kubelet's secret and projected volumes.
        prefix = str(self.dir) + "/"
        for _ in range(3):
            targets = [
                line.split()[4]
                for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4].startswith(prefix)
            ]
            if not targets:
                return
            for target in sorted(targets, reverse=True):
                done = subprocess.run(["umount", target], capture_output=True, check=False)
                if done.returncode != 0:
                    subprocess.run(["umount", "-l", target], capture_output=True, check=False)
            time.sleep(0.2)

    def _remove_iptables_chains(self) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                [str(kube_bin_dir() / "kube-proxy"), "--cleanup", "--proxy-mode=iptables"],
                capture_output=True,
                check=False,
                timeout=60,
            )
        # What is left (the kubelet's KUBE-MARK-*, KUBE-FIREWALL ...): jumps to KUBE-* chains
        # from the other chains, then the chains themselves.
        for table in ("filter", "nat", "mangle"):
            saved = subprocess.run(
                ["iptables-save", "-t", table], capture_output=True, text=True, check=False
            ).stdout
            chains = [
                line[1:].split()[0] for line in saved.splitlines() if line.startswith(":KUBE-")
            ]
            for line in saved.splitlines():
                words = line.split()
                if words[:1] == ["-A"] and not words[1].startswith("KUBE-") and "-j" in words:
                    target = words[words.index("-j") + 1]
                    if target.startswith("KUBE-"):
                        # iptables-save double-quotes comments.
                        rule = shlex.split(line[3:])
                        subprocess.run(
                            ["iptables", "-t", table, "-D", *rule],
                            capture_output=True,
                            check=False,
                        )
            for flag in ("-F", "-X"):
                for chain in chains:
                    subprocess.run(
                        ["iptables", "-t", table, flag, chain], capture_output=True, check=False
                    )

    def _remove_kubepods_cgroups(self) -> None:
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            top = hierarchy / "kubepods"
            if not top.is_dir():
                continue
            # Deepest first; a cgroup with a process left in it stays (and says so by EBUSY).
            for current in sorted((w[0] for w in os.walk(top)), key=len, reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(current)
