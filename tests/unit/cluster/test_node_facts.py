"""Node facts from a Node object: the label, the kernel version, CPUs, annotations, fallbacks."""

from __future__ import annotations

from typing import Any

import msgspec

from adapters.kubernetes.resolver import _Node, node_facts
from controller.models import NodeSettings


def _node(**parts: Any) -> _Node:
    return msgspec.convert(parts, _Node)


def test_the_build_label_wins_over_the_kernel_version() -> None:
    """node.kubernetes.io/windows-build gives the build; else status.nodeInfo.kernelVersion."""
    labelled = _node(
        metadata={"labels": {"node.kubernetes.io/windows-build": "10.0.20348"}},
        status={"nodeInfo": {"kernelVersion": "10.0.17763.1"}},
    )
    assert node_facts(labelled, NodeSettings()).windows_build == 20348
    kernel_only = _node(status={"nodeInfo": {"kernelVersion": "10.0.17763.2686"}})
    assert node_facts(kernel_only, NodeSettings()).windows_build == 17763


def test_cpus_lcow_and_isolation_come_from_the_node() -> None:
    """status.capacity.cpu (millicores too) and winspec's annotations set the other facts."""
    node = _node(
        metadata={
            "annotations": {"winspec.io/lcow": "true", "winspec.io/default-isolation": "hyperv"}
        },
        status={"capacity": {"cpu": "3500m"}},
    )
    facts = node_facts(node, NodeSettings())
    assert facts.cpu_count == 3
    assert facts.lcow_supported is True
    assert facts.default_isolation == "hyperv"


def test_settings_stand_in_for_what_the_node_does_not_say() -> None:
    """A bare Node takes the settings' build, CPUs, isolation, LCOW and DNS search."""
    defaults = NodeSettings(
        windows_build=19041, cpu_count=8, default_isolation="hyperv", lcow_supported=True,
        dns_search=("corp.example",), daemon_root="D:\\docker",
    )  # fmt: skip
    facts = node_facts(_node(), defaults)
    assert (facts.windows_build, facts.cpu_count, facts.default_isolation) == (19041, 8, "hyperv")
    assert facts.lcow_supported is True
    assert facts.dns_search == ["corp.example"]
    assert facts.daemon_root == "D:\\docker"


def test_garbage_on_the_node_falls_back() -> None:
    """Unparsable values are ignored, never an error."""
    node = _node(
        metadata={"labels": {"node.kubernetes.io/windows-build": "ltsc"},
                  "annotations": {"winspec.io/default-isolation": "sandbox"}},
        status={"capacity": {"cpu": "many"}, "nodeInfo": {"kernelVersion": "5.15.0"}},
    )  # fmt: skip
    facts = node_facts(node, NodeSettings())
    assert (facts.windows_build, facts.cpu_count, facts.default_isolation) == (17763, 1, "process")
