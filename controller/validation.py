"""The checks Docker's Windows daemon makes when a container is created (rule S20).

Requests that come from a Docker engine passed these already; custom resources did not.
Running them again is harmless: they are idempotent on a request that passed once.
"""

from __future__ import annotations

import msgspec

from controller.errors import SpecError
from controller.models import HostConfig

MIN_CPU_SHARES, MAX_CPU_SHARES = 1, 10000
MIN_CPU_PERCENT, MAX_CPU_PERCENT = 1, 100


class CpuSettings(msgspec.Struct, frozen=True, kw_only=True):
    """CPU settings after the process-isolation precedence rule zeroed the losers.

    A frozen msgspec Struct rather than a frozen dataclass: built once per spec, and a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) costs about ten times more.
    """

    shares: int
    percent: int
    count: int
    nano_cpus: int


#: No CPU limit set (shared: a frozen Struct cannot be changed by whoever receives it).
NO_CPU_LIMITS = CpuSettings(shares=0, percent=0, count=0, nano_cpus=0)


def validate_resources(
    hc: HostConfig, *, hyperv: bool, node_cpus: int, warnings: list[str]
) -> CpuSettings:
    """Apply S20 to a host config: returns the effective CPU settings, or raises SpecError."""
    shares, percent, count, nano = hc.cpu_shares, hc.cpu_percent, hc.cpu_count, hc.nano_cpus
    if not (shares or percent or count or nano) and node_cpus >= 0:
        # The common case, no CPU limit at all: there is no precedence to apply and every
        # range below holds (0 CPUs is within 0..node_cpus).
        _refuse_linux_only(hc)
        return NO_CPU_LIMITS
    if not hyperv:
        # Process isolation: count beats shares beats percent.
        if count > 0:
            if shares > 0:
                warnings.append(
                    "Conflicting options: CPU count takes priority over CPU shares on Windows "
                    "Server Containers. CPU shares discarded"
                )
                shares = 0
            if percent > 0:
                warnings.append(
                    "Conflicting options: CPU count takes priority over CPU percent on Windows "
                    "Server Containers. CPU percent discarded"
                )
                percent = 0
        elif shares > 0 and percent > 0:
            warnings.append(
                "Conflicting options: CPU shares takes priority over CPU percent on Windows "
                "Server Containers. CPU percent discarded"
            )
            percent = 0
    if shares < 0 or shares > MAX_CPU_SHARES:
        raise SpecError(f"range of CPUShares is from {MIN_CPU_SHARES} to {MAX_CPU_SHARES}")
    if percent < 0 or percent > MAX_CPU_PERCENT:
        raise SpecError(f"range of CPUPercent is from {MIN_CPU_PERCENT} to {MAX_CPU_PERCENT}")
    if count < 0:
        raise SpecError("invalid CPUCount: CPUCount cannot be negative")
    if nano > 0 and percent > 0:
        raise SpecError("conflicting options: Nano CPUs and CPU Percent cannot both be set")
    if nano > 0 and shares > 0:
        raise SpecError("conflicting options: Nano CPUs and CPU Shares cannot both be set")
    if nano < 0 or nano > node_cpus * 1_000_000_000:
        raise SpecError(
            f"range of CPUs is from 0.01 to {node_cpus}.00, as there are only {node_cpus} "
            "CPUs available"
        )
    _refuse_linux_only(hc)
    return CpuSettings(shares=shares, percent=percent, count=count, nano_cpus=nano)


def _refuse_linux_only(hc: HostConfig) -> None:
    """Linux-only resource options are an error on Windows, named by their Go field."""
    if not (
        hc.blkio_device_read_bps
        or hc.blkio_device_read_iops
        or hc.blkio_device_write_bps
        or hc.blkio_device_write_iops
        or hc.blkio_weight
        or hc.blkio_weight_device
        or hc.cgroup_parent
        or hc.cpu_period
        or hc.cpuset_cpus
        or hc.cpuset_mems
        or hc.kernel_memory
        or hc.memory_reservation
        or hc.memory_swap
        or hc.memory_swappiness is not None
        or hc.oom_kill_disable
        or hc.pids_limit
        or hc.ulimits
    ):
        return  # the common case: none is set
    checks: tuple[tuple[str, bool], ...] = (
        ("BlkioDeviceReadBps", bool(hc.blkio_device_read_bps)),
        ("BlkioDeviceReadIOps", bool(hc.blkio_device_read_iops)),
        ("BlkioDeviceWriteBps", bool(hc.blkio_device_write_bps)),
        ("BlkioDeviceWriteIOps", bool(hc.blkio_device_write_iops)),
        ("BlkioWeight", hc.blkio_weight > 0),
        ("BlkioWeightDevice", bool(hc.blkio_weight_device)),
        ("CgroupParent", hc.cgroup_parent != ""),
        ("CPUPeriod", hc.cpu_period != 0),
        ("CpusetCpus", hc.cpuset_cpus != ""),
        ("CpusetMems", hc.cpuset_mems != ""),
        ("KernelMemory", hc.kernel_memory != 0),
        ("MemoryReservation", hc.memory_reservation != 0),
        ("MemorySwap", hc.memory_swap != 0),
        # Docker treats -1 as "unset" (fixMemorySwappiness).
        ("MemorySwappiness", hc.memory_swappiness not in (None, -1)),
        ("OomKillDisable", hc.oom_kill_disable is True),
        ("PidsLimit", hc.pids_limit not in (None, 0)),
        ("Ulimits", bool(hc.ulimits)),
    )
    for field, present in checks:
        if present:
            message = f"invalid option: Windows does not support {field}"
            if field == "MemorySwap" and hc.memory > 0 and hc.memory_swap == 2 * hc.memory:
                # Docker's message, and why it appears for a container that never asked for it.
                message += (
                    " (a Linux engine sets MemorySwap to twice --memory by itself: on a "
                    "development engine, create the container without --memory)"
                )
            raise SpecError(message)
