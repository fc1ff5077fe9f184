"""A small NTFS volume for tests: an image file made by ``mkntfs`` and mounted by ``ntfs-3g``
(FUSE) with ``windows_names``, so the file system refuses what Windows refuses (device names
such as ``con``, ``<>:"\\|?*``, a trailing dot or space) and has no ``RENAME_EXCHANGE``.

Needs root, ``/dev/fuse`` and Debian's ntfs-3g (``.ci/install-ntfs.sh``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Big enough for the suite's bundles and the NTFS metadata (mkntfs wants a few MiB).
IMAGE_BYTES = 32 * 1024 * 1024
MOUNT_OPTIONS = "windows_names,big_writes"


class NtfsUnavailableError(Exception):
    """No NTFS volume can be mounted here; the message says why."""


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def unavailable_reason() -> str | None:
    """Why no NTFS volume can be mounted here, or ``None``."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "mounting an NTFS volume (FUSE, allow_other) needs root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    for tool in ("mkntfs", "ntfs-3g"):
        if _tool(tool) is None:
            return f"{tool} not found (install Debian's ntfs-3g: .ci/install-ntfs.sh)"
    return None


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise NtfsUnavailableError(
            f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}"
        )


def _unmount(mountpoint: Path) -> None:
    for argv in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount"]):
        tool = _tool(argv[0])
        if tool is None:
            continue
        done = subprocess.run([tool, *argv[1:], str(mountpoint)], capture_output=True, timeout=30)
        if done.returncode == 0:
            return
    raise RuntimeError(f"cannot unmount the NTFS volume at {mountpoint}")


@contextmanager
def ntfs_volume(workdir: Path) -> Iterator[Path]:
    """A fresh NTFS volume mounted below ``workdir``: its mount point, unmounted afterwards.

    Raises :class:`NtfsUnavailableError` when it cannot be made or mounted.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise NtfsUnavailableError(reason)
    image, mountpoint = workdir / "ntfs.img", workdir / "ntfs"
    with open(image, "wb") as f:
        f.truncate(IMAGE_BYTES)
    mountpoint.mkdir()
    _run(str(_tool("mkntfs")), "-F", "-f", "-q", "-L", "winspec-test", str(image))
    _run(str(_tool("ntfs-3g")), "-o", MOUNT_OPTIONS, str(image), str(mountpoint))
    try:
        yield mountpoint
    finally:
        _unmount(mountpoint)
        image.unlink()
