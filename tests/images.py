"""The controller's Linux image (manifests/images/controller.Dockerfile), built with no image
registry: the base is the Debian tarball .ci/build-base-image.sh makes, the Python dependencies
are wheels built on the host (the build itself runs with --network=none), and the README's
commands do it (tests/readme_commands.py, RUN_WITH_IMAGE) against a private dockerd.

Built once per session (the ``controller_image`` fixture): test_controller_image.py runs it,
the one-node cluster (tests/node.py) imports it with ``docker save``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from tests.dockerd import DockerDaemon
from tests.processes import clean_env
from tests.readme_commands import ROOT, RUN_WITH_IMAGE, argv

#: Where .ci/build-base-image.sh leaves the base tarball (WINSPEC_BASE_CACHE changes the folder).
README_TARBALL = "/var/cache/winspec/base-bookworm.tar"
IMAGE = "winspec-controller:0.2.0"
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


def image_unavailable(reason: str) -> NoReturn:
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

    def save(self, out: Path) -> Path:
        """``docker save`` the image into ``out`` (what a node's containerd imports)."""
        proc = self.docker("save", "--output", str(out), IMAGE, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return out


def build_controller_image(daemon: DockerDaemon, workdir: Path) -> Built:
    """Build the controller image on ``daemon`` with the README's import, wheel and build
    commands, run in a copy of the repository under ``workdir``."""
    if not base_tarball().is_file():
        image_unavailable(f"no base image tarball {base_tarball()} (run .ci/build-base-image.sh)")
    client = docker_client()
    if client is None:
        image_unavailable("no docker client (apt-get install docker.io)")
    context = workdir / "winspec"
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
    env |= {"DOCKER_HOST": daemon.host, "DOCKER_BUILDKIT": "0"}
    image = Built(daemon, client, env, context, {})
    for command in RUN_WITH_IMAGE[:-1]:
        proc = image.run(image.command(command))
        assert proc.returncode == 0, f"{command}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        image.outputs[command] = proc.stdout
    return image
