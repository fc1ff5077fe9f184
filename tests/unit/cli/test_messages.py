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
    """A document cut short (not empty) keeps the decoder's own message."""
    with pytest.raises(RequestDecodeError, match="truncated"):
        decode_request(b'{"container": ')


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
