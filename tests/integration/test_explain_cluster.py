"""`winspec explain --kubeconfig … NAMESPACE/NAME` against the real kube-apiserver fixture: the
request cluster mode would build for a WindowsContainer, explained field by field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.cli import main
from tests.clustermode import secret, wc_path, windows_container
from tests.kube import KubeCluster

pytestmark = pytest.mark.kube

PAYLOAD = b"s3cr3t-payload-never-printed"


def _explain(
    kube: KubeCluster, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    root = str(tmp_path / "bundles")
    rc = main(
        ["explain", "--kubeconfig", str(kube.admin_kubeconfig), "--bundle-root", root, target]
    )
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_explain_of_a_windows_container(
    kube: KubeCluster,
    kube_namespace: str,
    node: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """S4, S5, S8: host name, command and secrets mount come with their rules; no Secret value."""
    ns = kube_namespace
    kube.apply(secret("db", {"pw": PAYLOAD}), namespace=ns)
    wc = windows_container(
        "web",
        nodeName=node,
        hostname="explained",
        secrets=[{"secretName": "db", "key": "pw", "target": "pw"}],
    )
    kube.api("POST", wc_path(ns), wc)
    rc, out, err = _explain(kube, f"{ns}/web", tmp_path, capsys)
    assert rc == 0, err
    lines = {line.split(" = ", 1)[0]: line for line in out.splitlines()}
    assert (
        lines["hostname"]
        == 'hostname = "explained"  [S4]  <- container.Config.Hostname, container.Config.Domainname'
    )
    assert "[S8]" in lines["process.args"]
    assert '"echo hello"' in lines["process.args"]
    (secrets_mount,) = [
        line for line in lines.values() if "internal\\\\secrets" in line and "destination" in line
    ]
    assert "<- secrets" in secrets_mount
    assert PAYLOAD.decode() not in out + err
    assert json.dumps(str(tmp_path / "bundles"))[1:-1] in out


def test_explain_of_a_missing_resource_exits_2(
    kube: KubeCluster, kube_namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A WindowsContainer the API server does not have is an error naming it, exit 2."""
    rc, out, err = _explain(kube, f"{kube_namespace}/nothing", tmp_path, capsys)
    assert rc == 2
    assert out == ""
    assert f"no WindowsContainer {kube_namespace}/nothing" in err
