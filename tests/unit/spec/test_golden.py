"""Golden cases (``cases/*``): each request gives exactly the reviewed files (S1–S32)."""

from __future__ import annotations

import json

import pytest

from controller.generate import encode_spec, generate
from controller.models import decode_request
from tests.schema import SKIP_REASON, schema_available, strict_roundtrip, validate_spec
from tests.unit.spec.golden import Case, actual_outputs, expected_outputs, load_cases

CASES = load_cases()
SPEC_CASES = [c for c in CASES if (c.path / "config.json").is_file()]
RULE_IDS = {f"S{n}" for n in range(1, 33)}


@pytest.mark.parametrize("case", CASES, ids=[c.test_id for c in CASES])
def test_golden_case(case: Case) -> None:
    """S1–S31: the request gives exactly the expected config.json/links/warnings or error."""
    expected = expected_outputs(case)
    assert expected, f"{case.name}: no expected output files"
    assert actual_outputs(case) == expected, case.doc


@pytest.mark.parametrize("case", SPEC_CASES, ids=[c.test_id for c in SPEC_CASES])
def test_golden_spec_is_strict_and_stable(case: Case) -> None:
    """S32: the spec is byte-identical when generated twice and decodes strictly."""
    request_bytes = (case.path / "request.json").read_bytes()
    first = encode_spec(generate(decode_request(request_bytes)).spec)
    second = encode_spec(generate(decode_request(request_bytes)).spec)
    assert first == second
    strict_roundtrip(first)


@pytest.mark.skipif(not schema_available(), reason=SKIP_REASON)
@pytest.mark.parametrize("case", SPEC_CASES, ids=[c.test_id for c in SPEC_CASES])
def test_golden_spec_validates_against_schema(case: Case) -> None:
    """S32: the expected config.json validates against the OCI schema (S26/S28 aside)."""
    validate_spec(json.loads((case.path / "config.json").read_bytes()))


@pytest.mark.parametrize("case", CASES, ids=[c.test_id for c in CASES])
def test_golden_case_is_well_formed(case: Case) -> None:
    """S32: a case names real rule ids, documents itself and has exactly one kind of outcome."""
    assert case.rules, f"{case.name}: meta.json names no rule"
    assert set(case.rules) <= RULE_IDS, f"{case.name}: unknown rule ids {case.rules}"
    assert case.doc.strip()
    assert "\n" not in case.doc
    files = expected_outputs(case)
    assert ("error.txt" in files) != ("config.json" in files)
    if "error.txt" in files:
        assert set(files) == {"error.txt"}
    if "warnings.json" in files:
        assert json.loads(files["warnings.json"]), "an empty warnings.json is not written"
