"""The Pod Security Standards mapped onto WindowsContainer specs (controller/podsecurity.py)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.cluster import WindowsContainerSpec
from controller.podsecurity import (
    BASELINE_CAPABILITIES,
    ENFORCE_LABEL,
    LEVELS,
    PodSecurityError,
    check_pod_security,
    namespace_level,
    violations,
)

BASE: dict[str, Any] = {
    "nodeName": "win-1",
    "command": ["cmd.exe"],
    "layerFolders": ["C:\\layers\\base", "C:\\layers\\rw"],
}


def spec(**fields: Any) -> WindowsContainerSpec:
    """A spec of BASE plus ``fields`` (camelCase, as the API server holds it)."""
    return msgspec.convert({**BASE, **fields}, WindowsContainerSpec)


def controls(s: WindowsContainerSpec, level: str) -> set[str]:
    """The names of the controls ``s`` breaks at ``level``."""
    return {v.control for v in violations(s, level)}  # type: ignore[arg-type]


CAPS = st.sampled_from(
    [*sorted(BASELINE_CAPABILITIES), "SYS_ADMIN", "NET_ADMIN", "ALL", "SYS_PTRACE"]
).flatmap(lambda c: st.sampled_from([c, c.lower(), f"CAP_{c}", f"cap_{c.lower()}"]))
MOUNT = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["bind", "volume"]),
        "source": st.sampled_from(["C:\\", "\\\\.\\pipe\\docker_engine", "D:\\data"]),
        "destination": st.just("C:\\data"),
        "readOnly": st.booleans(),
    }
)
USERS = st.sampled_from(
    ["", "ContainerUser", "ContainerAdministrator", "containeradministrator",
     "NT AUTHORITY\\SYSTEM", "Administrator", "app", "User Manager\\ContainerUser"]
)  # fmt: skip
SPECS = st.builds(
    lambda extra: spec(**extra),
    st.fixed_dictionaries(
        {},
        optional={
            "privileged": st.booleans(),
            "mounts": st.lists(MOUNT, max_size=3),
            "devices": st.lists(
                st.fixed_dictionaries({"pathOnHost": st.just("class/5B45201D")}), max_size=2
            ),
            "deviceCgroupRules": st.lists(st.just("c 1:3 mr"), max_size=2),
            "capAdd": st.lists(CAPS, max_size=3),
            "capabilities": st.lists(CAPS, max_size=3),
            "user": USERS,
            "image": st.fixed_dictionaries({"os": st.sampled_from(["windows", "linux"])}),
            "secrets": st.lists(
                st.fixed_dictionaries(
                    {"secretName": st.just("db"), "key": st.just("pw"), "target": st.just("pw")}
                ),
                max_size=2,
            ),
            "gmsaCredentialSpecName": st.just("web"),
            "isolation": st.sampled_from(["default", "process", "hyperv"]),
        },
    ),
)


def _host_access(s: WindowsContainerSpec) -> bool:
    """Whether a spec asks for any of what baseline forbids (the table of the module doc)."""

    def bad(caps: tuple[str, ...] | None) -> bool:
        return any(c.upper().removeprefix("CAP_") not in BASELINE_CAPABILITIES for c in caps or ())

    return bool(
        s.privileged
        or s.mounts
        or s.devices
        or s.device_cgroup_rules
        or bad(s.cap_add)
        or bad(s.capabilities)
    )


@given(SPECS)
def test_privileged_allows_everything(s: WindowsContainerSpec) -> None:
    """The privileged level refuses no spec at all."""
    assert violations(s, "privileged") == []


@given(SPECS)
def test_baseline_refuses_exactly_host_access(s: WindowsContainerSpec) -> None:
    """Baseline refuses a spec if and only if it asks for privileged, mounts, devices or caps."""
    assert bool(violations(s, "baseline")) == _host_access(s)


@given(SPECS)
def test_restricted_is_baseline_and_more(s: WindowsContainerSpec) -> None:
    """Restricted refuses all that baseline does, plus administrators and Linux images."""
    baseline, restricted = violations(s, "baseline"), violations(s, "restricted")
    assert restricted[: len(baseline)] == baseline
    extra = {v.control for v in restricted[len(baseline) :]}
    if s.image.os == "linux":
        assert extra == {"allowPrivilegeEscalation != false, seccompProfile"}
    elif s.user.rpartition("\\")[2].casefold() in (
        "",
        "containeradministrator",
        "administrator",
        "system",
    ):
        assert extra == {"runAsNonRoot != true"}
    else:
        assert extra == set()


@pytest.mark.parametrize(
    ("fields", "control", "where"),
    [
        ({"privileged": True}, "privileged", "spec.privileged=true"),
        (
            {"mounts": [{"source": "C:\\", "destination": "C:\\host"}]},
            "hostPath volumes",
            "spec.mounts[0]",
        ),
        (
            {"mounts": [{"type": "volume", "source": "C:\\v", "destination": "C:\\d"}]},
            "hostPath volumes",
            "spec.mounts[0]",
        ),
        (
            {"mounts": [{"source": "\\\\.\\pipe\\docker_engine",
                         "destination": "\\\\.\\pipe\\docker_engine"}]},
            "hostPath volumes",
            "spec.mounts[0]",
        ),
        ({"devices": [{"pathOnHost": "class/5B45201D"}]}, "host devices", "spec.devices[0]"),
        ({"deviceCgroupRules": ["c 1:3 mr"]}, "host devices", "spec.deviceCgroupRules[0]"),
        ({"capAdd": ["CHOWN", "cap_sys_admin"]}, "capabilities", "spec.capAdd[1]"),
        ({"capAdd": ["ALL"]}, "capabilities", "spec.capAdd[0]"),
        ({"capabilities": ["CAP_NET_ADMIN"]}, "capabilities", "spec.capabilities[0]"),
    ],
)  # fmt: skip
def test_each_host_access_is_refused_from_baseline(
    fields: dict[str, Any], control: str, where: str
) -> None:
    """Each host-access field breaks its control from baseline on, named; privileged allows it."""
    s = spec(user="ContainerUser", **fields)
    assert violations(s, "privileged") == []
    for level in ("baseline", "restricted"):
        (violation,) = violations(s, level)  # type: ignore[arg-type]
        assert violation.control == control
        assert where in violation.fields


@pytest.mark.parametrize(
    "user", ["", "ContainerAdministrator", "CONTAINERADMINISTRATOR", "NT AUTHORITY\\SYSTEM"]
)
def test_restricted_refuses_administrators(user: str) -> None:
    """Restricted wants a non-administrator user (an empty one is the image's default)."""
    assert controls(spec(user=user), "baseline") == set()
    assert controls(spec(user=user), "restricted") == {"runAsNonRoot != true"}


def test_restricted_allows_a_plain_windows_container() -> None:
    """ContainerUser with Secrets, configs and a gMSA passes restricted (RBAC governs those)."""
    s = spec(
        user="ContainerUser",
        capAdd=["NET_BIND_SERVICE"],
        secrets=[{"secretName": "db", "key": "pw", "target": "pw"}],
        configs=[{"configMapName": "c", "key": "k", "target": "C:\\k"}],
        gmsaCredentialSpecName="web",
    )
    assert violations(s, "restricted") == []


def test_restricted_refuses_linux_images() -> None:
    """A Linux image (LCOW) cannot be restricted (no field says allowPrivilegeEscalation)."""
    s = spec(user="nobody", image={"os": "linux"})
    assert controls(s, "baseline") == set()
    assert controls(s, "restricted") == {"allowPrivilegeEscalation != false, seccompProfile"}


@given(default=st.sampled_from(LEVELS), value=st.text(max_size=12))
def test_namespace_level(default: str, value: str) -> None:
    """No label: the default; a level: that level; anything else: restricted."""
    assert namespace_level(None, default) == default  # type: ignore[arg-type]
    assert namespace_level({"other": "privileged"}, default) == default  # type: ignore[arg-type]
    expected = value if value in LEVELS else "restricted"
    assert namespace_level({ENFORCE_LABEL: value}, default) == expected  # type: ignore[arg-type]


def test_the_refusal_names_rules_and_fields_not_values() -> None:
    """The error names the level, namespace, controls and fields; never a field's value."""
    s = spec(privileged=True, mounts=[{"source": "C:\\Secret-Path", "destination": "C:\\x"}])
    with pytest.raises(PodSecurityError) as err:
        check_pod_security(s, level="baseline", namespace="apps")
    message = str(err.value)
    assert message.startswith('violates PodSecurity "baseline:latest" (namespace apps')
    assert "privileged (spec.privileged=true)" in message
    assert "hostPath volumes (spec.mounts[0])" in message
    assert "Secret-Path" not in message
    assert err.value.reason == "PodSecurityViolation"
    check_pod_security(s, level="privileged", namespace="apps")  # allowed: no error
