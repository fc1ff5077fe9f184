"""windows.network (S15): endpoints, gateway, DNS and the shared container."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.errors import SpecError
from controller.generate import encode_spec
from tests.unit.spec.request_builders import (
    lcow_request,
    merge,
    run,
    windows_request,
    with_host_config,
)


def _network(request: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(encode_spec(run(request).spec))["windows"]["network"]
    return result


def _on(networks: dict[str, dict[str, Any]], **changes: Any) -> dict[str, Any]:
    """A Windows request attached to these networks, with this endpoint data."""
    return merge(
        windows_request(),
        {
            "container": {
                "NetworkSettings": {"Networks": {n: {"EndpointID": n} for n in networks}}
            },
            "endpoints": networks,
            **changes,
        },
    )


def test_always_present() -> None:
    """S15: windows.network is present even with no network at all (Windows and LCOW)."""
    assert _network(windows_request()) == {}
    assert _network(lcow_request()) == {}


def test_endpoints_in_network_name_order() -> None:
    """S15 (Ours): networks are visited in name order, whatever order the inspect lists."""
    networks = {"b": {"hnsid": "B"}, "c": {"hnsid": "C"}, "a": {"hnsid": "A"}}
    assert _network(_on(networks))["endpointList"] == ["A", "B", "C"]


@settings(max_examples=50, deadline=None)
@given(order=st.permutations(["nat", "alpha", "zeta", "mid"]))
def test_output_independent_of_inspect_order(order: list[str]) -> None:
    """S15/S32: the spec bytes do not depend on the order of networks in the inspect."""
    data = {n: {"hnsid": n.upper(), "GW_INFO": {"hnsid": "GW-" + n}} for n in order}
    reference = {n: data[n] for n in sorted(order)}
    assert encode_spec(run(_on(data)).spec) == encode_spec(run(_on(reference)).spec)


def test_gateway_last_and_last_one_wins() -> None:
    """S15: the gateway endpoint goes last; of several GW_INFO the last network's wins."""
    networks = {
        "a": {"hnsid": "A", "GW_INFO": {"hnsid": "GW-A"}},
        "b": {"hnsid": "B"},
        "c": {"hnsid": "C", "GW_INFO": {"hnsid": "GW-C"}},
    }
    assert _network(_on(networks))["endpointList"] == ["A", "B", "C", "GW-C"]


def test_gateway_without_own_endpoint() -> None:
    """S15: a network with GW_INFO but no hnsid still contributes the gateway."""
    assert _network(_on({"a": {"GW_INFO": {"hnsid": "GW"}}}))["endpointList"] == ["GW"]


def test_empty_gateway_ignored() -> None:
    """S15: an empty GW_INFO.hnsid still wins as the last one, leaving no gateway (as Go)."""
    networks = {"a": {"hnsid": "A", "GW_INFO": {"hnsid": "GW-A"}}, "b": {"GW_INFO": {"hnsid": ""}}}
    assert _network(_on(networks))["endpointList"] == ["A"]


@pytest.mark.parametrize(
    ("value", "allowed"),
    [(True, True), (False, True), ("", True), (0, True), (None, False), ("absent", False)],
)
def test_allow_unqualified_dns_query(value: Any, allowed: bool) -> None:
    """S15: any non-null AllowUnqualifiedDNSQuery (false included) allows; null or absent not."""
    data: dict[str, Any] = {"hnsid": "A"}
    if value != "absent":
        data["AllowUnqualifiedDNSQuery"] = value
    assert _network(_on({"a": data})).get("allowUnqualifiedDNSQuery", False) is allowed


def test_missing_endpoint_skipped() -> None:
    """S15: a network whose endpoint cannot be found contributes nothing."""
    request = _on({"a": {"hnsid": "A"}})
    request["container"]["NetworkSettings"]["Networks"]["gone"] = {"EndpointID": "x"}
    request["container"]["NetworkSettings"]["Networks"]["null"] = None
    assert _network(request)["endpointList"] == ["A"]


def test_endpoint_data_of_other_networks_ignored() -> None:
    """S15: endpoint data for a network the container is not on is not used."""
    request = _on({"a": {"hnsid": "A"}})
    request["endpoints"]["other"] = {"hnsid": "OTHER", "AllowUnqualifiedDNSQuery": True}
    assert _network(request) == {"endpointList": ["A"]}


@pytest.mark.parametrize(
    ("host", "node", "expected"),
    [
        (["h.example"], ["n.example"], ["h.example"]),
        (None, ["n.example"], ["n.example"]),
        ([], ["n.example"], ["n.example"]),
        (None, None, None),
        ([], [], None),
    ],
)
def test_dns_search(
    host: list[str] | None, node: list[str] | None, expected: list[str] | None
) -> None:
    """S15: DNSSearchList is HostConfig.DnsSearch, else the node default, else absent."""
    request = merge(
        with_host_config(windows_request(), DnsSearch=host), {"node": {"dnsSearch": node}}
    )
    assert _network(request).get("DNSSearchList") == expected


def test_shared_container() -> None:
    """S15: container:<id> mode appends the shared endpoints before the gateway, names it."""
    request = _on(
        {"a": {"hnsid": "A", "GW_INFO": {"hnsid": "GW"}}},
        sharedEndpoints=["S1", "S2"],
        networkSharedContainerId="f" * 64,
    )
    request = with_host_config(request, NetworkMode="container:web")
    assert _network(request) == {
        "endpointList": ["A", "S1", "S2", "GW"],
        "networkSharedContainerName": "f" * 64,
    }


def test_shared_container_name_falls_back_to_mode() -> None:
    """S15: without a resolved id, the shared container is named from the network mode."""
    request = with_host_config(windows_request(), NetworkMode="container:web")
    assert _network(request) == {"networkSharedContainerName": "web"}


def test_shared_endpoints_need_container_mode() -> None:
    """S15: shared endpoints are ignored unless the network mode is container:<id>."""
    request = merge(windows_request(), {"sharedEndpoints": ["S1"], "networkSharedContainerId": "x"})
    assert _network(request) == {}


@pytest.mark.parametrize(
    "data",
    [{"hnsid": 1}, {"GW_INFO": "x"}, {"GW_INFO": {"hnsid": ["x"]}}, {"hnsid": {"a": 1}}],
)
def test_malformed_endpoint_data_is_an_error(data: dict[str, Any]) -> None:
    """S15 (Ours): endpoint data of the wrong type is a permanent error (Go would panic)."""
    with pytest.raises(SpecError, match="endpoint data of network a"):
        run(_on({"a": data}))
