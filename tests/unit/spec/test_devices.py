"""Windows device assignment (S27, S28), including moby's TestSetupWindowsDevices cases.

moby's later ``setupWindowsDevices`` refuses every malformed path with "invalid device
assignment path"; the rules keep the March 2019 messages (a ``/``-separated type other than
``class`` names the type) and add later moby's ``<IDType>://<id>`` form, so the expected
errors below follow S28 where the two differ.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.errors import SpecError
from controller.generate import generate
from tests.unit.spec.request_builders import (
    decode,
    lcow_request,
    merge,
    windows_request,
    with_host_config,
)

KLASS = "invalid device assignment type: 'klass' should be 'class'"
LOCATION = "PCIROOT(0)#PCI(0100)"


def _devices(*paths: str, **changes: Any) -> dict[str, Any]:
    request = with_host_config(windows_request(), Devices=[{"PathOnHost": p} for p in paths])
    return merge(request, changes)


def _written(request: dict[str, Any]) -> list[tuple[str, str]]:
    spec = generate(decode(request)).spec
    assert spec.windows is not None
    return [(d.idType, d.id) for d in spec.windows.devices]


def _error(request: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        generate(decode(request))
    return str(info.value)


def test_no_devices() -> None:
    """S28/moby: no devices (null or empty) writes no devices member."""
    assert _written(with_host_config(windows_request(), Devices=None)) == []
    assert _written(with_host_config(windows_request(), Devices=[])) == []


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        (("class/anything", ""), "invalid device assignment path"),
        (("anything", "goes"), "invalid device assignment path"),
        (("class/anything", "goes"), "invalid device assignment path"),
        (("klass/anything", "klass/goes"), KLASS),
        (("class/anything", "klass/goes"), KLASS),
        (("class/anything", "://goes"), "invalid device assignment type: ':' should be 'class'"),
        (("Class/x",), "invalid device assignment type: 'Class' should be 'class'"),
    ],
)  # fmt: skip
def test_invalid_devices(paths: tuple[str, ...], message: str) -> None:
    """S28/moby: malformed device paths are refused with the 2019 messages."""
    assert _error(_devices(*paths)) == message


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (("class/anything", "class/goes"), [("class", "anything"), ("class", "goes")]),
        (("class://anything", "klass://goes"), [("class", "anything"), ("klass", "goes")]),
        (("class/anything", "klass://goes"), [("class", "anything"), ("klass", "goes")]),
        (("class/a/b",), [("class", "a/b")]),
        (("class/",), [("class", "")]),
        (("vpci-location-path://" + LOCATION,), [("vpci-location-path", LOCATION)]),
        (("a/b://c",), [("a/b", "c")]),
    ],
)  # fmt: skip
def test_valid_devices(paths: tuple[str, ...], expected: list[tuple[str, str]]) -> None:
    """S28/moby: class/<id> and <IDType>://<id> become devices in order, id kept verbatim."""
    assert _written(_devices(*paths)) == expected


def test_hyperv_refuses_devices() -> None:
    """S27: any device on a Hyper-V container is refused, before the path is looked at."""
    request = with_host_config(_devices("nonsense"), Isolation="hyperv")
    assert _error(request) == "device assignment is not supported for HyperV containers"


def test_hyperv_by_node_default_refuses_devices() -> None:
    """S27: Hyper-V from the node default refuses devices too."""
    request = merge(
        with_host_config(_devices("class/x"), Isolation=""),
        {"node": {"defaultIsolation": "hyperv"}},
    )
    assert _error(request) == "device assignment is not supported for HyperV containers"


@pytest.mark.parametrize(
    ("build", "ok"), [(17134, False), (17762, False), (17763, True), (20348, True)]
)
def test_build_threshold(build: int, ok: bool) -> None:
    """S27: device assignment needs build 17763 (RS5) or later."""
    request = _devices("class/x", node={"windowsBuild": build})
    if ok:
        assert _written(request) == [("class", "x")]
    else:
        assert _error(request) == "device assignment requires Windows builds RS5 (17763+) or later"


def test_old_build_refused_before_paths_checked() -> None:
    """S27: the build check comes before any path is parsed."""
    request = _devices("nonsense", node={"windowsBuild": 14393})
    assert _error(request) == "device assignment requires Windows builds RS5 (17763+) or later"


def test_lcow_ignores_devices() -> None:
    """S27/S28: devices are for Windows images only; LCOW ignores them."""
    spec = generate(decode(with_host_config(lcow_request(), Devices=[{"PathOnHost": "x"}]))).spec
    assert spec.windows is not None
    assert spec.windows.devices == []
