"""A newcomer's edges: the licence metadata, --version, generate on a terminal, the bundle root."""

from __future__ import annotations

import importlib.metadata
import os
import pty
import subprocess
import tomllib
from pathlib import Path

import pytest

from adapters.cli import version
from adapters.run import check_bundle_root
from controller.errors import PermanentError
from tests.processes import clean_env, winspec_run_command

ROOT = Path(__file__).resolve().parents[3]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
NO_ENGINE = "unix:///nonexistent/winspec-test/docker.sock"
CLI = [*winspec_run_command()[:3]]  # the interpreter, -m, adapters.cli


def test_license_is_an_spdx_expression() -> None:
    """pyproject's licence is the SPDX string (PEP 639), with a setuptools that reads it."""
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]


def test_version_flag_prints_the_installed_version() -> None:
    """`winspec --version` prints `winspec <version>`, the installed distribution's, exit 0."""
    proc = subprocess.run(
        [*CLI, "--version"], capture_output=True, env=clean_env(), timeout=60, check=False
    )
    assert proc.returncode == 0
    installed = importlib.metadata.version("winspec")
    assert proc.stdout.decode() == f"winspec {installed}\n"
    assert version() == installed
    # pyproject.toml takes the version from the one constant, which --version prints.
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "adapters.version.VERSION"
    }


def test_generate_without_argument_on_a_terminal_prints_usage() -> None:
    """`winspec generate` with no argument and a terminal on stdin prints usage and exits 2."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run(
            [*CLI, "generate"],
            stdin=terminal,
            capture_output=True,
            env=clean_env(),
            timeout=30,
            check=False,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert proc.returncode == 2
    stderr = proc.stderr.decode()
    assert stderr.startswith("usage: winspec generate ")
    assert "give a request file, or '-' to read standard input" in stderr
    assert proc.stdout == b""


def test_bundle_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    """A bundle root that is a file is refused, naming the path and the setting."""
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(PermanentError) as info:
        check_bundle_root(str(path))
    assert str(info.value) == (
        f"bundle root (--bundle-root, WINSPEC_BUNDLE_ROOT, bundle_root) {path} exists and is "
        "not a directory"
    )


def test_bundle_root_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    """A bundle root below a file cannot be created: refused with the reason."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermanentError, match="is not a directory and cannot be created: Not a"):
        check_bundle_root(str(tmp_path / "file" / "bundles"))


def test_bundle_root_where_nothing_can_be_created_is_refused() -> None:
    """A directory in which no directory can be made (/proc, even for root) is refused."""
    with pytest.raises(PermanentError, match=r"/proc is not writable"):
        check_bundle_root("/proc")


def test_a_usable_bundle_root_is_created_and_left_clean(tmp_path: Path) -> None:
    """A missing bundle root is created (owner only); the probe leaves nothing in it."""
    root = tmp_path / "a" / "bundles"
    check_bundle_root(str(root))
    assert root.is_dir()
    assert root.stat().st_mode & 0o777 == 0o700
    assert list(root.iterdir()) == []
    check_bundle_root(str(root))  # an existing, empty root passes too


def test_run_checks_the_bundle_root_before_connecting(tmp_path: Path) -> None:
    """`winspec run` with a file as bundle root exits 2 naming it, before reaching the engine."""
    path = tmp_path / "file"
    path.write_text("x")
    proc = subprocess.run(
        [
            *winspec_run_command("--bundle-root", str(path)),
            "--docker-host",
            NO_ENGINE,
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.decode() == (
        "winspec: bundle root (--bundle-root, WINSPEC_BUNDLE_ROOT, bundle_root) "
        f"{path} exists and is not a directory\n"
    )
