"""``winspec agent``'s settings: defaults, then ``WINSPEC_AGENT_*`` variables, then flags.

Kept apart from :class:`controller.settings.Settings` (``winspec run``): the agent shares none
of the controller's options but the log ones and the bundle root's default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from controller.errors import PermanentError
from controller.settings import Settings, service_link_error, split_listen

ENV_PREFIX = "WINSPEC_AGENT_"
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
DEFAULT_AUDIENCE = "winspec-agent"
#: The shipped controller's identity (manifests/base/rbac.yaml's ServiceAccount winspec in
#: winspec-system): the one --allowed-identity the shipped agent DaemonSet admits.
CONTROLLER_IDENTITY = "system:serviceaccount:winspec-system:winspec"
#: Hostile-client limits (docs/security.md: "The node agent", "Limits").
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 60.0
DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_MAX_CONNECTIONS_PER_PEER = 32
DEFAULT_REPLAY_WINDOW = 300.0
DEFAULT_TOKEN_REVIEW_RATE = 1.0
DEFAULT_TOKEN_REVIEW_BURST = 10


def _default_bundle_root() -> str:
    return Settings().bundle_root


class AgentSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything ``winspec agent`` can be told (docs/configuration.md, docs/agent.md)."""

    listen: str = "0.0.0.0:8443"
    bundle_root: str = msgspec.field(default_factory=_default_bundle_root)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_reload_interval: float = 60.0
    insecure_http: bool = False
    kubeconfig: str | None = None
    token_audience: str = DEFAULT_AUDIENCE
    allowed_identity: list[str] = msgspec.field(default_factory=list)
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    token_cache_ttl: float = 60.0
    token_negative_ttl: float = 5.0
    token_cache_size: int = 1024
    token_review_rate: float = DEFAULT_TOKEN_REVIEW_RATE
    token_review_burst: int = DEFAULT_TOKEN_REVIEW_BURST
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_peer: int = DEFAULT_MAX_CONNECTIONS_PER_PEER
    replay_window: float = DEFAULT_REPLAY_WINDOW
    api_timeout: float = 10.0
    shutdown_timeout: float = 10.0
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def __post_init__(self) -> None:
        split_listen(self.listen)
        if not self.bundle_root:
            raise ValueError("bundle_root must not be empty")
        if not self.insecure_http and not (self.tls_cert and self.tls_key):
            raise ValueError(
                "--tls-cert and --tls-key (WINSPEC_AGENT_TLS_CERT, WINSPEC_AGENT_TLS_KEY) are "
                "required; --insecure-http (WINSPEC_AGENT_INSECURE_HTTP=true) serves plain HTTP "
                "instead, for tests and development only"
            )
        if not self.allowed_identity:
            raise ValueError(
                "at least one allowed_identity is required, e.g. "
                f"{CONTROLLER_IDENTITY} (the shipped controller's ServiceAccount)"
            )
        for identity in self.allowed_identity:
            if not identity or not identity.isprintable() or identity != identity.strip():
                raise ValueError(f"allowed_identity {identity!r} is not a user name")
        if not self.token_audience or not self.token_audience.isprintable():
            raise ValueError("token_audience must be a non-empty printable string")
        if self.max_request_bytes < 1024:
            raise ValueError("max_request_bytes must be at least 1024")
        if self.token_cache_size < 1:
            raise ValueError("token_cache_size must be at least 1")
        if self.token_review_burst < 1:
            raise ValueError("token_review_burst must be at least 1")
        if self.max_connections < 1 or self.max_connections_per_peer < 1:
            raise ValueError("max_connections and max_connections_per_peer must be at least 1")
        if self.max_connections_per_peer > self.max_connections:
            raise ValueError("max_connections_per_peer must not exceed max_connections")
        if not (self.token_review_rate > 0 and math.isfinite(self.token_review_rate)):
            raise ValueError("token_review_rate must be a positive number of reviews a second")
        for name in (
            "tls_reload_interval",
            "token_cache_ttl",
            "token_negative_ttl",
            "api_timeout",
            "shutdown_timeout",
            "header_timeout",
            "body_timeout",
            "replay_window",
        ):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds")


FIELDS: tuple[str, ...] = AgentSettings.__struct_fields__


def env_agent_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings given as ``WINSPEC_AGENT_<NAME>`` variables (lists comma-separated)."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = env.get(ENV_PREFIX + name.upper())
        if value is None or value == "":
            continue
        if name == "allowed_identity":
            out[name] = [v.strip() for v in value.split(",") if v.strip()]
        else:
            out[name] = value
    return out


def load_agent_settings(
    *layers: Mapping[str, Any], env_layer: Mapping[str, Any] | None = None
) -> AgentSettings:
    """Merge layers (later wins) into :class:`AgentSettings`; bad values raise PermanentError.

    ``env_layer`` (from :func:`env_agent_settings`) comes first; a value of it that no later
    layer overrides and that is a Kubernetes service link is refused with its cause.
    """
    merged: dict[str, Any] = {}
    for layer in (env_layer or {}, *layers):
        merged.update({k: v for k, v in layer.items() if v is not None})
    overridden = {k for layer in layers for k, v in layer.items() if v is not None}
    for key, value in (env_layer or {}).items():
        if key not in overridden:
            variable, flag = ENV_PREFIX + key.upper(), "--" + key.replace("_", "-")
            link = service_link_error(variable, value, flag)
            if link is not None:
                raise PermanentError(f"invalid agent settings: {link}")
    try:
        return msgspec.convert(merged, AgentSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise PermanentError(f"invalid agent settings: {exc}") from exc
