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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.cli import version
from tests.clustermode import bundle, ready_object, wc_path, windows_container
from tests.crd import MANIFESTS
from tests.images import BASE_IMAGE, IMAGE, USER, Built
from tests.kube import KubeCluster
from tests.netns import LoopbackRelay
from tests.readme_commands import RUN_WITH_IMAGE
from tests.support.waiting import wait_for

# Building takes about a minute on overlay2 (several on vfs), most of it `pip wheel`.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


@pytest.fixture
def built(controller_image: Built) -> Built:
    """The session's controller image (tests/images.py), built by the README's commands."""
    return controller_image


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
