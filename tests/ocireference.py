"""The OCI reference types as an independent consumer of winspec's output (S32).

``tests/ocicheck/main.go`` decodes a ``config.json`` strictly into ``specs.Spec`` (the Go types
of the runtime-spec, unknown fields refused), encodes it again and compares the bytes. It is
built once per test session, offline, against Debian's ``golang-github-opencontainers-specs-dev``
and ``golang-go`` (``.ci/install-oci-checks.sh`` installs both): ``GOPATH=/usr/share/gocode``,
``GO111MODULE=off``, ``GOPROXY=off``, nothing fetched.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.schema import RUNTIME_SPEC_SOURCE

GOPATH = RUNTIME_SPEC_SOURCE.parents[3]
SPECS_GO = RUNTIME_SPEC_SOURCE / "specs-go" / "config.go"
PROGRAM = Path(__file__).resolve().parent / "ocicheck" / "main.go"
INSTALL_HINT = (
    "install them with .ci/install-oci-checks.sh"
    " (golang-go, golang-github-opencontainers-specs-dev)"
)


def _go() -> str | None:
    """The go command: on PATH, or where Debian's golang-go puts it."""
    return shutil.which("go") or next(
        (p for p in ("/usr/lib/go/bin/go", "/usr/bin/go") if os.access(p, os.X_OK)), None
    )


def unavailable_reason() -> str | None:
    """Why the Go check cannot run here (no go, no specs-go), or None when it can."""
    if _go() is None:
        return f"the go command is not installed; {INSTALL_HINT}"
    if not SPECS_GO.is_file():
        return f"the OCI Go types are not installed at {SPECS_GO}; {INSTALL_HINT}"
    return None


@functools.cache
def ocicheck_binary() -> Path:
    """Build tests/ocicheck once per process (offline) and return the executable's path."""
    go = _go()
    assert go is not None, unavailable_reason()
    work = Path(tempfile.mkdtemp(prefix="winspec-ocicheck-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    binary = work / "ocicheck"
    env = {
        **os.environ,
        "GOPATH": str(GOPATH),
        "GO111MODULE": "off",
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOCACHE": str(work / "cache"),
        "CGO_ENABLED": "0",
    }
    done = subprocess.run(
        [go, "build", "-o", str(binary), str(PROGRAM)],
        env=env,
        cwd=PROGRAM.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"building {PROGRAM} failed:\n{done.stderr}")
    return binary


def check_files(paths: Sequence[Path]) -> dict[str, str]:
    """Run ocicheck over config.json files; the failures, as path → error (empty: all passed)."""
    assert paths, "nothing to check"
    done = subprocess.run(
        [str(ocicheck_binary()), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode not in (0, 1):
        raise AssertionError(f"ocicheck failed to run ({done.returncode}): {done.stderr}")
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["path"] for r in results] == [str(p) for p in paths], "ocicheck skipped a file"
    failures = {r["path"]: r["error"] for r in results if not r["ok"]}
    assert (done.returncode == 1) == bool(failures)
    return failures
