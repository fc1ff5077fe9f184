"""`winspec run --source kubernetes` start-up failures: one line, the right exit code, no API
server needed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from adapters.cli import main
from adapters.kubernetes.client import kubeconfig_path
from tests.processes import free_port


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No WINSPEC_*, DOCKER_* or KUBECONFIG from the developer's shell."""
    for name in list(os.environ):
        if name.startswith(("WINSPEC_", "DOCKER_")) or name == "KUBECONFIG":
            monkeypatch.delenv(name)


def _run(tmp_path: Path, *args: str) -> int:
    return main(
        [
            "run", "--source", "kubernetes", "--listen", "127.0.0.1:0",
            "--bundle-root", str(tmp_path / "bundles"), "--retry-attempts", "1",
            "--log-level", "error", *args,
        ]
    )  # fmt: skip


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_kubeconfig_that_cannot_be_used_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kubeconfig file that does not exist is a bad setting: one line naming it, exit 2."""
    missing = tmp_path / "no-such-kubeconfig"
    assert _run(tmp_path, "--kubeconfig", str(missing)) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("winspec: cannot use the Kubernetes configuration")
    assert str(missing) in line


def test_an_unreachable_api_server_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An API server that does not answer: one line naming it, exit 1."""
    kubeconfig = tmp_path / "kubeconfig"
    server = f"http://127.0.0.1:{free_port()}"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: '{server}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    assert _run(tmp_path, "--kubeconfig", str(kubeconfig)) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"winspec: cannot reach the Kubernetes API server {server}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--namespace", "Not_A_Namespace"], "is not a namespace name"),
        (["--watch-timeout", "0"], "watch_timeout must be at least 1"),
        (["--dependency-grace-period", "-1"], "dependency_grace_period must be a number"),
        (["--dependency-grace-period", "inf"], "dependency_grace_period must be a number"),
        (["--agent-removal-grace", "-1"], "agent_removal_grace must be a number of seconds"),
        (["--agent-removal-grace", "inf"], "agent_removal_grace must be a number of seconds"),
    ],
)
def test_bad_cluster_settings_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """Cluster-mode settings are checked before anything starts."""
    assert _run(tmp_path, *args) == 2
    assert message in _one_line(capsys.readouterr().err)


def test_the_kubeconfig_is_found_as_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--kubeconfig, else KUBECONFIG's first file, else ~/.kube/config, else in-cluster."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert kubeconfig_path("/explicit", {"KUBECONFIG": "/env"}) == "/explicit"
    assert kubeconfig_path(None, {"KUBECONFIG": f"/a{os.pathsep}/b"}) == "/a"
    assert kubeconfig_path(None, {}) is None
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("{}")
    assert kubeconfig_path(None, {}) == str(tmp_path / ".kube" / "config")
