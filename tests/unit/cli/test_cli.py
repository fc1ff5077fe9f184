"""The ``winspec`` command line: generate, schema, and run's settings handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from adapters.cli import main, request_schema
from adapters.run import _file_settings
from controller.errors import PermanentError
from controller.generate import encode_spec, generate
from controller.models import decode_request
from controller.settings import env_settings, load_settings

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
PROCESS_EXAMPLE = EXAMPLES / "process-isolated.json"


def _winspec(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the real console entry point in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "adapters.cli", *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_generate_prints_the_spec_of_a_request_file() -> None:
    """`winspec generate FILE` prints exactly the generator's config.json bytes and exits 0."""
    proc = _winspec("generate", str(PROCESS_EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    expected = encode_spec(generate(decode_request(PROCESS_EXAMPLE.read_bytes())).spec)
    assert proc.stdout == expected + b"\n"
    assert proc.stderr == b""


def test_generate_reads_standard_input() -> None:
    """`winspec generate -` reads the request from standard input."""
    proc = _winspec("generate", "-", stdin=PROCESS_EXAMPLE.read_bytes())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["hostname"] == "web01.corp.example"


def test_generate_writes_output_and_links_files(tmp_path: Path) -> None:
    """--output and --links write config.json and the link map to files, nothing to stdout."""
    out, links = tmp_path / "config.json", tmp_path / "links.json"
    example = EXAMPLES / "credential-spec.json"
    rc = main(["generate", str(example), "--output", str(out), "--links", str(links)])
    assert rc == 0
    assert json.loads(out.read_bytes())["ociVersion"] == "1.0.2"
    targets = [link["target"] for link in json.loads(links.read_bytes())["links"]]
    assert targets == ["C:\\ProgramData\\Docker\\secrets\\db-password", "C:\\app\\appsettings.json"]


def test_every_example_generates() -> None:
    """Every shipped example request gives a spec (the README's first command uses them)."""
    examples = sorted(EXAMPLES.glob("*.json"))
    assert len(examples) >= 6
    for example in examples:
        proc = _winspec("generate", str(example))
        assert proc.returncode == 0, (example.name, proc.stderr)


def test_refused_request_prints_the_rule_error_and_exits_2() -> None:
    """S2: a request the rules refuse prints the exact message on stderr and exits 2."""
    doc = {"container": {"Id": "a" * 64}, "image": {"Os": "plan9"}, "layerFolders": ["C:\\l"]}
    proc = _winspec("generate", stdin=json.dumps(doc).encode())
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert proc.stderr.decode().strip() == (
        'winspec: Unsupported platform "plan9": image.Os must be "windows" or "linux"'
    )


@pytest.mark.skipif(sys.platform == "win32", reason="checks the non-Windows behaviour")
def test_unresolved_file_credential_spec_under_a_windows_root_exits_2() -> None:
    """S23: off Windows, a file:// spec under the default Windows daemon root is refused clearly."""
    doc = {
        "container": {
            "Id": "a" * 64,
            "HostConfig": {"SecurityOpt": ["credentialspec=file://w.json"]},
        },
        "image": {"Os": "windows"},
        "layerFolders": ["C:\\layers\\base", "C:\\layers\\rw"],
    }
    proc = _winspec("generate", stdin=json.dumps(doc).encode())
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == (
        "winspec: file:// credential spec w.json is under a Windows daemon root "
        "(C:\\ProgramData\\docker\\CredentialSpecs); it can only be read on that Windows "
        "host — resolve it into the request's credentialSpecs.file map"
    )


def test_wrong_type_names_the_field_and_exits_2() -> None:
    """A field of the wrong type is reported with its JSON path, exit code 2."""
    doc = {"container": {"Id": "x", "HostConfig": {"CpuShares": "lots"}}, "image": {}}
    proc = _winspec("generate", stdin=json.dumps(doc).encode())
    assert proc.returncode == 2
    assert "$.container.HostConfig.CpuShares" in proc.stderr.decode()


def test_missing_request_file_exits_2(tmp_path: Path) -> None:
    """A request file that cannot be read is a clear one-line error, exit code 2."""
    proc = _winspec("generate", str(tmp_path / "absent.json"))
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("winspec: cannot read request")


def test_warnings_go_to_stderr() -> None:
    """S20: CPU options discarded under process isolation are warned about on stderr."""
    proc = _winspec("generate", str(EXAMPLES / "devices.json"))
    assert proc.returncode == 0
    assert b"CPU percent discarded" in proc.stderr
    assert b"warning" not in proc.stdout


def test_help_explains_every_command() -> None:
    """`--help` of winspec, generate and run names the commands and every option."""
    top = _winspec("--help").stdout.decode()
    for command in ("generate", "run", "schema"):
        assert command in top
    gen = _winspec("generate", "--help").stdout.decode()
    for text in ("--output", "--links", "request document"):
        assert text in gen
    run = _winspec("run", "--help").stdout.decode()
    for flag in ("--docker-host", "--bundle-root", "--secrets-dir", "--workers", "--listen"):
        assert flag in run


def test_schema_command_matches_the_shipped_schema() -> None:
    """`winspec schema` prints controller/request.schema.json byte for byte (kept in sync)."""
    shipped = (ROOT / "controller" / "request.schema.json").read_bytes()
    assert request_schema() == shipped
    proc = _winspec("schema")
    assert proc.stdout == shipped


def test_shipped_schema_accepts_every_example() -> None:
    """The request JSON Schema accepts every example request."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "controller" / "request.schema.json").read_bytes())
    validator = jsonschema.Draft202012Validator(schema)
    for example in sorted(EXAMPLES.glob("*.json")):
        errors = list(validator.iter_errors(json.loads(example.read_bytes())))
        assert errors == [], (example.name, [e.message for e in errors])


def test_settings_precedence_file_then_env_then_flags() -> None:
    """Flags beat WINSPEC_* variables, which beat the config file, which beats defaults."""
    settings = load_settings(
        {"workers": 2, "listen": "127.0.0.1:1", "log_level": "debug"},
        env_settings({"WINSPEC_WORKERS": "3", "WINSPEC_LISTEN": "127.0.0.1:2"}),
        {"workers": 5},
    )
    assert settings.workers == 5
    assert settings.listen == "127.0.0.1:2"
    assert settings.log_level == "debug"
    assert settings.resync_interval == 300.0


def test_docker_host_environment_variable_is_honoured() -> None:
    """DOCKER_HOST sets the engine endpoint when no flag does."""
    assert env_settings({"DOCKER_HOST": "tcp://h:2376"})["docker_host"] == "tcp://h:2376"


def test_swarm_host_from_flag_or_environment() -> None:
    """--swarm-host and WINSPEC_SWARM_HOST set the manager endpoint; by default there is none."""
    assert load_settings().swarm_host is None
    from_env = load_settings(env_settings({"WINSPEC_SWARM_HOST": "tcp://manager:2376"}))
    assert from_env.swarm_host == "tcp://manager:2376"
    run = _winspec("run", "--help").stdout.decode()
    assert "--swarm-host" in run


def test_example_settings_file_loads() -> None:
    """examples/winspec.toml is a valid settings file."""
    settings = load_settings(_file_settings(str(EXAMPLES / "winspec.toml")))
    assert settings.log_format == "console"
    assert settings.dns_search == ["corp.example"]


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"workers": 0}, "workers must be at least 1"),
        ({"bogus": 1}, "unknown field `bogus`"),
        ({"log_format": "xml"}, "log_format"),
        ({"workers": "many"}, "workers"),
    ],
)
def test_bad_settings_are_refused(layer: dict[str, object], message: str) -> None:
    """A bad setting is a PermanentError naming it."""
    with pytest.raises(PermanentError, match=message):
        load_settings(layer)


def test_run_with_bad_setting_exits_2_before_connecting(tmp_path: Path) -> None:
    """`winspec run` with an invalid value prints one line and exits 2 without starting."""
    env = {**os.environ, "WINSPEC_WORKERS": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "adapters.cli", "run", "--bundle-root", str(tmp_path)],
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == "winspec: invalid settings: workers must be at least 1"


def test_run_with_unreadable_config_file_exits_2(tmp_path: Path) -> None:
    """A --config file that is missing or not TOML is refused with exit code 2."""
    bad = tmp_path / "bad.toml"
    bad.write_text("workers = [")
    for path in (tmp_path / "absent.toml", bad):
        proc = subprocess.run(
            [sys.executable, "-m", "adapters.cli", "run", "--config", str(path)],
            capture_output=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 2
        assert proc.stderr.decode().startswith("winspec: ")


def test_docker_inspect_array_is_accepted() -> None:
    """The one-element array `docker inspect` prints is accepted as the container."""
    doc = msgspec.json.decode(PROCESS_EXAMPLE.read_bytes())
    doc["container"] = [doc["container"]]
    proc = _winspec("generate", stdin=msgspec.json.encode(doc))
    assert proc.returncode == 0, proc.stderr


def test_run_help_quotes_the_defaults_of_settings_in_groups() -> None:
    """Every `(default: X)` of a `run` flag naming a setting with a fixed default is Settings'."""
    from adapters.cli import _build_parser, _command_parser
    from controller.settings import Settings

    run = _command_parser(_build_parser(), "run")
    titles = [group.title for group in run._action_groups]
    assert set(titles) >= {
        "every mode",
        "Docker mode (--source docker)",
        "the node",
        "cluster mode (--source kubernetes)",
        "cluster mode, --delivery agent",
    }
    defaults = Settings()
    checked = 0
    for action in run._actions:
        name = action.dest
        if name not in Settings.__struct_fields__ or "(default: " not in (action.help or ""):
            continue
        value = getattr(defaults, name)
        if value is None or name in ("bundle_root", "secrets_dir", "leader_elect"):
            continue  # the help says where it comes from (the engine, the platform, "on")
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        assert f"(default: {shown}" in " ".join((action.help or "").split()), name
        checked += 1
    assert checked >= 20
