"""The project's own CRD (``manifests/base/crd.yaml``), loaded for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
CRD_PATH = MANIFESTS / "base" / "crd.yaml"


def load_crd() -> dict[str, Any]:
    """The CustomResourceDefinition as a dict (PyYAML is a test dependency)."""
    import yaml

    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return crd


def version_schema(crd: dict[str, Any], version: str = "v1alpha1") -> dict[str, Any]:
    """The openAPIV3Schema of one served version."""
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema: dict[str, Any] = v["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(version)
