"""Windows resources (S16–S19) and the create-time checks Docker makes (S20)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.errors import RequestDecodeError, SpecError
from tests.unit.spec.request_builders import (
    lcow_request,
    merge,
    run,
    windows_request,
    with_host_config,
)

HYPERV = with_host_config(windows_request(), Isolation="hyperv")
PROCESS = windows_request()


def _cpu(request: dict[str, Any]) -> tuple[int | None, int | None, int | None] | None:
    """``(count, shares, maximum)`` of windows.resources.cpu, or None when absent."""
    resources = run(request).spec.windows.resources  # type: ignore[union-attr]
    if resources is None or resources.cpu is None:
        return None
    return (resources.cpu.count, resources.cpu.shares, resources.cpu.maximum)


def _error(request: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        run(request)
    return str(info.value)


@pytest.mark.parametrize(
    ("nano", "cpus", "expected"),
    [
        (1_000_000_000, 4, (1, 0, 0)),
        (2_000_000_000, 4, (2, 0, 0)),
        (4_000_000_000, 4, (4, 0, 0)),
        (1_500_000_000, 4, (2, 0, 7500)),
        (2_500_000_000, 4, (3, 0, 8333)),
        (999_999_999, 4, (1, 0, 9999)),
        (500_000_000, 1, (1, 0, 5000)),
        (100_000, 4, (1, 0, 1)),
        (99_999, 4, (1, 0, 1)),
        (1, 4, (1, 0, 1)),
    ],
)
def test_hyperv_nano_cpus(nano: int, cpus: int, expected: tuple[int, int, int]) -> None:
    """S17: Hyper-V count = NanoCPUs/1e9, +1 with a remainder and then maximum, at least 1."""
    request = merge(with_host_config(HYPERV, NanoCpus=nano), {"node": {"cpuCount": cpus}})
    assert _cpu(request) == expected


@pytest.mark.parametrize(
    ("nano", "cpus", "maximum"),
    [
        (1_000_000_000, 4, 2500),
        (4_000_000_000, 4, 10000),
        (2_000_000_000, 3, 6666),
        (1_000_000_000, 1, 10000),
        (400_000, 4, 1),
        (399_999, 4, 1),
        (1, 64, 1),
    ],
)
def test_process_nano_cpus(nano: int, cpus: int, maximum: int) -> None:
    """S17: process isolation maximum = NanoCPUs / node CPUs / 1e5 (integer), at least 1."""
    request = merge(with_host_config(PROCESS, NanoCpus=nano), {"node": {"cpuCount": cpus}})
    assert _cpu(request) == (0, 0, maximum)


def test_process_nano_keeps_cpu_count() -> None:
    """S16/S17: under process isolation NanoCPUs sets maximum and leaves CPUCount as count."""
    assert _cpu(with_host_config(PROCESS, NanoCpus=1_000_000_000, CpuCount=2)) == (2, 0, 2500)


def test_hyperv_nano_replaces_cpu_count() -> None:
    """S17: under Hyper-V, NanoCPUs decides count, replacing CPUCount."""
    assert _cpu(with_host_config(HYPERV, NanoCpus=1_000_000_000, CpuCount=3)) == (1, 0, 0)


def test_lcow_uses_hyperv_arithmetic_on_a_process_node() -> None:
    """S3/S17: LCOW is Hyper-V, so its utility VM gets the Hyper-V count arithmetic."""
    assert _cpu(with_host_config(lcow_request(), NanoCpus=1_500_000_000)) == (2, 0, 7500)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"CpuShares": 2}, (0, 2, 0)),
        ({"CpuPercent": 1}, (0, 0, 100)),
        ({"CpuPercent": 100}, (0, 0, 10000)),
        ({"CpuCount": 1}, (1, 0, 0)),
        ({"CpuShares": 10000, "CpuPercent": 100, "CpuCount": 64}, (64, 10000, 10000)),
    ],
)
def test_cpu_fields_hyperv(fields: dict[str, int], expected: tuple[int, int, int]) -> None:
    """S16/S18: shares, percent*100 and count; all three written, zeros included."""
    assert _cpu(with_host_config(HYPERV, **fields)) == expected


def test_no_cpu_when_all_zero() -> None:
    """S18: explicit zeros for shares, percent and count write no resources at all."""
    spec = run(with_host_config(HYPERV, CpuShares=0, CpuPercent=0, CpuCount=0, NanoCpus=0)).spec
    assert spec.windows is not None
    assert spec.windows.resources is None


def test_memory_only() -> None:
    """S19: Memory gives memory.limit alone, no cpu and no storage."""
    resources = run(with_host_config(PROCESS, Memory=1)).spec.windows.resources  # type: ignore[union-attr]
    assert resources is not None
    assert resources.memory is not None
    assert resources.memory.limit == 1
    assert resources.cpu is None
    assert resources.storage is None


@pytest.mark.parametrize(
    ("bandwidth", "iops"), [(1, 0), (0, 1), (10_485_760, 500), (2**64 - 1, 2**64 - 1)]
)
def test_storage_carries_both(bandwidth: int, iops: int) -> None:
    """S19: either storage limit gives storage with both bps and iops present."""
    request = with_host_config(PROCESS, IOMaximumBandwidth=bandwidth, IOMaximumIOps=iops)
    resources = run(request).spec.windows.resources  # type: ignore[union-attr]
    assert resources is not None
    assert resources.storage is not None
    assert (resources.storage.bps, resources.storage.iops) == (bandwidth, iops)


# --- S20 ------------------------------------------------------------------------------------


COUNT_SHARES = (
    "Conflicting options: CPU count takes priority over CPU shares on Windows Server "
    "Containers. CPU shares discarded"
)
COUNT_PERCENT = (
    "Conflicting options: CPU count takes priority over CPU percent on Windows Server "
    "Containers. CPU percent discarded"
)
SHARES_PERCENT = (
    "Conflicting options: CPU shares takes priority over CPU percent on Windows Server "
    "Containers. CPU percent discarded"
)

BOTH = [COUNT_SHARES, COUNT_PERCENT]


@pytest.mark.parametrize(
    ("fields", "cpu", "warnings"),
    [
        ({"CpuCount": 2, "CpuShares": 5}, (2, 0, 0), [COUNT_SHARES]),
        ({"CpuCount": 2, "CpuPercent": 5}, (2, 0, 0), [COUNT_PERCENT]),
        ({"CpuCount": 2, "CpuShares": 5, "CpuPercent": 5}, (2, 0, 0), BOTH),
        ({"CpuShares": 5, "CpuPercent": 5}, (0, 5, 0), [SHARES_PERCENT]),
        ({"CpuCount": 2, "CpuShares": 99999, "CpuPercent": 999}, (2, 0, 0), BOTH),
        ({"CpuShares": 5, "CpuPercent": 999}, (0, 5, 0), [SHARES_PERCENT]),
        ({"CpuShares": 0, "CpuPercent": 5}, (0, 0, 500), []),
    ],
)  # fmt: skip
def test_process_precedence(
    fields: dict[str, int], cpu: tuple[int, int, int], warnings: list[str]
) -> None:
    """S20: process isolation: count beats shares beats percent, losers zeroed before checks."""
    generated = run(with_host_config(PROCESS, **fields))
    assert generated.warnings == warnings
    resources = generated.spec.windows.resources  # type: ignore[union-attr]
    assert resources is not None
    assert resources.cpu is not None
    assert (resources.cpu.count, resources.cpu.shares, resources.cpu.maximum) == cpu


def test_hyperv_has_no_precedence() -> None:
    """S20: Hyper-V keeps count, shares and percent together, without warnings."""
    request = with_host_config(HYPERV, CpuCount=2, CpuShares=5, CpuPercent=5)
    assert run(request).warnings == []
    assert _cpu(request) == (2, 5, 500)


def test_precedence_runs_before_the_nano_conflicts() -> None:
    """S20: the losers are zeroed first: count+shares+nano passes, shares+percent+nano fails."""
    generated = run(with_host_config(PROCESS, CpuCount=2, CpuShares=5, NanoCpus=10**9))
    assert generated.warnings == [COUNT_SHARES]
    assert _cpu(with_host_config(PROCESS, CpuCount=2, CpuShares=5, NanoCpus=10**9)) == (2, 0, 2500)
    request = with_host_config(PROCESS, CpuShares=5, CpuPercent=5, NanoCpus=10**9)
    assert _error(request) == "conflicting options: Nano CPUs and CPU Shares cannot both be set"


@pytest.mark.parametrize(
    ("base", "fields", "message"),
    [
        (HYPERV, {"CpuShares": -1}, "range of CPUShares is from 1 to 10000"),
        (HYPERV, {"CpuShares": 10001}, "range of CPUShares is from 1 to 10000"),
        (PROCESS, {"CpuShares": 10001}, "range of CPUShares is from 1 to 10000"),
        (PROCESS, {"CpuCount": 1, "CpuShares": -1}, "range of CPUShares is from 1 to 10000"),
        (HYPERV, {"CpuPercent": -1}, "range of CPUPercent is from 1 to 100"),
        (HYPERV, {"CpuPercent": 101}, "range of CPUPercent is from 1 to 100"),
        (HYPERV, {"CpuShares": 10001, "CpuPercent": 101}, "range of CPUShares is from 1 to 10000"),
        (HYPERV, {"CpuCount": -1}, "invalid CPUCount: CPUCount cannot be negative"),
        (PROCESS, {"NanoCpus": 1, "CpuPercent": 1},
         "conflicting options: Nano CPUs and CPU Percent cannot both be set"),
        (HYPERV, {"NanoCpus": 1, "CpuPercent": 1, "CpuShares": 1},
         "conflicting options: Nano CPUs and CPU Percent cannot both be set"),
        (PROCESS, {"NanoCpus": 1, "CpuShares": 1},
         "conflicting options: Nano CPUs and CPU Shares cannot both be set"),
        (PROCESS, {"NanoCpus": 4_000_000_001},
         "range of CPUs is from 0.01 to 4.00, as there are only 4 CPUs available"),
        (HYPERV, {"NanoCpus": -1},
         "range of CPUs is from 0.01 to 4.00, as there are only 4 CPUs available"),
    ],
)  # fmt: skip
def test_range_and_conflict_errors(
    base: dict[str, Any], fields: dict[str, int], message: str
) -> None:
    """S20: out-of-range and conflicting CPU options are refused with Docker's messages."""
    assert _error(with_host_config(base, **fields)) == message


def test_nano_at_the_node_limit() -> None:
    """S20: NanoCPUs equal to node CPUs × 1e9 is allowed; the limit follows the node."""
    assert _cpu(with_host_config(HYPERV, NanoCpus=4_000_000_000)) == (4, 0, 0)
    request = merge(with_host_config(HYPERV, NanoCpus=2_000_000_001), {"node": {"cpuCount": 2}})
    assert (
        _error(request) == "range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available"
    )


LINUX_ONLY = [
    ("BlkioWeight", 10),
    ("BlkioWeightDevice", [{"Path": "/dev/sda", "Weight": 10}]),
    ("BlkioDeviceReadBps", [{"Path": "/dev/sda", "Rate": 1}]),
    ("BlkioDeviceWriteBps", [{"Path": "/dev/sda", "Rate": 1}]),
    ("BlkioDeviceReadIOps", [{"Path": "/dev/sda", "Rate": 1}]),
    ("BlkioDeviceWriteIOps", [{"Path": "/dev/sda", "Rate": 1}]),
    ("CgroupParent", "/docker"),
    ("CpuPeriod", 100000),
    ("CpusetCpus", "0-1"),
    ("CpusetMems", "0"),
    ("KernelMemory", 1024),
    ("MemoryReservation", 1024),
    ("MemorySwap", 1024),
    ("MemorySwappiness", 0),
    ("OomKillDisable", True),
    ("PidsLimit", 10),
    ("Ulimits", [{"Name": "nofile", "Soft": 1, "Hard": 2}]),
]
GO_NAMES = {"CpuPeriod": "CPUPeriod"}


@pytest.mark.parametrize(("field", "value"), LINUX_ONLY, ids=[f for f, _ in LINUX_ONLY])
@pytest.mark.parametrize("lcow", [False, True], ids=["windows", "lcow"])
def test_linux_only_options_refused(field: str, value: Any, lcow: bool) -> None:
    """S20: each Linux-only option is refused by its Go field name (the daemon does, LCOW too)."""
    base = lcow_request() if lcow else windows_request()
    name = GO_NAMES.get(field, field)
    assert _error(with_host_config(base, **{field: value})) == (
        f"invalid option: Windows does not support {name}"
    )


def test_a_linux_engines_own_memory_swap_gets_a_hint() -> None:
    """S20: MemorySwap at twice Memory (what a Linux engine sets for --memory) says why."""
    request = with_host_config(windows_request(), Memory=512 * 2**20, MemorySwap=1024 * 2**20)
    assert _error(request) == (
        "invalid option: Windows does not support MemorySwap (a Linux engine sets MemorySwap to "
        "twice --memory by itself: on a development engine, create the container without "
        "--memory)"
    )
    # Another MemorySwap is the user's own: Docker's message alone.
    request = with_host_config(windows_request(), Memory=512 * 2**20, MemorySwap=600 * 2**20)
    assert _error(request) == "invalid option: Windows does not support MemorySwap"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("BlkioWeight", 0),
        ("BlkioWeightDevice", []),
        ("CgroupParent", ""),
        ("MemorySwappiness", -1),
        ("MemorySwappiness", None),
        ("OomKillDisable", False),
        ("PidsLimit", 0),
        ("PidsLimit", None),
        ("Ulimits", []),
    ],
)
def test_linux_only_options_unset_values_allowed(field: str, value: Any) -> None:
    """S20: the "unset" value of each Linux-only option passes (-1 swappiness, false, 0, [])."""
    run(with_host_config(PROCESS, **{field: value}))


def test_linux_only_checked_in_mobys_order() -> None:
    """S20: several Linux-only options report the first in moby's order (ReadBps first)."""
    request = with_host_config(
        PROCESS, Ulimits=[{"Name": "n"}], BlkioWeight=1, BlkioDeviceReadBps=[{"Rate": 1}]
    )
    assert _error(request) == "invalid option: Windows does not support BlkioDeviceReadBps"


@pytest.mark.parametrize(
    "fields",
    [
        {"CpuCount": 2**63},
        {"NanoCpus": -(2**63) - 1},
        {"Memory": 2**63},
        {"BlkioWeight": 65536},
        {"BlkioWeight": -1},
    ],
)
def test_numbers_outside_gos_types_refused(fields: dict[str, int]) -> None:
    """S20/S32: a number outside Docker's Go type fails to decode, as it would for Docker."""
    with pytest.raises(RequestDecodeError):
        run(with_host_config(PROCESS, **fields))


STORAGE = "invalid IOMaximumBandwidth/IOMaximumIOps: "


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"IOMaximumBandwidth": 2**64}, STORAGE + "must be below 2^64"),
        ({"IOMaximumIOps": -1}, STORAGE + "cannot be negative"),
        ({"Memory": -1}, "invalid Memory: must be between 0 and 2^63-1"),
    ],
)  # fmt: skip
def test_storage_and_memory_bounds(fields: dict[str, int], message: str) -> None:
    """S19 (Ours): limits that Go's unsigned types could not hold are refused, not wrapped."""
    assert _error(with_host_config(PROCESS, **fields)) == message
