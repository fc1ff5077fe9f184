"""Credential specs that live on the node: files under the daemon root and registry values.

The containment rule for ``file://`` paths (S23) is checked in the core
(:func:`controller.credspec.check_file_path`); here the file is read, and a link inside the
directory that points outside it is refused too. A Windows daemon root is refused on any other
OS (``winspec generate`` on Linux reads a request whose daemon root is ``C:\\ProgramData\\docker``):
the file lives on that Windows host, and the request must carry its contents.
"""

from __future__ import annotations

import os
import sys

from controller.errors import SpecError
from controller.winpath import looks_windows

REGISTRY_KEY = (
    r"SOFTWARE\Microsoft\Windows NT\CurrentVersion\Virtualization\Containers\CredentialSpecs"
)


class NodeCredentialSpecReader:
    """Reads ``file://`` and ``registry://`` credential specs on the host winspec runs on."""

    def read_file(self, parts: tuple[str, ...], *, base: str, container_id: str) -> str:
        """Read ``base/parts…``, refusing a file that resolves outside ``base`` (S23).

        A Windows base (``C:\\ProgramData\\docker\\CredentialSpecs``) can only be read on
        Windows: elsewhere it would be taken as a relative path under the current directory.
        """
        if os.name != "nt" and looks_windows(base):
            value = "\\".join(parts)
            raise SpecError(
                f"file:// credential spec {value} is under a Windows daemon root ({base}); it "
                "can only be read on that Windows host — resolve it into the request's "
                "credentialSpecs.file map"
            )
        full = os.path.join(base, *parts)
        real_base = os.path.normcase(os.path.realpath(base))
        real_full = os.path.normcase(os.path.realpath(full))
        if os.path.commonpath([real_base, real_full]) != real_base or real_full == real_base:
            raise SpecError(f"invalid credential spec - file:// path must be under {base}")
        try:
            with open(real_full, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(
                f"credential spec file {full!r} for container {container_id} could not be "
                f"read: {exc}"
            ) from exc

    def read_registry(self, name: str, *, container_id: str) -> str:
        """Read a credential spec from Docker's registry key (S24); Windows hosts only."""
        if sys.platform != "win32":
            raise SpecError(
                f"registry credential spec {name!r} for container {container_id} cannot be "
                "read: registry:// credential specs are only available on a Windows host"
            )
        import winreg

        try:
            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, REGISTRY_KEY) as key:
                value, _kind = winreg.QueryValueEx(key, name)
        except FileNotFoundError as exc:
            raise SpecError(
                f'registry credential spec "{name}" for container {container_id} was not found'
            ) from exc
        except OSError as exc:
            raise SpecError(
                f"error reading registry credential spec {name!r} for container "
                f"{container_id}: {exc}"
            ) from exc
        if not isinstance(value, str):
            raise SpecError(
                f"registry credential spec {name!r} for container {container_id} is not a string"
            )
        return value
