"""The controller's Linux image (manifests/images/controller.Dockerfile), built and run here with
no image registry: the base is the Debian tarball .ci/build-base-image.sh makes, the Python
dependencies are wheels built on the host (the build itself runs with --network=none), and the
README's commands do it (tests/readme_commands.py, RUN_WITH_IMAGE) against a private dockerd.
The image then runs `winspec run --source kubernetes` against the real kube-apiserver and
brings a WindowsContainer to Ready.

Without the base tarball or a docker client these tests skip; with CI=true they fail.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from adapters.cli import version
from tests.clustermode import bundle, ready_object, wc_path, windows_container
from tests.crd import MANIFESTS
from tests.dockerd import DockerDaemon
from tests.kube import KubeCluster
from tests.netns import LoopbackRelay
from tests.processes import clean_env
from tests.readme_commands import ROOT, RUN_WITH_IMAGE, argv
from tests.support.waiting import wait_for

# Building takes about a minute on overlay2 (several on vfs), most of it `pip wheel`.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

#: Where .ci/build-base-image.sh leaves the base tarball (WINSPEC_BASE_CACHE changes the folder).
README_TARBALL = "/var/cache/winspec/base-bookworm.tar"
IMAGE = "winspec-controller:0.1.0"
BASE_IMAGE = "winspec-base:bookworm"
#: The user the Dockerfile runs as (and the central Deployment's securityContext).
USER = "10001:10001"


def base_tarball() -> Path:
    """The base image's root file system tarball, where .ci/build-base-image.sh writes it."""
    cache = os.environ.get("WINSPEC_BASE_CACHE")
    return Path(cache) / "base-bookworm.tar" if cache else Path(README_TARBALL)


def docker_client() -> str | None:
    """Debian's docker.io client (next to its dockerd), else any ``docker`` on PATH."""
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    return shutil.which("docker")


def _unavailable(reason: str) -> NoReturn:
    """Skip, or on CI (``CI=true``) fail: CI must really build the image."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"the controller image is required when CI=true: {reason}", pytrace=False)
    pytest.skip(f"the controller image cannot be built here: {reason}")


@dataclass
class Built:
    """The built image's engine, a client for it and the build's output."""

    daemon: DockerDaemon
    client: str
    env: dict[str, str]
    context: Path
    outputs: dict[str, str]

    def command(self, command: str) -> list[str]:
        """A README command as an argument list (``docker`` is the client, for the daemon)."""
        words = argv(command.replace(README_TARBALL, str(base_tarball())))
        return [self.client, *words[1:]] if words[0] == "docker" else words

    def run(
        self, words: list[str], *, timeout: float = 300, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the build context with the daemon's environment."""
        return subprocess.run(
            words, cwd=self.context, env=self.env, input=stdin, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip

    def docker(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``docker <args>`` against the private daemon."""
        return self.run([self.client, *args], timeout=timeout)


@pytest.fixture(scope="module")
def built(build_dockerd: DockerDaemon, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The README's import, wheel and build commands, run in a copy of the repository."""
    if not base_tarball().is_file():
        _unavailable(f"no base image tarball {base_tarball()} (run .ci/build-base-image.sh)")
    client = docker_client()
    if client is None:
        _unavailable("no docker client (apt-get install docker.io)")
    context = tmp_path_factory.mktemp("image") / "winspec"
    # The whole repository, as a clone has it: .dockerignore must keep tests/, docs/... out.
    shutil.copytree(
        ROOT,
        context,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "__pycache__", ".*_cache", ".hypothesis", "*.egg-info"
        ),
    )
    env = {k: v for k, v in clean_env().items() if k != "PYTHONPATH"}
    # The classic builder: Debian's docker.io 20.10 client has no buildx.
    env |= {"DOCKER_HOST": build_dockerd.host, "DOCKER_BUILDKIT": "0"}
    image = Built(build_dockerd, client, env, context, {})
    for command in RUN_WITH_IMAGE[:-1]:
        proc = image.run(image.command(command))
        assert proc.returncode == 0, f"{command}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        image.outputs[command] = proc.stdout
    return image


def _inspect(image: Built, name: str) -> dict[str, Any]:
    proc = image.docker("image", "inspect", name)
    assert proc.returncode == 0, proc.stderr
    inspected: dict[str, Any] = json.loads(proc.stdout)[0]
    return inspected


def test_image_is_built_on_the_debian_base_as_user_10001(built: Built) -> None:
    """The offline build's image sits on the imported Debian base, runs as 10001, enters winspec."""
    base, image = _inspect(built, BASE_IMAGE), _inspect(built, IMAGE)
    assert image["RootFS"]["Layers"][0] == base["RootFS"]["Layers"][0]
    assert image["Config"]["User"] == USER
    assert image["Config"]["Entrypoint"] == ["winspec"]
    assert image["Config"]["Cmd"] == ["run", "--source=kubernetes"]
    (build_command,) = (c for c in built.outputs if c.startswith("docker build "))
    assert "--network=none" in build_command
    assert "Successfully tagged " + IMAGE in built.outputs[build_command]


def test_build_context_holds_only_what_the_image_installs(built: Built) -> None:
    """.dockerignore lets only pyproject.toml, README.md, the packages and the wheels in."""
    copy_context = f"FROM {BASE_IMAGE}\nCOPY . /context\n"
    tag = "winspec-context:test"
    proc = built.run(
        [built.client, "build", "--network=none", "-q", "-t", tag, "-f", "-", "."],
        stdin=copy_context,
    )
    assert proc.returncode == 0, proc.stderr
    listing = (
        "import os; print(*sorted(os.listdir('/context')), '|', *os.listdir('/context/build'))"
    )
    proc = built.docker("run", "--rm", "--network=none", tag, "python3", "-c", listing)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "README.md", "adapters", "build", "controller", "pyproject.toml", "|", "wheels"
    ]  # fmt: skip
    assert (built.context / "tests").is_dir()  # in the copy, kept out of the context


def test_readme_run_prints_the_version(built: Built) -> None:
    """The README's `docker run … --version` prints the version of the winspec it installed."""
    proc = built.run(built.command(RUN_WITH_IMAGE[-1]))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"winspec {version()}"


def test_help_runs_as_the_non_root_user_on_debians_python(built: Built) -> None:
    """`--help` works; the process is uid/gid 10001 and its python is Debian's 3.11 in a venv."""
    proc = built.docker("run", "--rm", "--network=none", IMAGE, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: winspec" in proc.stdout
    assert "agent" in proc.stdout
    probe = (
        "import os, sys; "
        "print(os.getuid(), os.getgid(), sys.prefix, os.path.realpath(sys.executable), "
        "'%d.%d' % sys.version_info[:2])"
    )
    proc = built.docker(
        "run", "--rm", "--network=none", "--entrypoint", "python3", IMAGE, "-c", probe
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["10001", "10001", "/opt/winspec", "/usr/bin/python3.11", "3.11"]


@pytest.fixture
def container_name(built: Built) -> Iterator[str]:
    """A unique container name, the container removed afterwards."""
    name = f"winspec-{secrets.token_hex(4)}"
    yield name
    built.docker("rm", "--force", name)


@pytest.mark.kube
@pytest.mark.usefixtures("node")
def test_container_reconciles_a_windowscontainer_to_ready(
    built: Built,
    kube: KubeCluster,
    kube_namespace: str,
    container_name: str,
    tmp_path: Path,
) -> None:
    """The image's `winspec run --source kubernetes` brings a WindowsContainer to Ready as 10001."""
    for path in (MANIFESTS / "base" / "namespace.yaml", MANIFESTS / "base" / "rbac.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                kube.apply(doc)
    kubeconfig = kube.kubeconfig(
        kube.service_account_token("winspec-system", "winspec"), tmp_path / "kubeconfig"
    )
    kubeconfig.chmod(0o644)  # read by uid 10001 in the container
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    os.chown(bundles, 10001, 10001)
    # --network=host is the private dockerd's namespace: the relay puts the API server's port
    # on its loopback, so the kubeconfig's https://127.0.0.1:<port> and certificate still fit.
    assert built.daemon.pid is not None
    with LoopbackRelay(built.daemon.pid, kube.port):
        proc = built.docker(
            "run", "--detach", "--name", container_name, "--network=host",
            "--volume", f"{kubeconfig}:/etc/winspec/kubeconfig:ro",
            "--volume", f"{kube.ca}:{kube.ca}:ro",
            "--volume", f"{bundles}:/var/lib/winspec/bundles",
            IMAGE, "run", "--source", "kubernetes", "--kubeconfig", "/etc/winspec/kubeconfig",
            "--bundle-root", "/var/lib/winspec/bundles", "--no-leader-elect",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        kube.api("POST", wc_path(kube_namespace), windows_container("web"))
        try:
            ready = wait_for(ready_object(kube, kube_namespace, "web"), 60, what="Ready")
        except TimeoutError:
            logs = built.docker("logs", "--tail", "40", container_name)
            pytest.fail(f"not Ready; container log:\n{logs.stdout}{logs.stderr}")
    config = bundle(tmp_path, kube_namespace, "web") / "config.json"
    assert json.loads(config.read_bytes())["ociVersion"] == "1.0.2"
    assert (config.stat().st_uid, config.stat().st_gid) == (10001, 10001)
    assert ready["status"]["observedGeneration"] == ready["metadata"]["generation"]
