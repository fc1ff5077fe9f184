"""Mounts and the secret/config links (S5, S6)."""

from __future__ import annotations

import ntpath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.generate import INTERNAL_CONFIGS_DIR, INTERNAL_SECRETS_DIR
from controller.winpath import depth
from tests.unit.spec.request_builders import (
    CONTAINER_ID,
    DAEMON_ROOT,
    lcow_request,
    merge,
    run,
    windows_request,
)

UVM = f"uvmpath=/tmp/gcs/{CONTAINER_ID}/binds"


def _mount(destination: str, rw: bool = True, source: str = "C:\\src") -> dict[str, Any]:
    return {"Type": "bind", "Source": source, "Destination": destination, "RW": rw}


def _mounts(request: dict[str, Any]) -> list[tuple[str, str, str, list[str]]]:
    return [(m.destination, m.type, m.source, m.options) for m in run(request).spec.mounts]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("C:\\", 1),
        ("C:\\a", 1),
        ("C:\\a\\", 1),
        ("C:\\a\\..\\b\\c\\", 2),
        ("C:/x/y", 2),
        ("C:\\a\\\\b", 2),
        ("C:\\a\\.\\b", 2),
        ("/data", 1),
        ("\\\\server\\share\\x", 4),
        ("", 0),
    ],
)
def test_depth_counts_separators_of_the_cleaned_path(path: str, expected: int) -> None:
    """S5: depth is the number of '\\' in the destination cleaned by Windows path rules."""
    assert depth(path) == expected


DESTINATIONS = st.one_of(
    st.text(alphabet="C:\\/ab.", min_size=1, max_size=12),
    st.sampled_from(["C:\\", "D:\\", "C:\\a", "C:\\a\\..\\b", "/x/y"]),
)


@settings(max_examples=200, deadline=None)
@given(
    mounts=st.lists(st.tuples(DESTINATIONS, st.booleans()), max_size=6),
    lcow=st.booleans(),
)
def test_volume_order_and_options(mounts: list[tuple[str, bool]], lcow: bool) -> None:
    """S5/S6: volumes sorted by (depth, destination); ro when not RW; LCOW bind options."""
    base = lcow_request() if lcow else windows_request()
    request = merge(base, {"container": {"Mounts": [_mount(d, rw) for d, rw in mounts]}})
    written = _mounts(request)[7:] if lcow else _mounts(request)
    expected = sorted(mounts, key=lambda m: (depth(m[0]), m[0]))
    assert [w[0] for w in written] == [d for d, _ in expected]
    for (_, kind, _, options), (_, rw) in zip(written, expected, strict=True):
        ro = [] if rw else ["ro"]
        assert options == ([*ro, "rbind", UVM] if lcow else ro)
        assert kind == ("bind" if lcow else "")


def test_equal_depth_sorted_by_destination() -> None:
    """S5: a tie in depth is broken by the destination string (stable across input order)."""
    mounts = [_mount("C:\\b"), _mount("C:\\a\\..\\z"), _mount("C:\\a")]
    for order in (mounts, mounts[::-1]):
        request = merge(windows_request(), {"container": {"Mounts": order}})
        assert [m[0] for m in _mounts(request)] == ["C:\\a", "C:\\a\\..\\z", "C:\\b"]


def test_destination_and_source_written_verbatim() -> None:
    """S6: destination and source are copied as given (cleaning is only for sorting)."""
    request = merge(
        windows_request(), {"container": {"Mounts": [_mount("C:\\a\\..\\b\\", source="D:/s")]}}
    )
    assert _mounts(request) == [("C:\\a\\..\\b\\", "", "D:/s", [])]


SECRETS = [{"secretId": "s1", "target": "pw"}]
CONFIGS = [{"configId": "c1", "target": "app.json"}]


@pytest.mark.parametrize(
    ("secrets", "configs", "internal"),
    [
        (SECRETS, [], [INTERNAL_SECRETS_DIR]),
        ([], CONFIGS, [INTERNAL_CONFIGS_DIR]),
        (SECRETS, CONFIGS, [INTERNAL_SECRETS_DIR, INTERNAL_CONFIGS_DIR]),
        ([], [], []),
    ],
)
def test_internal_mounts_after_volumes(
    secrets: list[dict[str, str]], configs: list[dict[str, str]], internal: list[str]
) -> None:
    """S5: one read-only secrets mount, then one configs mount, after every volume."""
    request = merge(
        windows_request(),
        {
            "container": {"Mounts": [_mount("C:\\z\\y\\x\\w")]},
            "secrets": secrets * 2,
            "configs": configs,
        },
    )
    written = _mounts(request)
    assert [m[0] for m in written] == ["C:\\z\\y\\x\\w", *internal]
    root = ntpath.join(DAEMON_ROOT, "containers", CONTAINER_ID)
    for destination, _, source, options in written[1:]:
        assert options == ["ro"]
        assert source == ntpath.join(root, ntpath.basename(destination))


def test_lcow_internal_mounts_are_binds() -> None:
    """S6: on LCOW the secrets mount is a bind like any other mount."""
    written = _mounts(merge(lcow_request(), {"secrets": SECRETS}))
    assert written[-1][:2] == (INTERNAL_SECRETS_DIR, "bind")
    assert written[-1][3] == ["ro", "rbind", UVM]


def test_bundle_dir_holds_the_payloads() -> None:
    """S5: with a bundle directory, the internal mounts point at its payload folders."""
    request = merge(
        windows_request(),
        {"secrets": SECRETS, "configs": CONFIGS, "bundleDir": "/srv/bundles/" + CONTAINER_ID},
    )
    sources = [m[2] for m in _mounts(request)]
    assert sources == [
        f"/srv/bundles/{CONTAINER_ID}/secrets",
        f"/srv/bundles/{CONTAINER_ID}/configs",
    ]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("pw", "C:\\ProgramData\\Docker\\secrets\\pw"),
        ("sub/pw", "C:\\ProgramData\\Docker\\secrets\\sub\\pw"),
        ("C:\\certs\\tls.pem", "C:\\certs\\tls.pem"),
        ("C:/certs/./tls.pem", "C:\\certs\\tls.pem"),
        ("\\\\srv\\share\\x", "\\\\srv\\share\\x"),
        ("\\rooted", "C:\\ProgramData\\Docker\\secrets\\rooted"),
        ("..\\up", "C:\\ProgramData\\Docker\\up"),
        ("C:x", "C:\\ProgramData\\Docker\\secrets\\C:x"),
    ],
)
def test_secret_link_targets(target: str, expected: str) -> None:
    """S5: a secret's link target: Go-absolute kept, else under the secrets dir; cleaned."""
    links = run(merge(windows_request(), {"secrets": [{"secretId": "s1", "target": target}]})).links
    assert [(lk.kind, lk.target, lk.source) for lk in links] == [
        ("secret", expected, INTERNAL_SECRETS_DIR + "\\s1")
    ]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("app.json", "C:\\app.json"),
        ("app\\conf/x.json", "C:\\app\\conf\\x.json"),
        ("\\etc\\x.conf", "C:\\etc\\x.conf"),
        ("C:\\etc\\x.conf", "C:\\etc\\x.conf"),
    ],
)
def test_config_link_targets(target: str, expected: str) -> None:
    """S5: a config's link target is resolved from the container's C:\\ root and cleaned."""
    links = run(merge(windows_request(), {"configs": [{"configId": "c1", "target": target}]})).links
    assert [(lk.kind, lk.target, lk.source) for lk in links] == [
        ("config", expected, INTERNAL_CONFIGS_DIR + "\\c1")
    ]


def test_reference_without_target_has_mount_but_no_link() -> None:
    """S5: a reference with no file target still gets the mount, but no link."""
    generated = run(merge(windows_request(), {"secrets": [{"secretId": "s1", "target": ""}]}))
    assert [m.destination for m in generated.spec.mounts] == [INTERNAL_SECRETS_DIR]
    assert generated.links == []
