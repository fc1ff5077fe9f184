"""LCOW capabilities (S30): moby's TweakCapabilities over its default set.

moby has no unit test table for ``TweakCapabilities``; these cases follow its code
(oci/caps/utils.go at a3eda72f71) branch by branch.
"""

from __future__ import annotations

import pytest

from controller.capabilities import ALL_CAPABILITIES, DEFAULT_CAPABILITIES, tweak_capabilities
from controller.errors import SpecError
from controller.generate import generate
from tests.unit.spec.request_builders import decode, lcow_request, with_host_config

DEFAULTS = list(DEFAULT_CAPABILITIES)


def _tweak(
    adds: list[str] | None = None,
    drops: list[str] | None = None,
    explicit: list[str] | None = None,
    privileged: bool = False,
) -> list[str]:
    return tweak_capabilities(adds=adds, drops=drops, explicit=explicit, privileged=privileged)


def test_all_is_37_capabilities_in_kernel_order() -> None:
    """S30: "all" is the 37 capabilities CAP_CHOWN..CAP_BLOCK_SUSPEND, no CAP_AUDIT_READ."""
    assert len(ALL_CAPABILITIES) == 37
    assert ALL_CAPABILITIES[0] == "CAP_CHOWN"
    assert ALL_CAPABILITIES[-1] == "CAP_BLOCK_SUSPEND"
    assert "CAP_AUDIT_READ" not in ALL_CAPABILITIES
    assert len(set(ALL_CAPABILITIES)) == 37


def test_defaults_are_mobys_14() -> None:
    """S1/S30: the default set is moby's 14 capabilities in moby's order."""
    assert DEFAULTS == [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
    ]  # fmt: skip


def test_nothing_to_tweak() -> None:
    """S30: no adds, drops, explicit list or privilege: the defaults unchanged."""
    assert _tweak() == DEFAULTS
    assert _tweak(adds=[], drops=[]) == DEFAULTS


def test_privileged_gets_all_and_ignores_the_rest() -> None:
    """S30: privileged gives all 37, ignoring (not validating) the other options."""
    assert _tweak(privileged=True, explicit=["bogus"], adds=["bogus"]) == list(ALL_CAPABILITIES)


def test_explicit_list_used_as_is() -> None:
    """S30: an explicit list is validated and used unchanged (order, no adds/drops)."""
    explicit = ["CAP_SYS_ADMIN", "CAP_CHOWN", "CAP_CHOWN"]
    assert _tweak(explicit=explicit, adds=["NET_ADMIN"], drops=["ALL"]) == explicit
    assert _tweak(explicit=[]) == []


@pytest.mark.parametrize("cap", ["chown", "CHOWN", "ALL", "CAP_AUDIT_READ", "", "CAP_chown"])
def test_explicit_list_is_not_normalised(cap: str) -> None:
    """S30: explicit names must be exact CAP_ names; anything else is unknown, quoted as given."""
    with pytest.raises(SpecError) as info:
        _tweak(explicit=["CAP_CHOWN", cap])
    assert str(info.value) == f'linux spec capabilities: unknown capability: "{cap}"'


def test_drop_then_add() -> None:
    """S30: drops leave the defaults in order, adds are appended in order (duplicates kept)."""
    assert _tweak(adds=["sys_admin", "Cap_Net_Admin", "chown"], drops=["MKNOD", "cap_kill"]) == [
        c for c in DEFAULTS if c not in ("CAP_MKNOD", "CAP_KILL")
    ] + ["CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_CHOWN"]


def test_dropping_an_absent_capability_is_harmless() -> None:
    """S30: dropping a valid capability not in the defaults changes nothing."""
    assert _tweak(drops=["SYS_ADMIN"]) == DEFAULTS


def test_add_all_minus_drops() -> None:
    """S30: ALL in adds (any case) gives all 37 minus the drops, in kernel order."""
    assert _tweak(adds=["all"], drops=["CHOWN", "cap_sys_admin"]) == [
        c for c in ALL_CAPABILITIES if c not in ("CAP_CHOWN", "CAP_SYS_ADMIN")
    ]


def test_add_all_beats_drop_all() -> None:
    """S30: ALL in both lists: the add branch wins and the drop "ALL" removes nothing."""
    assert _tweak(adds=["ALL"], drops=["ALL"]) == list(ALL_CAPABILITIES)


def test_drop_all_keeps_adds() -> None:
    """S30: ALL in drops keeps only the adds, normalised, in order."""
    assert _tweak(adds=["net_raw", "chown"], drops=["All"]) == ["CAP_NET_RAW", "CAP_CHOWN"]
    assert _tweak(drops=["ALL"]) == []


@pytest.mark.parametrize(
    ("adds", "drops", "name"),
    [
        (["bogus"], None, "CAP_BOGUS"),
        (None, ["bogus"], "CAP_BOGUS"),
        (["audit_read"], None, "CAP_AUDIT_READ"),
        (["cap_"], None, "CAP_"),
        (["chown", "cap_nope"], ["kill"], "CAP_NOPE"),
    ],
)
def test_unknown_in_adds_or_drops(
    adds: list[str] | None, drops: list[str] | None, name: str
) -> None:
    """S30: an unknown add or drop is refused, named upper-case with its CAP_ prefix."""
    with pytest.raises(SpecError) as info:
        _tweak(adds=adds, drops=drops)
    assert str(info.value) == f'linux spec capabilities: unknown capability: "{name}"'


def test_upper_case_is_per_character_as_go() -> None:
    """S30: names upper-case letter by letter as Go's strings.ToUpper (no 'ﬆ' → 'ST')."""
    with pytest.raises(SpecError):
        _tweak(adds=["net_broadca\ufb06"])
    assert _tweak(adds=["net_broadcast"])[-1] == "CAP_NET_BROADCAST"


def test_capabilities_fill_all_four_sets() -> None:
    """S30: the result goes to bounding, effective, inheritable and permitted; no ambient."""
    request = with_host_config(lcow_request(), CapAdd=["SYS_ADMIN"], CapDrop=["CHOWN"])
    spec = generate(decode(request)).spec
    assert spec.process is not None
    caps = spec.process.capabilities
    assert caps is not None
    expected = [c for c in DEFAULTS if c != "CAP_CHOWN"] + ["CAP_SYS_ADMIN"]
    assert caps.bounding == caps.effective == caps.inheritable == caps.permitted == expected
    assert caps.ambient == []
