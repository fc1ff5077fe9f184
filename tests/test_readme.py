"""Every command of the README, DEVELOPMENT.md and docs/ is run by a test or by .ci/run, so none
can go stale (tests/test_docs.py checks it page by page)."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from adapters.agent.settings import load_agent_settings
from adapters.cli import _build_parser
from controller.settings import load_settings
from tests.processes import clean_env
from tests.readme_commands import (
    CI_RUN,
    CLUSTER_MODE,
    README,
    ROOT,
    RUN_BY_CI,
    RUN_HERE,
    TOUR,
    WINDOWS_ONLY,
    argv,
    commands_of,
    known_commands,
    readme_commands,
)

COMMANDS = readme_commands()


def test_every_documented_command_is_run_somewhere() -> None:
    """Each documented command is listed as run here, with an engine, by .ci/run or on Windows."""
    known = known_commands()
    assert len(COMMANDS) > 10
    unknown = sorted(set(COMMANDS) - known)
    assert not unknown, f"documented commands no test or .ci/run runs: {unknown}"
    stale = sorted(known - set(COMMANDS))
    assert not stale, f"listed commands no page has any more: {stale}"


def test_the_tour_is_in_the_readme_in_order() -> None:
    """The 30-second tour's lines appear in the README itself, together and in order."""
    commands = commands_of(README)
    start = commands.index(TOUR[0])
    assert tuple(commands[start : start + len(TOUR)]) == TOUR


@pytest.mark.parametrize(("command", "line"), sorted(RUN_BY_CI.items()))
def test_ci_runs_the_command(command: str, line: str) -> None:
    """.ci/run runs the README command (the listed line, which starts as the command does)."""
    ci_lines = [" ".join(x.split()) for x in CI_RUN.read_text(encoding="utf-8").splitlines()]
    assert line in ci_lines
    head = command.split()[0].removeprefix(".venv/bin/")
    assert head in line


@pytest.mark.parametrize("command", sorted(RUN_HERE))
def test_readme_command_runs(command: str, tmp_path: Path) -> None:
    """The documented command exits 0 and prints what its page says it prints."""
    proc = subprocess.run(
        argv(command, RUN_HERE[command]),
        cwd=ROOT,
        env=clean_env() | {"TMPDIR": str(tmp_path)},
        capture_output=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    if command.startswith(".venv/bin/winspec generate "):
        assert json.loads(proc.stdout)["ociVersion"] == "1.0.2"
    elif command.endswith(" schema"):
        assert json.loads(proc.stdout)["title"] == "winspec request document"
    else:
        assert proc.stdout.strip(), "a benchmark prints its figures"


@pytest.mark.parametrize("command", sorted(WINDOWS_ONLY))
def test_windows_command_parses_into_valid_settings(command: str) -> None:
    """A Windows-only command (run or agent) parses with winspec's parser into settings."""
    # The agent example quotes its Windows path as a shell would need; the run example does not.
    words = shlex.split(command) if "'" in command else command.split()
    args = _build_parser().parse_args(words[1:])
    if args.command == "agent":
        flags = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
        agent = load_agent_settings(flags)
        assert agent.bundle_root == flags["bundle_root"]
        return
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    settings = load_settings(flags, origins=("flag",))
    assert settings.bundle_root == flags["bundle_root"]


def test_the_cluster_example_holds_the_documented_resource() -> None:
    """examples/cluster's WindowsContainer is docs/cluster-mode.md's example, byte for byte."""
    text = CLUSTER_MODE.read_text(encoding="utf-8")
    start = text.index("```yaml\napiVersion: winspec.io/v1alpha1\nkind: WindowsContainer\n")
    readme_resource = text[start + len("```yaml\n") : text.index("```", start + 3)]
    example = ROOT / "examples" / "cluster" / "resources" / "windowscontainer.yaml"
    lines = example.read_text(encoding="utf-8").splitlines(keepends=True)
    body = "".join(line for line in lines if not line.startswith("#"))
    assert body == readme_resource
