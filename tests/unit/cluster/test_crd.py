"""The CRD in manifests/ and the typed models in controller/cluster.py are one source of truth.

The models' JSON Schema (msgspec's) is walked beside the CRD's openAPIV3Schema: the same
properties at every level, the same types, enums and defaults. The CRD is also checked for
what the API server requires of it (a structural schema) and what users see (printer columns).
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from controller.cluster import (
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    WindowsContainerSpec,
    WindowsContainerStatus,
)
from tests.crd import load_crd, version_schema


def _model_schema(model: type) -> tuple[dict[str, Any], dict[str, Any]]:
    schema = msgspec.json.schema(model)
    return schema, schema["$defs"]


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Follow $ref and drop the ``null`` branch msgspec writes for optional fields."""
    while True:
        if "$ref" in node:
            node = {
                **defs[node["$ref"].rsplit("/", 1)[1]],
                **{k: v for k, v in node.items() if k != "$ref"},
            }
            continue
        if "anyOf" in node:
            branches = [b for b in node["anyOf"] if b.get("type") != "null"]
            assert len(branches) == 1, node
            node = {**branches[0], **{k: v for k, v in node.items() if k != "anyOf"}}
            continue
        return node


def _compare(
    model: dict[str, Any], crd: dict[str, Any], defs: dict[str, Any], path: str
) -> list[str]:
    """Every difference between a model schema node and a CRD schema node, by path."""
    model = _resolve(model, defs)
    problems: list[str] = []
    if "enum" in model:
        if sorted(model["enum"]) != sorted(crd.get("enum", [])):
            problems.append(f"{path}: enum {model['enum']} vs {crd.get('enum')}")
        model_type = "string"
    else:
        model_type = model.get("type")
    if model_type != crd.get("type"):
        problems.append(f"{path}: type {model_type} vs {crd.get('type')}")
    if "default" in crd and "default" in model and crd["default"] != model["default"]:
        problems.append(f"{path}: default {model['default']!r} vs {crd['default']!r}")
    if model_type == "array":
        problems += _compare(model["items"], crd.get("items", {}), defs, path + "[]")
    if model_type == "object":
        mine, theirs = set(model.get("properties", {})), set(crd.get("properties", {}))
        problems += [f"{path}.{p}: in the model, not in the CRD" for p in sorted(mine - theirs)]
        problems += [f"{path}.{p}: in the CRD, not in the model" for p in sorted(theirs - mine)]
        for name in sorted(mine & theirs):
            problems += _compare(
                model["properties"][name], crd["properties"][name], defs, f"{path}.{name}"
            )
        if set(model.get("required", [])) != set(crd.get("required", [])):
            problems.append(f"{path}: required {model.get('required')} vs {crd.get('required')}")
    return problems


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """The CRD's v1alpha1 openAPIV3Schema."""
    return version_schema(load_crd())


@pytest.mark.parametrize(
    ("model", "member"), [(WindowsContainerSpec, "spec"), (WindowsContainerStatus, "status")]
)
def test_models_and_crd_have_the_same_fields(
    model: type, member: str, schema: dict[str, Any]
) -> None:
    """Every CRD field is in the model and vice versa, with the same types, enums and defaults."""
    root, defs = _model_schema(model)
    assert _compare(root, schema["properties"][member], defs, member) == []


def test_the_comparison_sees_a_missing_field(schema: dict[str, Any]) -> None:
    """A field dropped from the CRD copy is reported (the check above can fail)."""
    root, defs = _model_schema(WindowsContainerSpec)
    spec = msgspec.json.decode(msgspec.json.encode(schema["properties"]["spec"]))
    del spec["properties"]["resources"]["properties"]["nanoCPUs"]
    spec["properties"]["extra"] = {"type": "string"}
    assert _compare(root, spec, defs, "spec") == [
        "spec.extra: in the CRD, not in the model",
        "spec.resources.nanoCPUs: in the model, not in the CRD",
    ]


def _structural_problems(node: dict[str, Any], path: str) -> list[str]:
    problems = [] if "type" in node else [f"{path}: no type"]
    for name, child in node.get("properties", {}).items():
        problems += _structural_problems(child, f"{path}.{name}")
    if "items" in node:
        problems += _structural_problems(node["items"], path + "[]")
    if "default" in node and node.get("type") == "object" and node["default"] != {}:
        problems.append(f"{path}: object default other than {{}}")
    return problems


def test_the_schema_is_structural(schema: dict[str, Any]) -> None:
    """Every node of the schema has a type (what apiextensions/v1 requires for defaults)."""
    assert _structural_problems(schema, "") == []


def test_names_group_and_printer_columns() -> None:
    """The CRD is namespaced, has a short name, a status subresource and the printer columns."""
    crd = load_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert (spec["group"], spec["names"]["kind"], spec["scope"]) == (GROUP, KIND, "Namespaced")
    assert "wc" in spec["names"]["shortNames"]
    (version,) = spec["versions"]
    assert version["name"] == VERSION
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Node"] == ".spec.nodeName"
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Digest"] == ".status.digest"
    assert columns["Age"] == ".metadata.creationTimestamp"
