"""``winspec agent``'s settings: layers, environment, validation and --help."""

from __future__ import annotations

import subprocess

import pytest

from adapters.agent.settings import FIELDS, env_agent_settings, load_agent_settings
from controller.errors import PermanentError
from tests.agent import agent_command
from tests.processes import clean_env

BASE = {"tls_cert": "c.pem", "tls_key": "k.pem", "allowed_identity": ["system:serviceaccount:a:b"]}


def test_flags_win_over_the_environment() -> None:
    """A flag overrides WINSPEC_AGENT_*; lists come comma-separated from the environment."""
    env = env_agent_settings(
        {
            "WINSPEC_AGENT_LISTEN": "127.0.0.1:9000",
            "WINSPEC_AGENT_ALLOWED_IDENTITY": "u1, u2,",
            "WINSPEC_AGENT_MAX_REQUEST_BYTES": "4096",
            "WINSPEC_AGENT_TLS_CERT": "c.pem",
            "WINSPEC_AGENT_TLS_KEY": "k.pem",
        }
    )
    settings = load_agent_settings(env, {"listen": "127.0.0.1:9001"})
    assert settings.listen == "127.0.0.1:9001"
    assert settings.allowed_identity == ["u1", "u2"]
    assert settings.max_request_bytes == 4096


def test_insecure_http_from_the_environment_is_a_boolean() -> None:
    """WINSPEC_AGENT_INSECURE_HTTP=true turns TLS off; a non-boolean value is refused."""
    layer = {"allowed_identity": ["u"]}
    on = load_agent_settings(layer, env_agent_settings({"WINSPEC_AGENT_INSECURE_HTTP": "true"}))
    assert on.insecure_http
    with pytest.raises(PermanentError, match="insecure_http"):
        load_agent_settings(layer, env_agent_settings({"WINSPEC_AGENT_INSECURE_HTTP": "maybe"}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tls_key": None}, "--tls-cert and --tls-key .* are required; --insecure-http"),
        ({"allowed_identity": []}, "at least one allowed_identity"),
        ({"allowed_identity": [" padded"]}, "is not a user name"),
        ({"listen": "nowhere"}, "listen must be HOST:PORT"),
        ({"max_request_bytes": 10}, "max_request_bytes must be at least 1024"),
        ({"token_cache_ttl": 0}, "token_cache_ttl must be a positive"),
        ({"token_negative_ttl": float("inf")}, "token_negative_ttl must be a positive"),
        ({"token_cache_size": 0}, "token_cache_size must be at least 1"),
        ({"header_timeout": 0}, "header_timeout must be a positive"),
        ({"body_timeout": float("nan")}, "body_timeout must be a positive"),
        ({"replay_window": -1}, "replay_window must be a positive"),
        ({"max_connections": 0}, "max_connections and max_connections_per_peer"),
        ({"max_connections": 8, "max_connections_per_peer": 9}, "must not exceed"),
        ({"token_review_rate": 0}, "token_review_rate must be a positive"),
        ({"token_review_burst": 0}, "token_review_burst must be at least 1"),
        ({"token_audience": ""}, "token_audience"),
        ({"bogus": 1}, "unknown field"),
    ],
)
def test_bad_settings_are_refused(change: dict[str, object], message: str) -> None:
    """Each bad value is a PermanentError naming the setting."""
    layer = {k: v for k, v in (BASE | change).items() if v is not None}
    with pytest.raises(PermanentError, match=message):
        load_agent_settings(layer)


def test_help_documents_every_setting() -> None:
    """`winspec agent --help` shows a flag for every setting."""
    out = subprocess.run(
        agent_command("--help"), capture_output=True, env=clean_env(), check=True, timeout=60
    ).stdout.decode()
    for name in FIELDS:
        assert "--" + name.replace("_", "-") in out, name


def test_service_link_in_the_agents_environment_is_refused_naming_the_fix() -> None:
    """A WINSPEC_AGENT_* value that is a service link is refused as one unless a flag wins."""
    env = env_agent_settings({"WINSPEC_AGENT_LISTEN": "tcp://10.0.0.61:8443"})
    with pytest.raises(PermanentError, match=r"is a Kubernetes service link .*enableServiceLinks"):
        load_agent_settings(BASE, env_layer=env)
    settings = load_agent_settings(BASE, {"listen": "127.0.0.1:9001"}, env_layer=env)
    assert settings.listen == "127.0.0.1:9001"
