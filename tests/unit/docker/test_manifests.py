"""The swarm manifest and the image it runs: what Docker mode needs is mounted and passed.

The stack file is parsed as YAML (PyYAML, a test dependency) and checked for what the resolver
reads from the node's file system; the Dockerfile, which cannot be built here (Windows
image), is checked for its base, its install and its entry point.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from adapters.run import add_run_parser

SWARM = Path(__file__).resolve().parents[3] / "manifests" / "swarm"
WINDOWSFILTER = "C:\\ProgramData\\docker\\windowsfilter"
CREDENTIAL_SPECS = "C:\\ProgramData\\docker\\CredentialSpecs"


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    """The stack file, YAML anchors and merge keys resolved."""
    yaml = pytest.importorskip("yaml")
    loaded: dict[str, Any] = yaml.safe_load((SWARM / "winspec-stack.yml").read_text())
    return loaded


def _mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["target"]: v for v in service["volumes"]}


def test_every_service_mounts_what_the_resolver_reads(stack: dict[str, Any]) -> None:
    """Each service mounts the pipe, bundles, CredentialSpecs and windowsfilter (read only)."""
    assert set(stack["services"]) == {"winspec", "winspec-worker"}
    for name, service in stack["services"].items():
        mounts = _mounts(service)
        assert mounts[WINDOWSFILTER]["source"] == WINDOWSFILTER, name
        assert mounts[WINDOWSFILTER]["read_only"] is True, name
        assert mounts[CREDENTIAL_SPECS]["read_only"] is True, name
        assert mounts["\\\\.\\pipe\\docker_engine"]["type"] == "npipe", name
        assert not mounts["C:\\ProgramData\\winspec\\bundles"].get("read_only"), name


def test_workers_get_a_swarm_host_and_managers_do_not(stack: dict[str, Any]) -> None:
    """The worker service passes --swarm-host with TLS settings; the manager service does not."""
    manager, worker = stack["services"]["winspec"], stack["services"]["winspec-worker"]
    assert "node.role == manager" in manager["deploy"]["placement"]["constraints"]
    assert "node.role == worker" in worker["deploy"]["placement"]["constraints"]
    assert not any(arg.startswith("--swarm-host") for arg in manager["command"])
    assert any(arg.startswith("--swarm-host=tcp://") for arg in worker["command"])
    assert worker["environment"]["DOCKER_TLS_VERIFY"] == "1"
    assert {s["target"] for s in worker["secrets"]} == {"ca.pem", "cert.pem", "key.pem"}


def test_every_command_line_option_is_one_winspec_run_knows(stack: dict[str, Any]) -> None:
    """Every --option the services pass is an option of `winspec run`."""
    parser = argparse.ArgumentParser()
    add_run_parser(parser.add_subparsers())
    for service in stack["services"].values():
        assert service["command"][0] == "run"
        parsed = parser.parse_args(service["command"])
        assert parsed.bundle_root == "C:\\ProgramData\\winspec\\bundles"


def test_dockerfile_installs_winspec_on_server_core() -> None:
    """The image: Windows Server Core, Python 3.11, `pip install .`, entry point winspec."""
    text = (SWARM / "Dockerfile").read_text()
    assert text.startswith("# escape=`\n")
    assert "FROM mcr.microsoft.com/windows/servercore:${WINDOWS_VERSION}" in text
    assert "ARG PYTHON_VERSION=3.11." in text
    assert "pip install --no-cache-dir --disable-pip-version-check ." in text
    assert 'ENTRYPOINT ["winspec"]' in text
