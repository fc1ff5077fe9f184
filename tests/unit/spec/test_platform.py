"""Base spec, platform, isolation, hostname, layers, root and first boot (S1–S4, S12–S14)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.capabilities import DEFAULT_CAPABILITIES
from controller.errors import RequestDecodeError, SpecError
from controller.generate import encode_spec, generate
from controller.models import decode_request
from tests.unit.spec.request_builders import (
    LCOW_LAYERS,
    VOLUME_PATH,
    WINDOWS_LAYERS,
    decode,
    lcow_request,
    merge,
    run,
    windows_request,
    with_config,
    with_host_config,
)


def _json(request: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(encode_spec(run(request).spec))
    return result


def _error(request: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        run(request)
    return str(info.value)


def test_windows_default_spec_members() -> None:
    """S1: a Windows spec has only ociVersion 1.0.2, process, root, hostname and windows."""
    spec = _json(windows_request())
    assert list(spec) == ["ociVersion", "process", "root", "hostname", "windows"]
    assert spec["ociVersion"] == "1.0.2"


def test_lcow_default_spec() -> None:
    """S1: LCOW starts from moby's default Linux spec (caps, 7 mounts, paths, namespaces)."""
    spec = _json(lcow_request())
    assert list(spec) == ["ociVersion", "process", "root", "hostname", "mounts", "linux", "windows"]
    caps = spec["process"]["capabilities"]
    assert list(caps) == ["bounding", "effective", "inheritable", "permitted"]
    assert all(v == list(DEFAULT_CAPABILITIES) for v in caps.values())
    assert [m["destination"] for m in spec["mounts"]] == [
        "/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup", "/dev/mqueue", "/dev/shm",
    ]  # fmt: skip
    linux = spec["linux"]
    assert [n["type"] for n in linux["namespaces"]] == ["mount", "network", "uts", "pid", "ipc"]
    assert len(linux["maskedPaths"]) == 10
    assert linux["readonlyPaths"] == [
        "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
    ]  # fmt: skip
    assert linux["resources"] == {}
    assert spec["windows"] == {"layerFolders": LCOW_LAYERS, "hyperv": {}, "network": {}}


@pytest.mark.parametrize("os_name", ["", "freebsd", "Windows", "LINUX", "darwin"])
def test_unsupported_platform(os_name: str) -> None:
    """S2: an image OS other than exactly windows/linux is refused, quoting it."""
    assert _error(merge(windows_request(), {"image": {"Os": os_name}})) == (
        f'Unsupported platform "{os_name}": image.Os must be "windows" or "linux"'
    )


def test_lcow_needs_node_support() -> None:
    """S2: a linux image on a node without LCOW support is refused, naming node.lcowSupported."""
    request = merge(lcow_request(), {"node": {"lcowSupported": False}})
    assert _error(request) == (
        "Linux containers on Windows are not supported: this is a linux image and "
        "node.lcowSupported is false"
    )


@pytest.mark.parametrize(
    ("isolation", "node_default", "hyperv"),
    [
        ("", "process", False),
        ("", "hyperv", True),
        ("default", "hyperv", True),
        ("DEFAULT", "process", False),
        ("hyperv", "process", True),
        ("HYPERV", "process", True),
        ("hyperV", "process", True),
        ("process", "hyperv", False),
        ("PrOcEsS", "hyperv", False),
        ("", "HyperV", True),
    ],
)
def test_isolation(isolation: str, node_default: str, hyperv: bool) -> None:
    """S3: empty/default (any case) takes the node default; hyperv/process in any case."""
    request = merge(
        with_host_config(windows_request(), Isolation=isolation),
        {"node": {"defaultIsolation": node_default}},
    )
    windows = _json(request)["windows"]
    assert ("hyperv" in windows) is hyperv
    if hyperv:
        assert windows["hyperv"] == {}


@pytest.mark.parametrize("isolation", ["sandbox", " hyperv", "hyper-v", "none"])
def test_invalid_isolation_named(isolation: str) -> None:
    """S3: any other isolation value is an error that names it."""
    message = _error(with_host_config(windows_request(), Isolation=isolation))
    assert f'"{isolation}"' in message


@pytest.mark.parametrize("isolation", ["process", "Process", "PROCESS"])
def test_lcow_process_refused(isolation: str) -> None:
    """S3: LCOW with explicit process isolation (any case) is refused."""
    assert _error(with_host_config(lcow_request(), Isolation=isolation)) == (
        "process isolation is invalid for Linux containers on Windows"
    )


@pytest.mark.parametrize("isolation", ["", "default", "hyperv"])
def test_lcow_always_hyperv(isolation: str) -> None:
    """S3: LCOW is always Hyper-V, even on a process-default node."""
    request = merge(
        with_host_config(lcow_request(), Isolation=isolation),
        {"node": {"defaultIsolation": "process"}},
    )
    assert _json(request)["windows"]["hyperv"] == {}


@pytest.mark.parametrize(
    ("hostname", "domain", "expected"),
    [("web", "", "web"), ("web", "corp.example", "web.corp.example"), ("", "corp", ".corp")],
)
def test_windows_hostname(hostname: str, domain: str, expected: str) -> None:
    """S4: Windows hostname is Hostname, plus '.' + Domainname when that is set."""
    spec = _json(with_config(windows_request(), Hostname=hostname, Domainname=domain))
    assert spec.get("hostname", "") == expected
    assert "linux" not in spec


def test_lcow_hostname_and_domain() -> None:
    """S4: LCOW hostname is Hostname alone; a domain goes to kernel.domainname only."""
    spec = _json(with_config(lcow_request(), Hostname="web", Domainname="corp.example"))
    assert spec["hostname"] == "web"
    assert spec["linux"]["sysctl"] == {"kernel.domainname": "corp.example"}
    assert "sysctl" not in _json(with_config(lcow_request(), Hostname="web"))["linux"]


@pytest.mark.parametrize("request_", [windows_request(), lcow_request()], ids=["windows", "lcow"])
def test_layer_folders_in_order(request_: dict[str, Any]) -> None:
    """S12: layerFolders are the request's folders, in order (image layers, then scratch)."""
    expected = WINDOWS_LAYERS if request_["image"]["Os"] == "windows" else LCOW_LAYERS
    assert _json(request_)["windows"]["layerFolders"] == expected


@pytest.mark.parametrize("request_", [windows_request(), lcow_request()], ids=["windows", "lcow"])
def test_no_layers_is_an_error(request_: dict[str, Any]) -> None:
    """S12: a document with empty or missing layerFolders is refused, naming the member."""
    with pytest.raises(RequestDecodeError) as empty:
        decode_request(json.dumps(merge(request_, {"layerFolders": []})))
    assert str(empty.value) == (
        "invalid request: Expected `array` of length >= 1 - at `$.layerFolders`"
    )
    missing = {k: v for k, v in request_.items() if k != "layerFolders"}
    with pytest.raises(RequestDecodeError, match="missing required field `layerFolders`"):
        decode_request(json.dumps(missing))


def test_request_built_without_layers_is_refused_by_the_generator() -> None:
    """S12: a Request built in code with no layer folders is refused, naming layerFolders."""
    request = decode(windows_request())
    request.layer_folders = []
    with pytest.raises(SpecError) as info:
        generate(request)
    assert str(info.value) == (
        f"container {request.container.id}: no layer folders: layerFolders must list the "
        "image's layer folders topmost first, then the container's read-write layer"
    )


@pytest.mark.parametrize(
    ("isolation", "volume", "path"),
    [
        ("process", VOLUME_PATH, VOLUME_PATH + "\\"),
        ("process", VOLUME_PATH + "\\", VOLUME_PATH + "\\"),
        ("process", None, ""),
        ("process", "", ""),
        ("hyperv", VOLUME_PATH, ""),
        ("hyperv", None, ""),
    ],
)
def test_root(isolation: str, volume: str | None, path: str) -> None:
    """S13: process root.path is the volume with a trailing '\\'; Hyper-V or no volume: ""."""
    request = merge(
        with_host_config(windows_request(), Isolation=isolation), {"volumePath": volume}
    )
    assert _json(request)["root"] == {"path": path}


def test_windows_root_never_readonly() -> None:
    """S13: Windows root.readonly is false (omitted) even with ReadonlyRootfs."""
    assert _json(with_host_config(windows_request(), ReadonlyRootfs=True))["root"] == {
        "path": VOLUME_PATH + "\\"
    }


@pytest.mark.parametrize("readonly", [False, True])
def test_lcow_root(readonly: bool) -> None:
    """S29: LCOW root is rootfs, readonly as HostConfig.ReadonlyRootfs."""
    root = _json(with_host_config(lcow_request(), ReadonlyRootfs=readonly))["root"]
    assert root == ({"path": "rootfs", "readonly": True} if readonly else {"path": "rootfs"})


@pytest.mark.parametrize(
    ("started_at", "ignore"),
    [
        ("0001-01-01T00:00:00Z", True),
        ("", True),
        ("2019-03-19T10:00:00Z", False),
        ("2024-01-01T00:00:00.123456789Z", False),
    ],
)
def test_ignore_flushes_during_boot(started_at: str, ignore: bool) -> None:
    """S14: ignoreFlushesDuringBoot until the container has started once (Go zero time)."""
    request = merge(windows_request(), {"container": {"State": {"StartedAt": started_at}}})
    assert _json(request)["windows"].get("ignoreFlushesDuringBoot", False) is ignore


def test_state_absent_means_never_started() -> None:
    """S14: an inspect without State counts as never started."""
    request = windows_request()
    del request["container"]["State"]
    assert _json(request)["windows"]["ignoreFlushesDuringBoot"] is True


def test_lcow_never_ignores_flushes() -> None:
    """S14: ignoreFlushesDuringBoot is for Windows images only."""
    assert "ignoreFlushesDuringBoot" not in _json(lcow_request())["windows"]
