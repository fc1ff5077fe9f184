"""The request JSON Schema and the decoder accept exactly the same documents (S12, S32).

One known gap, which JSON Schema cannot express: a number with a fraction part that is zero
(``1.0``) is an integer to JSON Schema, but not to the decoder (nor to Docker's Go decoder). The
validator here therefore counts only JSON integers written without a fraction (Python ``int``)
as ``integer``; the README states the gap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.errors import RequestDecodeError
from controller.models import decode_request
from tests.unit.spec.golden import load_cases
from tests.unit.spec.test_properties import requests

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((ROOT / "controller" / "request.schema.json").read_bytes())
EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
GOLDEN = [c.path / "request.json" for c in load_cases()]

# JSON integers are what the decoder takes as int: 1.0 is a float in Python as in msgspec.
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
)
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)
VALIDATOR = _Validator(SCHEMA)


def _schema_accepts(document: Any) -> bool:
    return VALIDATOR.is_valid(document)


def _decoder_accepts(document: Any) -> bool:
    try:
        decode_request(json.dumps(document).encode())
    except RequestDecodeError:
        return False
    return True


def _agree(document: Any) -> None:
    # Both sides see the same JSON document (strategies may build tuples, JSON has arrays).
    document = json.loads(json.dumps(document))
    schema, decoder = _schema_accepts(document), _decoder_accepts(document)
    why = [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(document)]
    assert schema == decoder, (
        f"schema {'accepts' if schema else 'refuses'} {why[:3]} but decoder "
        f"{'accepts' if decoder else 'refuses'}: {json.dumps(document)[:2000]}"
    )


@pytest.mark.parametrize("path", EXAMPLES + GOLDEN, ids=lambda p: p.parent.name + "/" + p.name)
def test_examples_and_golden_requests_agree(path: Path) -> None:
    """S32: the schema and the decoder agree on every example and golden request."""
    _agree(json.loads(path.read_bytes()))


def test_examples_are_accepted_and_empty_layers_refused_by_both() -> None:
    """S12: both accept every example; both refuse the golden request with empty layerFolders."""
    assert EXAMPLES
    assert all(_schema_accepts(json.loads(p.read_bytes())) for p in EXAMPLES)
    no_layers = json.loads((ROOT / "tests/unit/spec/cases/s12-no-layers/request.json").read_bytes())
    assert not _schema_accepts(no_layers)
    assert not _decoder_accepts(no_layers)


def _base() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        (ROOT / "examples" / "process-isolated.json").read_bytes()
    )
    return document


@pytest.mark.parametrize(
    ("change", "accepted"),
    [
        (lambda d: d.update(container=[d["container"]]), True),
        (lambda d: d.update(image=[d["image"]]), True),
        (lambda d: d.update(container=[]), False),
        (lambda d: d.update(container=[d["container"], d["container"]]), False),
        (lambda d: d.update(container=[5]), False),
        (lambda d: d.pop("layerFolders"), False),
        (lambda d: d.update(layerFolders=[]), False),
        (lambda d: d.update(bogus=1), False),
        (lambda d: d["node"].update(cpuCount=2**63), False),
        (lambda d: d["node"].update(cpuCount="4"), False),
        (lambda d: d["container"].update(Unknown={"x": 1}), True),
        (lambda d: d.update(secrets=[{"secretId": "s", "target": "t", "data": "YQ"}]), False),
        (lambda d: d.update(secrets=[{"secretId": "s", "target": "t", "data": "YQ=="}]), True),
        (lambda d: d.update(secrets=[{"secretId": "s", "target": "t", "data": "YQ==\n"}]), False),
        (lambda d: d["container"]["HostConfig"].update(ConsoleSize=[1, 2, 3]), False),
    ],
)
def test_edge_documents_agree(change: Any, accepted: bool) -> None:
    """S12/S32: inspect arrays, layerFolders, base64 and bounds get the same verdict in both."""
    document = _base()
    change(document)
    assert _schema_accepts(document) is accepted
    assert _decoder_accepts(document) is accepted


@st.composite
def wild_requests(draw: st.DrawFn) -> Any:
    """A generated request, then some of the changes where schema and decoder could part."""
    document: dict[str, Any] = draw(requests())
    if draw(st.booleans()):
        member = draw(st.sampled_from(["container", "image"]))
        document[member] = [document[member]] * draw(st.integers(min_value=0, max_value=2))
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        document.pop("layerFolders", None)
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        key = draw(st.sampled_from(["bogus", "node", "volumePath", "swarmManaged", "endpoints"]))
        document[key] = draw(st.one_of(st.none(), st.integers(), st.text(max_size=4), st.just([])))
    if draw(st.integers(min_value=0, max_value=5)) == 0 and document.get("secrets"):
        document["secrets"][0]["data"] = draw(st.text(alphabet="YQWJj=+/ \n-", max_size=8))
    return document


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=wild_requests())
def test_generated_requests_agree(document: Any) -> None:
    """S32: on hypothesis-generated requests the schema and the decoder give the same verdict."""
    _agree(document)
