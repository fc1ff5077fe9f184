"""examples/winspec.toml holds every setting of the settings model, each a valid value."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from controller.settings import FIELDS, load_settings

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "winspec.toml"
COMMENTED_KEY = re.compile(r"^# ?([a-z_]+ = .+)$", re.MULTILINE)


def _keys() -> tuple[dict[str, object], dict[str, object]]:
    """The active settings and the commented-out ``# key = value`` ones, each parsed as TOML."""
    text = EXAMPLE.read_text(encoding="utf-8")
    active = tomllib.loads(text)
    commented = tomllib.loads("\n".join(COMMENTED_KEY.findall(text)))
    return active, commented


def test_example_has_every_setting() -> None:
    """Every Settings field is a key of examples/winspec.toml (set or commented out), no other."""
    active, commented = _keys()
    assert not set(active) & set(commented), "a key is both set and commented out"
    assert sorted(set(active) | set(commented)) == sorted(FIELDS)


def test_every_example_value_is_valid() -> None:
    """The set keys load as they are, and so do they with every commented-out key enabled."""
    active, commented = _keys()
    load_settings(active, origins=("file",))
    settings = load_settings(active, commented, origins=("file", "file"))
    for key, value in commented.items():
        assert getattr(settings, key) == value
