"""winspec's settings: one typed object, from defaults, a config file, the environment and
flags (later sources win). Every field is documented in the README's configuration table."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from controller.errors import PermanentError

ENV_PREFIX = "WINSPEC_"


def _default_bundle_root() -> str:
    return (
        "C:\\ProgramData\\winspec\\bundles"
        if sys.platform == "win32"
        else "/var/lib/winspec/bundles"
    )


def _default_secrets_dir() -> str:
    return "C:\\ProgramData\\Docker\\secrets" if sys.platform == "win32" else "/run/secrets"


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything ``winspec run`` can be told."""

    source: Literal["docker"] = "docker"
    docker_host: str | None = None
    #: A swarm manager's Engine API for tasks and configs (default: the node's own engine).
    swarm_host: str | None = None
    bundle_root: str = msgspec.field(default_factory=_default_bundle_root)
    secrets_dir: str = msgspec.field(default_factory=_default_secrets_dir)
    workers: int = 4
    resync_interval: float = 300.0
    idle_timeout: float = 600.0
    retry_attempts: int = 5
    api_timeout: float = 30.0
    listen: str = "0.0.0.0:8080"
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_timeout: float = 30.0
    windows_build: int | None = None
    cpu_count: int | None = None
    default_isolation: Literal["process", "hyperv"] | None = None
    lcow: bool | None = None
    dns_search: list[str] = msgspec.field(default_factory=list)
    daemon_root: str | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.retry_attempts < 1:
            raise ValueError("retry_attempts must be at least 1")
        for name in ("resync_interval", "idle_timeout", "api_timeout", "shutdown_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


FIELDS: tuple[str, ...] = Settings.__struct_fields__


def env_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings given as ``WINSPEC_<NAME>`` environment variables (``DOCKER_HOST`` too)."""
    out: dict[str, Any] = {}
    if env.get("DOCKER_HOST"):
        out["docker_host"] = env["DOCKER_HOST"]
    for name in FIELDS:
        value = env.get(ENV_PREFIX + name.upper())
        if value is None or value == "":
            continue
        out[name] = (
            [v.strip() for v in value.split(",") if v.strip()] if name == "dns_search" else value
        )
    return out


def load_settings(*layers: Mapping[str, Any]) -> Settings:
    """Merge layers (later wins) into :class:`Settings`; bad values raise PermanentError."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if v is not None})
    try:
        return msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise PermanentError(f"invalid settings: {exc}") from exc
