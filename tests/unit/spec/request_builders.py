"""Small request documents for the generator's tests, as plain JSON-shaped dicts.

Every test starts from one of these and changes only what it is about, so each test reads as
"this input, this rule". The dicts go through JSON and :func:`decode_request`, the same path a
real request takes.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from controller.generate import Generated, encode_spec, generate
from controller.models import Request, decode_request

CONTAINER_ID = "4f1c2a9e7b3d5c6a8e0f1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f"
IMAGE_ID = "sha256:9b2e4f6a8c0d1e3f5a7b9c1d3e5f7a9b1c3d5e7f9a1b3c5d7e9f1a3b5c7d9e1f"
DAEMON_ROOT = "C:\\ProgramData\\docker"
VOLUME_PATH = "\\\\?\\Volume{5d1c6f2e-0000-0000-0000-100000000000}"
WINDOWS_LAYERS = [
    "C:\\ProgramData\\docker\\windowsfilter\\c0ffee01",
    "C:\\ProgramData\\docker\\windowsfilter\\base0001",
    "C:\\ProgramData\\docker\\windowsfilter\\4f1c2a9e7b3d",
]
LCOW_LAYERS = [
    "C:\\ProgramData\\docker\\lcow\\7e57a11c",
    "C:\\ProgramData\\docker\\lcow\\4f1c2a9e7b3d",
]


def windows_request(**changes: Any) -> dict[str, Any]:
    """A process-isolated Windows container that has never started, on an RS5 node."""
    request: dict[str, Any] = {
        "container": {
            "Id": CONTAINER_ID,
            "Name": "/golden",
            "Path": "cmd.exe",
            "Args": ["/S", "/C", "echo hello"],
            "Image": IMAGE_ID,
            "State": {"StartedAt": "0001-01-01T00:00:00Z"},
            "Config": {"Hostname": "4f1c2a9e7b3d", "Image": "nanoserver:1809"},
            "HostConfig": {"Isolation": "process", "NetworkMode": "nat"},
        },
        "image": {"Id": IMAGE_ID, "Os": "windows"},
        "node": {
            "windowsBuild": 17763,
            "cpuCount": 4,
            "defaultIsolation": "process",
            "daemonRoot": DAEMON_ROOT,
        },
        "layerFolders": list(WINDOWS_LAYERS),
        "volumePath": VOLUME_PATH,
    }
    return merge(request, changes)


def lcow_request(**changes: Any) -> dict[str, Any]:
    """A Linux container on Windows (LCOW) on a node that supports it."""
    request: dict[str, Any] = {
        "container": {
            "Id": CONTAINER_ID,
            "Name": "/golden-lcow",
            "Path": "/bin/sh",
            "Args": ["-c", "echo hello"],
            "Image": IMAGE_ID,
            "State": {"StartedAt": "0001-01-01T00:00:00Z"},
            "Config": {"Hostname": "4f1c2a9e7b3d", "Image": "busybox"},
            "HostConfig": {"Isolation": "", "NetworkMode": "nat"},
        },
        "image": {"Id": IMAGE_ID, "Os": "linux"},
        "node": {
            "windowsBuild": 17763,
            "cpuCount": 4,
            "defaultIsolation": "process",
            "lcowSupported": True,
            "daemonRoot": DAEMON_ROOT,
        },
        "layerFolders": list(LCOW_LAYERS),
    }
    return merge(request, changes)


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``changes`` merged in (dicts recursively; ``None`` deletes)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def with_host_config(request: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``request`` with ``container.HostConfig`` fields set."""
    return merge(request, {"container": {"HostConfig": fields}})


def with_config(request: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``request`` with ``container.Config`` fields set."""
    return merge(request, {"container": {"Config": fields}})


def decode(request: dict[str, Any]) -> Request:
    """The typed request, through JSON exactly as a request document arrives."""
    return decode_request(json.dumps(request).encode())


def run(request: dict[str, Any]) -> Generated:
    """Generate from a request dict."""
    return generate(decode(request))


def spec_json(request: dict[str, Any]) -> dict[str, Any]:
    """The generated ``config.json`` of a request dict, decoded back to plain JSON."""
    result: dict[str, Any] = json.loads(encode_spec(run(request).spec))
    return result
