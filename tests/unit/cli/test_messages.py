"""Every refusal names what to fix — the member, variable or flag — and the form expected there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.errors import PermanentError, RequestDecodeError
from controller.models import decode_request
from controller.settings import env_settings, load_settings

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = json.loads((ROOT / "examples" / "process-isolated.json").read_bytes())


@pytest.mark.parametrize("document", [b"", b"   \n", ""])
def test_empty_document_says_it_is_empty(document: bytes | str) -> None:
    """An empty request document is refused as empty, naming the expected JSON object."""
    with pytest.raises(RequestDecodeError) as info:
        decode_request(document)
    assert str(info.value) == (
        "invalid request: the document is empty; expected one JSON object "
        "(`winspec schema` prints its JSON Schema)"
    )


@pytest.mark.parametrize("member", ["container", "image"])
@pytest.mark.parametrize("count", [0, 2])
def test_inspect_array_of_wrong_length_names_the_member(member: str, count: int) -> None:
    """A 0- or 2-element inspect array names the member and the one-element form accepted."""
    document = {**EXAMPLE, member: [EXAMPLE[member]] * count}
    with pytest.raises(RequestDecodeError) as info:
        decode_request(json.dumps(document))
    assert str(info.value) == (
        "invalid request: expected an inspect object or the one-element array `docker inspect` "
        f"prints, got an array of {count} elements - at `$.{member}`"
    )


def test_truncated_document_is_still_reported_as_truncated() -> None:
    """A document cut short (not empty) keeps the decoder's own message, and says where it ends."""
    with pytest.raises(RequestDecodeError, match="truncated"):
        decode_request(b'{"container": ')
    with pytest.raises(RequestDecodeError) as info:
        decode_request(b'{"container": {\n  "Id": "ab')
    assert str(info.value) == (
        "invalid request: Input data was truncated: the document ends at line 2, column 11 "
        "(byte 27) inside an unfinished value"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WINSPEC_LCOW": "maybe"}, "WINSPEC_LCOW must be true or false, got 'maybe'"),
        ({"WINSPEC_WORKERS": "abc"}, "WINSPEC_WORKERS must be a whole number, got 'abc'"),
        (
            {"WINSPEC_LOG_FORMAT": "xml"},
            "WINSPEC_LOG_FORMAT must be one of console, json, got 'xml'",
        ),
        (
            {"WINSPEC_RESYNC_INTERVAL": "soon"},
            "WINSPEC_RESYNC_INTERVAL must be a number, got 'soon'",
        ),
    ],
)
def test_bad_environment_value_names_the_variable_and_form(
    env: dict[str, str], message: str
) -> None:
    """A bad WINSPEC_* value names the variable and the expected form."""
    with pytest.raises(PermanentError) as info:
        load_settings({}, env_settings(env), {}, origins=("file", "env", "flag"))
    assert str(info.value) == f"invalid settings: {message}"


def test_bad_config_file_value_names_the_key() -> None:
    """A bad value from the config file names the key (the file layer is the first)."""
    with pytest.raises(PermanentError) as info:
        load_settings({"workers": "four"}, {}, {}, origins=("file", "env", "flag"))
    assert str(info.value) == (
        "invalid settings: config file key workers must be a whole number, got 'four'"
    )


def test_unknown_config_key_lists_the_known_ones() -> None:
    """An unknown config file key is refused with the list of known settings."""
    with pytest.raises(PermanentError, match=r"unknown field `bogus` \(known settings: source,"):
        load_settings({"bogus": 1}, origins=("file",))


def test_winspec_run_names_the_variable_on_stderr(tmp_path: Path) -> None:
    """`winspec run` with WINSPEC_LCOW=maybe prints one line naming the variable and exits 2."""
    env = {**os.environ, "WINSPEC_LCOW": "maybe"}
    proc = subprocess.run(
        [sys.executable, "-m", "adapters.cli", "run", "--bundle-root", str(tmp_path)],
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.decode() == (
        "winspec: invalid settings: WINSPEC_LCOW must be true or false, got 'maybe'\n"
    )


@pytest.mark.parametrize(
    ("value", "service"),
    [
        ("tcp://10.0.0.61:8443", "winspec-agent"),
        ("udp://10.0.0.61:53", "winspec-agent"),
        ("tcp://[fd00::61]:8443", "winspec-agent"),
    ],
)
def test_service_link_in_the_environment_names_its_cause_and_fix(value: str, service: str) -> None:
    """A WINSPEC_* value that is a Kubernetes service link is refused as one, with the fix."""
    with pytest.raises(PermanentError) as info:
        load_settings(
            {}, env_settings({"WINSPEC_AGENT_PORT": value}), {}, origins=("file", "env", "flag")
        )
    assert str(info.value) == (
        f"invalid settings: WINSPEC_AGENT_PORT={value!r} is a Kubernetes service link (the "
        f"address of the Service {service!r} in the pod's namespace), not a winspec setting: "
        "set enableServiceLinks: false in the pod spec (the shipped manifests do), or give "
        "--agent-port as a flag"
    )


def test_service_link_of_a_port_variable_names_its_service() -> None:
    """A <SERVICE>_PORT_<N>_<PROTO> link names the Service it belongs to."""
    from controller.settings import service_link_error

    message = service_link_error("WINSPEC_KUBECONFIG_PORT_443_TCP", "tcp://10.0.0.9:443", "--x")
    assert message is not None
    assert "the Service 'winspec-kubeconfig'" in message


def test_a_flag_overrides_a_service_link_in_the_environment() -> None:
    """A flag given for the same setting wins: the link is never read, the process starts."""
    env = env_settings({"WINSPEC_AGENT_PORT": "tcp://10.0.0.61:8443"})
    settings = load_settings({}, env, {"agent_port": 8443}, origins=("file", "env", "flag"))
    assert settings.agent_port == 8443


def test_an_engine_address_is_not_taken_for_a_service_link() -> None:
    """tcp://HOST:PORT is a real value of the URL settings (WINSPEC_DOCKER_HOST, SWARM_HOST)."""
    env = env_settings(
        {"WINSPEC_DOCKER_HOST": "tcp://10.0.0.5:2376", "WINSPEC_SWARM_HOST": "tcp://10.0.0.6:2376"}
    )
    settings = load_settings({}, env, {}, origins=("file", "env", "flag"))
    assert settings.docker_host == "tcp://10.0.0.5:2376"
    assert settings.swarm_host == "tcp://10.0.0.6:2376"


def _winspec(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a child process, without the caller's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WINSPEC_")}
    env.pop("KUBECONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "adapters.cli", *args],
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )


_WRAP = (
    'a request wraps it: {"container": <docker inspect CONTAINER>, "image": <docker image '
    'inspect IMAGE>, "layerFolders": '
    r'["C:\\ProgramData\\docker\\windowsfilter\\<layer>", ...]} '
    "(`winspec schema` prints the whole schema)"
)


@pytest.mark.parametrize(
    ("document", "error", "what"),
    [
        (
            [EXAMPLE["container"]],
            "Expected `object`, got `array`",
            "`docker inspect` output (an array)",
        ),
        (
            EXAMPLE["container"],
            "Object contains unknown field `Id`",
            "a container's inspect object, not a request",
        ),
        (
            {**EXAMPLE["image"], "Id": "sha256:" + "a" * 64, "RepoTags": ["web:1"]},
            "Object contains unknown field `Id`",
            "an image's inspect object, not a request",
        ),
    ],
)
def test_pasted_inspect_output_says_how_to_wrap_it(document: object, error: str, what: str) -> None:
    """`docker inspect` output given as the request says, in one line, how a request wraps it."""
    proc = _winspec("generate", "-", stdin=json.dumps(document).encode())
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"winspec: invalid request: {error}; this is {what}: {_WRAP}\n"
    # The shape shown is JSON once its placeholders are filled.
    shown = _WRAP.partition("wraps it: ")[2].partition(" (`winspec")[0]
    filled = shown.replace("<docker inspect CONTAINER>", "[]")
    filled = filled.replace("<docker image inspect IMAGE>", "[]").replace(", ...]", "]")
    assert json.loads(filled)["layerFolders"] == ["C:\\ProgramData\\docker\\windowsfilter\\<layer>"]


def test_a_stray_generate_argument_shows_generates_usage() -> None:
    """`winspec generate a b` prints generate's usage and names the extra argument, exit 2."""
    proc = _winspec("generate", "a", "b")
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: winspec generate ")
    assert proc.stderr.endswith("winspec generate: error: unrecognized arguments: b\n")


@pytest.mark.parametrize("bad", ["output", "links"])
def test_output_and_links_are_written_both_or_neither(bad: str, tmp_path: Path) -> None:
    """When one of --output/--links cannot be written, neither is: exit 1 naming that path."""
    paths = {"output": tmp_path / "config.json", "links": tmp_path / "links.json"}
    paths[bad] = tmp_path / "missing-dir" / f"{bad}.json"
    example = str(ROOT / "examples" / "credential-spec.json")
    proc = _winspec("generate", example, "-o", str(paths["output"]), "--links", str(paths["links"]))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"winspec: cannot write output {paths[bad]}: No such file or directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_links_that_cannot_be_written_print_no_spec(tmp_path: Path) -> None:
    """Without --output, a --links path that cannot be written prints no config.json either."""
    links = tmp_path / "missing-dir" / "links.json"
    proc = _winspec("generate", str(ROOT / "examples" / "hyperv.json"), "--links", str(links))
    assert proc.returncode == 1
    assert proc.stdout == ""


def test_help_describes_every_mode_and_option() -> None:
    """Top-level help names cluster mode and the agent; run's no preview; --log-level described."""
    top = _winspec("--help").stdout
    assert "Kubernetes" in " ".join(top.split())
    assert "(agent)" in top
    run_help = _winspec("run", "--help").stdout
    assert "preview" not in run_help
    for command in ("run", "agent"):
        text = " ".join(_winspec(command, "--help").stdout.split())
        assert "--log-level {debug,info,warning,error} the least severe log messages written" in (
            text
        )


def test_a_kubeconfig_that_does_not_exist_says_so_in_one_line(tmp_path: Path) -> None:
    """--kubeconfig naming no file: one line saying so (no library warning), exit 2."""
    missing = tmp_path / "nonexistent"
    for command in (
        ["run", "--source", "kubernetes", "--bundle-root", str(tmp_path / "b")],
        ["agent", "--insecure-http", "--allowed-identity", "u", "--listen", "127.0.0.1:0",
         "--bundle-root", str(tmp_path / "a")],
    ):  # fmt: skip
        proc = _winspec(*command, "--kubeconfig", str(missing))
        assert proc.returncode == 2
        assert proc.stderr == (
            f"winspec: cannot use the Kubernetes configuration {missing}: no such file\n"
        )


@pytest.mark.parametrize("content", [None, ""])
def test_a_missing_agent_token_file_is_refused_at_start(
    content: str | None, tmp_path: Path
) -> None:
    """--delivery agent with a token file missing or empty: one line at start, exit 2."""
    token = tmp_path / "token"
    if content is not None:
        token.write_text(content)
    proc = _winspec(
        "run", "--source", "kubernetes", "--delivery", "agent", "--agent-token-file", str(token),
        "--kubeconfig", str(tmp_path / "never-read"), "--bundle-root", str(tmp_path / "b"),
    )  # fmt: skip
    assert proc.returncode == 2
    why = (
        "cannot read the token file {}: No such file or directory"
        if content is None
        else ("the token file {} is empty")
    )
    assert proc.stderr == (
        "winspec: agent token file (--agent-token-file, WINSPEC_AGENT_TOKEN_FILE, "
        f"agent_token_file): {why.format(token)}\n"
    )
