"""`winspec explain --docker-host … CONTAINER` against a real dockerd: the request Docker mode
would build for a live container, explained field by field."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from adapters.cli import main
from tests.dockerd import DockerDaemon

pytestmark = pytest.mark.docker


def _explain(
    dockerd: DockerDaemon, container: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    rc = main(
        [
            "explain",
            "--docker-host",
            dockerd.host,
            "--bundle-root",
            str(tmp_path / "bundles"),
            "--secrets-dir",
            str(tmp_path / "secrets"),
            "--format",
            "json",
            container,
        ]
    )
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_explain_of_a_live_container_by_name(
    dockerd: DockerDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """S4, S5, S10: a container's host name, environment and bind come with their rules."""
    name = f"explain-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    data.mkdir()
    container_id = dockerd.create_container(
        name,
        Hostname="explained",
        Env=["GREETING=hi"],
        HostConfig={"Binds": [f"{data}:/data:ro"]},
    )
    try:
        rc, out, err = _explain(dockerd, name, tmp_path, capsys)
        assert rc == 0, err
        fields = {f["field"]: f for f in json.loads(out)}
        hostname = fields["hostname"]
        assert hostname["value"] == dockerd.inspect_container(container_id)["Config"]["Hostname"]
        assert hostname["rules"] == ["S4"]
        assert hostname["from"] == ["container.Config.Hostname"]
        assert "GREETING=hi" in fields["process.env"]["value"]
        assert fields["process.env"]["rules"] == ["S10"]
        (bind,) = [f for f in fields.values() if f["value"] == "/data"]
        index = bind["field"].removesuffix(".destination")
        assert fields[index + ".source"]["value"] == str(data)
        assert fields[index + ".source"]["from"] == ["container.Mounts[0].Source"]
        assert "S5" in bind["rules"]
    finally:
        dockerd.remove_container(container_id)


def test_explain_of_a_missing_container_exits_2(
    dockerd: DockerDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A container the engine does not have is an error naming it, exit 2."""
    rc, out, err = _explain(dockerd, "no-such-container-here", tmp_path, capsys)
    assert rc == 2
    assert out == ""
    assert "no container no-such-container-here" in err
