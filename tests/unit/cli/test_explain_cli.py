"""`winspec explain` and `winspec diff` on the command line, and the examples of docs/explain.md."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from adapters.cli import main
from tests.processes import clean_env
from tests.readme_commands import RUN_EXPLAIN, argv

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "explain.md"
EXAMPLE = ROOT / "examples" / "process-isolated.json"
CONTAINERD = ROOT / "examples" / "diff" / "containerd-process-isolated.json"
CREDSPEC = ROOT / "examples" / "credential-spec.json"
_BLOCKS = re.compile(
    r"^```sh\n(.*?)\n```\n\nprints\n\n```text\n(.*?)^```", re.DOTALL | re.MULTILINE
)


def _shown() -> dict[str, str]:
    """Each command of the page and the output the page shows after it."""
    return dict(_BLOCKS.findall(PAGE.read_text(encoding="utf-8")))


def test_the_page_shows_the_output_of_each_of_its_commands() -> None:
    """Every command of docs/explain.md is one of RUN_EXPLAIN and has its output block."""
    assert set(_shown()) == set(RUN_EXPLAIN)


@pytest.mark.parametrize("command", RUN_EXPLAIN)
def test_documented_command_prints_what_the_page_shows(command: str) -> None:
    """S5–S15: the documented explain and diff commands print exactly the page's output."""
    proc = subprocess.run(
        argv(command), cwd=ROOT, env=clean_env(), capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == (1 if " diff " in command else 0), proc.stderr.decode()
    assert proc.stdout.decode() == _shown()[command]


def test_explain_json_lists_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    """S1–S15: --format json gives one object per field, each with rules and request fields."""
    assert main(["explain", str(EXAMPLE), "--format", "json"]) == 0
    fields = json.loads(capsys.readouterr().out)
    assert {"ociVersion", "process.cwd", "windows.layerFolders"} <= {f["field"] for f in fields}
    assert all(f["rules"] and set(f) == {"field", "value", "rules", "from"} for f in fields)


def test_explain_of_an_unknown_field_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """--field naming no field of the spec is an error, not an empty answer."""
    assert main(["explain", str(EXAMPLE), "--field", "process.nothing"]) == 2
    assert "no field process.nothing" in capsys.readouterr().err


def test_explain_never_prints_a_credential_spec(capsys: pytest.CaptureFixture[str]) -> None:
    """S26: the example's gMSA credential spec appears as size and digest only, text or JSON."""
    document = json.loads(CREDSPEC.read_bytes())
    contents = [v for kind in document["credentialSpecs"].values() for v in kind.values()]
    assert contents
    for fmt in ("text", "json"):
        assert main(["explain", str(CREDSPEC), "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert "sha256" in out
        assert not any(c in out or json.dumps(c) in out for c in contents)


def test_explain_of_a_refused_request_prints_the_rule_error() -> None:
    """S2: a request the rules refuse prints the error and exits 2, as generate does."""
    doc = {"container": {"Id": "a" * 64}, "image": {"Os": "plan9"}, "layerFolders": ["C:\\l"]}
    proc = subprocess.run(
        argv(".venv/bin/winspec explain -"),
        input=json.dumps(doc).encode(),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert 'Unsupported platform "plan9"' in proc.stderr.decode()


def test_diff_of_a_spec_with_its_own_request_agrees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """S32: winspec's own spec compared with its request has no difference and exits 0."""
    spec = tmp_path / "config.json"
    assert main(["generate", str(EXAMPLE), "--output", str(spec)]) == 0
    assert main(["diff", str(spec), str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == "no differences\n"


def test_diff_of_two_specs_takes_the_rules_from_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """S5: two specs with --request give the same differences, with rules, as spec + request."""
    spec = tmp_path / "config.json"
    assert main(["generate", str(EXAMPLE), "--output", str(spec)]) == 0
    capsys.readouterr()
    assert main(["diff", str(CONTAINERD), str(EXAMPLE), "--format", "json"]) == 1
    with_request = json.loads(capsys.readouterr().out)
    assert (
        main(["diff", str(CONTAINERD), str(spec), "--request", str(EXAMPLE), "--format", "json"])
        == 1
    )
    assert json.loads(capsys.readouterr().out) == with_request
    assert {d["field"]: d["rules"] for d in with_request}["mounts"] == ["S5"]


@pytest.mark.parametrize("content", [b"", b"[1]", b"{not json"])
def test_diff_of_an_unreadable_document_exits_2(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A spec that is not a JSON object is refused with its name, exit 2."""
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    assert main(["diff", str(bad), str(EXAMPLE)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_help_of_both_commands_names_what_they_do(capsys: pytest.CaptureFixture[str]) -> None:
    """`explain --help` and `diff --help` describe the rules, the request fields and the exits."""
    for command, words in (
        ("explain", ("S1-S32", "--field", "--docker-host", "--kubeconfig")),
        ("diff", ("containerd", "order")),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert all(w in out for w in words), out
