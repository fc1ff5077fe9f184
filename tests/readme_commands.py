"""The commands of the documentation (README.md, DEVELOPMENT.md and every page of docs/): every
line of their ``sh`` blocks and every inline `.venv/bin/…` command, split at ``&&``, and what runs
each one (a test, or ``.ci/run``)."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: The pages whose commands are run: the README, DEVELOPMENT.md and the manual under docs/.
DOCUMENTS: tuple[Path, ...] = (
    README,
    ROOT / "DEVELOPMENT.md",
    *sorted((ROOT / "docs").glob("*.md")),
)
#: The cluster-mode page: it holds the example WindowsContainer (examples/cluster's resource).
CLUSTER_MODE = ROOT / "docs" / "cluster-mode.md"
CI_RUN = ROOT / ".ci" / "run"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
_INLINE = re.compile(r"`(\.venv/bin/[^`]+)`")

#: Documented command → the line of .ci/run that runs it (the same command, maybe with options).
RUN_BY_CI: dict[str, str] = {
    "python3 -m venv .venv": "python3 -m venv --clear .venv",
    ".venv/bin/pip install -e '.[dev]'": ".venv/bin/python -m pip install --quiet -e '.[dev]'",
    ".venv/bin/python -m pytest": ".venv/bin/python -m pytest",
    ".ci/install-docker.sh": "bash .ci/install-docker.sh",
    ".ci/install-oci-checks.sh": "bash .ci/install-oci-checks.sh",
    ".ci/install-ntfs.sh": "bash .ci/install-ntfs.sh",
    ".ci/install-kube-apiserver.sh": "bash .ci/install-kube-apiserver.sh",
    ".ci/install-manifest-checks.sh": "bash .ci/install-manifest-checks.sh",
    ".ci/build-base-image.sh": "bash .ci/build-base-image.sh",
    ".venv/bin/ruff check .": ".venv/bin/ruff check .",
    ".venv/bin/ruff format --check .": ".venv/bin/ruff format --check .",
    ".venv/bin/mypy controller adapters": ".venv/bin/mypy controller adapters",
    ".venv/bin/lint-imports": ".venv/bin/lint-imports",
}
#: Documented commands tests/test_readme.py runs as they are (extra options: only shorter runs).
RUN_HERE: dict[str, tuple[str, ...]] = {
    ".venv/bin/winspec generate examples/process-isolated.json": (),
    ".venv/bin/winspec generate examples/hyperv.json": (),
    ".venv/bin/winspec schema": (),
    ".venv/bin/python -m tests.benchmarks.bench_generate": ("--seconds", "0.05", "--repeat", "1"),
    ".venv/bin/python -m tests.benchmarks.bench_bundle_write": ("--seconds", "0.2"),
}
#: The examples of docs/explain.md: tests/unit/cli/test_explain_cli.py runs each one and compares
#: what it prints with the block the page shows after it.
RUN_EXPLAIN: tuple[str, ...] = (
    ".venv/bin/winspec explain examples/process-isolated.json --field process",
    ".venv/bin/winspec diff examples/diff/containerd-process-isolated.json "
    "examples/process-isolated.json",
)
#: The tour against a local engine: tests/integration/test_readme_tour.py runs it as a script.
TOUR: tuple[str, ...] = (
    ".venv/bin/winspec run --docker-host unix:///var/run/docker.sock "
    "--bundle-root /tmp/winspec-bundles --listen 127.0.0.1:8080 --log-format console &",
    "curl -s --retry 10 --retry-connrefused http://127.0.0.1:8080/metrics "
    "| grep '^winspec_bundles_written_total'",
    "ls /tmp/winspec-bundles",
    "kill %1",
)
#: Further commands that need a real engine, run by tests/integration/test_readme_tour.py.
RUN_WITH_ENGINE: dict[str, tuple[str, ...]] = {
    ".venv/bin/winspec run --docker-host unix:///var/run/docker.sock --bundle-root /tmp/bundles "
    "--secrets-dir /tmp/granted-secrets --log-format console --listen 127.0.0.1:8080": (),
    ".venv/bin/python -m tests.benchmarks.bench_docker": ("--containers", "4", "--rate", "20"),
    ".venv/bin/python -m tests.benchmarks.bench_docker --containers 1000 --rate 100": (
        "--containers",
        "4",
    ),
    ".venv/bin/python -m tests.benchmarks.bench_relist": ("--containers", "5"),
    ".venv/bin/python -m tests.benchmarks.bench_flood": ("--events", "40", "--containers", "5"),
}
#: The cluster-mode commands: tests/integration/test_readme_cluster.py runs them against the
#: fixtures' real kube-apiserver (kubectl with the test cluster's kubeconfig).
RUN_WITH_KUBE: tuple[str, ...] = (
    "kubectl apply -f manifests/base/crd.yaml -f manifests/base/namespace.yaml "
    "-f manifests/base/rbac.yaml",
    ".venv/bin/winspec run --source kubernetes --kubeconfig ~/.kube/config "
    "--bundle-root /var/lib/winspec/bundles",
)
#: The cluster example (examples/cluster): tests/integration/test_cluster_example.py runs these
#: in order on a fresh API server without the GMSACredentialSpec CRD, after RUN_WITH_KUBE.
RUN_EXAMPLE: tuple[str, ...] = (
    "kubectl apply -f examples/cluster/gmsa-crd.yaml",
    "kubectl wait --for=condition=Established crd/gmsacredentialspecs.windows.k8s.io --timeout=60s",
    "kubectl apply -k examples/cluster",
    "kubectl wait --for=condition=Ready windowscontainer/web -n apps --timeout=60s",
)
#: Taking winspec's finalizer off by hand: tests/integration/test_remote_deletion.py runs it with
#: kubectl against the fixtures' real kube-apiserver (its namespace for ``apps``).
RUN_STUCK_DELETE: tuple[str, ...] = (
    'kubectl patch windowscontainer web -n apps --type=json -p \'[{"op": "test", '
    '"path": "/metadata/finalizers/0", "value": "winspec.io/bundle"}, {"op": "remove", '
    '"path": "/metadata/finalizers/0"}]\'',
)
#: The cluster-mode benchmark (it starts its own kube-apiserver), and the options that make the
#: test's run of it small.
BENCH_KUBE: dict[str, tuple[str, ...]] = {
    ".venv/bin/python -m tests.benchmarks.bench_kubernetes": ("--resources", "10", "--skip-kopf"),
    ".venv/bin/python -m tests.benchmarks.bench_delivery": ("--nodes", "2", "--resources", "10"),
    ".venv/bin/python -m tests.benchmarks.bench_memory": ("--sizes", "10", "20"),
    ".venv/bin/python -m tests.benchmarks.bench_memory "
    "--sizes 1000 2000 4000 8000 --node-share 1": (
        "--sizes",
        "10",
        "20",
        "40",
    ),
}
#: The deployment commands: tests/integration/test_manifests.py runs the kustomize builds as
#: they are and the apply with --dry-run=server against the fixtures' real kube-apiserver.
RUN_MANIFESTS: tuple[str, ...] = (
    "kubectl kustomize manifests/overlays/node-local",
    "kubectl kustomize manifests/overlays/central",
    "kubectl kustomize manifests/monitoring",
    "kubectl apply -k manifests/overlays/node-local",
)
#: Building and running the controller's Linux image with no image registry:
#: tests/integration/test_controller_image.py runs them in order against its private dockerd, in
#: a copy of the repository (``docker`` is Debian's docker.io client; the base image tarball is
#: the one .ci/build-base-image.sh made).
RUN_WITH_IMAGE: tuple[str, ...] = (
    "docker import /var/cache/winspec/base-bookworm.tar winspec-base:bookworm",
    ".venv/bin/pip wheel --wheel-dir build/wheels . 'setuptools>=77'",
    "docker build --network=none --build-arg BASE=winspec-base:bookworm "
    "--build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/src/build/wheels "
    "-f manifests/images/controller.Dockerfile -t winspec-controller:0.2.0 .",
    "docker run --rm winspec-controller:0.2.0 --version",
)
#: Drawing the dashboard from a Prometheus: tests/integration/test_cluster_node.py runs it against
#: its own Prometheus (its URL, an output file of its own unless WINSPEC_DASHBOARD_PNG names one,
#: and a window covering its run); the second command is that test module, which CI's pytest run
#: runs (without the variable).
DASHBOARD_PICTURE = (
    ".venv/bin/python -m tests.dashboard_picture http://127.0.0.1:9090 docs/dashboard.png"
)
RUN_WITH_PROMETHEUS: tuple[str, ...] = (
    DASHBOARD_PICTURE,
    "sudo WINSPEC_DASHBOARD_PNG=docs/dashboard.png .venv/bin/python -m pytest "
    "tests/integration/test_cluster_node.py",
)
#: Commands for a Windows host: CI runs on Linux, so the test parses them with winspec's own
#: parser and loads their settings instead of running them.
WINDOWS_ONLY: frozenset[str] = frozenset(
    {
        r"winspec run --source docker --bundle-root C:\ProgramData\winspec\bundles",
        "winspec agent --tls-cert /etc/winspec/tls.crt --tls-key /etc/winspec/tls.key "
        "--allowed-identity system:serviceaccount:winspec-system:winspec "
        r"--token-audience winspec-agent --bundle-root 'C:\ProgramData\winspec\bundles'",
    }
)


def commands_of(document: Path) -> list[str]:
    """Every command of one page, in order, each ``&&`` part on its own."""
    text = document.read_text(encoding="utf-8")
    lines: list[str] = []
    for language, body in _FENCE.findall(text):
        if language != "sh":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = " ".join(line.split())
            if line and not line.startswith("#"):
                lines.append(line)
    lines.extend(_INLINE.findall(text))
    return [part.strip() for line in lines for part in line.split(" && ")]


def readme_commands() -> list[str]:
    """Every command of every page of ``DOCUMENTS``, page by page, each in order."""
    return [command for document in DOCUMENTS for command in commands_of(document)]


def known_commands() -> set[str]:
    """Every command some test or ``.ci/run`` runs (the lists above)."""
    return (
        set(RUN_BY_CI)
        | set(RUN_HERE)
        | set(RUN_EXPLAIN)
        | set(TOUR)
        | set(RUN_WITH_ENGINE)
        | set(RUN_WITH_KUBE)
        | set(RUN_EXAMPLE)
        | set(RUN_STUCK_DELETE)
        | set(BENCH_KUBE)
        | set(RUN_MANIFESTS)
        | set(RUN_WITH_IMAGE)
        | set(RUN_WITH_PROMETHEUS)
        | WINDOWS_ONLY
    )


def argv(command: str, extra: tuple[str, ...] = ()) -> list[str]:
    """A page's command as an argument list for this interpreter (``.venv/bin/`` is its venv)."""
    words = shlex.split(command)
    if words[0] == ".venv/bin/winspec":
        words = [sys.executable, "-m", "adapters.cli", *words[1:]]
    elif words[0] == ".venv/bin/python":
        words = [sys.executable, *words[1:]]
    elif words[0] == ".venv/bin/pip":
        words = [sys.executable, "-m", "pip", *words[1:]]
    return [*words, *extra]
