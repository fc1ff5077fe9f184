"""LCOW device cgroup rules (S31), with moby's TestAppendDevicePermissionsFromCgroupRules table.

moby's table comes from the 2021 fix for the 2019 panic on a malformed rule; the messages here
carry the generator's ``linux runtime spec devices:`` prefix.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.errors import SpecError
from controller.generate import generate
from tests.unit.spec.request_builders import decode, lcow_request, windows_request, with_host_config

PREFIX = "linux runtime spec devices: "


def _devices(*rules: str) -> list[dict[str, Any]]:
    spec = generate(decode(with_host_config(lcow_request(), DeviceCgroupRules=list(rules)))).spec
    assert spec.linux is not None
    assert spec.linux.resources is not None
    return [
        {"allow": d.allow, "type": d.type, "major": d.major, "minor": d.minor, "access": d.access}
        for d in spec.linux.resources.devices
    ]


def _error(*rules: str) -> str:
    with pytest.raises(SpecError) as info:
        generate(decode(with_host_config(lcow_request(), DeviceCgroupRules=list(rules))))
    return str(info.value)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("", "invalid device cgroup rule format: ''"),
        ("c 1:1  rwm", "invalid device cgroup rule format: 'c 1:1  rwm'"),
        ("c  1:1 rwm", "invalid device cgroup rule format: 'c  1:1 rwm'"),
        (" c 1:1 rwm", "invalid device cgroup rule format: ' c 1:1 rwm'"),
        ("c 1:1 rwm ", "invalid device cgroup rule format: 'c 1:1 rwm '"),
        ("z 1:1 rwm", "invalid device cgroup rule format: 'z 1:1 rwm'"),
        ("zz  1:1 rwm", "invalid device cgroup rule format: 'zz  1:1 rwm'"),
        ("c 11 rwm", "invalid device cgroup rule format: 'c 11 rwm'"),
        ("c a:a rwm", "invalid device cgroup rule format: 'c a:a rwm'"),
        ("c -1:1 rwm", "invalid device cgroup rule format: 'c -1:1 rwm'"),
        ("c 1:-1 rwm", "invalid device cgroup rule format: 'c 1:-1 rwm'"),
        ("c 1:1", "invalid device cgroup rule format: 'c 1:1'"),
        ("c 1:1 x", "invalid device cgroup rule format: 'c 1:1 x'"),
        ("c 1:1 rwmrwm", "invalid device cgroup rule format: 'c 1:1 rwmrwm'"),
        ("c 18446744073709551616:1 rwm",
         "invalid major value in device cgroup rule format: 'c 18446744073709551616:1 rwm'"),
        ("c 1:18446744073709551616 rwm",
         "invalid minor value in device cgroup rule format: 'c 1:18446744073709551616 rwm'"),
        ("c 9223372036854775808:1 rwm",
         "invalid major value in device cgroup rule format: 'c 9223372036854775808:1 rwm'"),
        # Go's $ is the end of the text: a trailing newline is not a valid rule.
        ("c 1:1 rwm\n", "invalid device cgroup rule format: 'c 1:1 rwm\n'"),
        ("c \uff11:1 rwm", "invalid device cgroup rule format: 'c \uff11:1 rwm'"),
    ],
)  # fmt: skip
def test_invalid_rules(rule: str, message: str) -> None:
    """S31/moby: malformed rules are refused with moby's message (Ours: never a panic)."""
    assert _error(rule) == PREFIX + message


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("a 1:1 rwm", ("a", 1, 1, "rwm")),
        ("c 1:1 rwm", ("c", 1, 1, "rwm")),
        ("b 1:1 rwm", ("b", 1, 1, "rwm")),
        ("c 7:128 rwm", ("c", 7, 128, "rwm")),
        ("c *:1 rwm", ("c", -1, 1, "rwm")),
        ("c 1:* rwm", ("c", 1, -1, "rwm")),
        ("c *:* rwm", ("c", -1, -1, "rwm")),
        ("c 1:1 r", ("c", 1, 1, "r")),
        ("c 1:1 w", ("c", 1, 1, "w")),
        ("c 1:1 m", ("c", 1, 1, "m")),
        ("c 1:1 mr", ("c", 1, 1, "mr")),
        ("c 1:1 rrr", ("c", 1, 1, "rrr")),
        ("b 007:0 r", ("b", 7, 0, "r")),
        ("c 9223372036854775807:0 r", ("c", 2**63 - 1, 0, "r")),
    ],
)
def test_valid_rules(rule: str, expected: tuple[str, int, int, str]) -> None:
    """S31/moby: a valid rule is one allowed entry; '*' is -1; numbers in int64."""
    kind, major, minor, access = expected
    assert _devices(rule) == [
        {"allow": True, "type": kind, "major": major, "minor": minor, "access": access}
    ]


def test_rules_replace_defaults_in_order() -> None:
    """S31: the rules replace moby's default device list, in the order given."""
    assert [d["type"] for d in _devices("b 8:0 r", "a *:* rwm", "c 1:3 w")] == ["b", "a", "c"]


def test_no_rules_no_device_list() -> None:
    """S31: without rules linux.resources has no devices at all (not moby's default list)."""
    assert _devices() == []
    spec = generate(decode(lcow_request())).spec
    assert spec.linux is not None
    assert spec.linux.resources is not None
    assert spec.linux.resources.devices == []


def test_windows_ignores_rules() -> None:
    """S31: device cgroup rules are LCOW only; Windows images ignore even malformed ones."""
    spec = generate(decode(with_host_config(windows_request(), DeviceCgroupRules=["x"]))).spec
    assert spec.linux is None
