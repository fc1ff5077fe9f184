"""S32 against an independent consumer: the OCI Go types decode every spec strictly, unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.errors import PermanentError
from controller.generate import encode_spec, generate
from controller.models import decode_request
from tests.ocireference import check_files, unavailable_reason
from tests.unit.spec.golden import load_cases

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("*.json"))
GOLDEN_SPECS = [c.path / "config.json" for c in load_cases() if (c.path / "config.json").is_file()]
REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"OCI Go check unavailable: {REASON}")


def test_golden_specs_decode_strictly_into_specs_go() -> None:
    """S32: every golden config.json decodes strictly into specs.Spec and re-encodes unchanged."""
    assert len(GOLDEN_SPECS) > 50
    assert check_files(GOLDEN_SPECS) == {}


def test_example_specs_decode_strictly_into_specs_go(tmp_path: Path) -> None:
    """S32: the spec of every examples/*.json decodes strictly into specs.Spec unchanged."""
    written = []
    for example in EXAMPLES:
        try:
            spec = generate(decode_request(example.read_bytes())).spec
        except PermanentError:
            continue
        out = tmp_path / f"{example.stem}.config.json"
        out.write_bytes(encode_spec(spec))
        written.append(out)
    assert len(written) >= 5
    assert check_files(written) == {}


def test_the_go_check_refuses_unknown_fields_and_changed_bytes(tmp_path: Path) -> None:
    """S32: the Go check is live: an unknown member and non-canonical spacing both fail."""
    good = GOLDEN_SPECS[0].read_bytes()
    unknown = tmp_path / "unknown.json"
    unknown.write_bytes(good.replace(b'"ociVersion"', b'"bogus":1,"ociVersion"', 1))
    spaced = tmp_path / "spaced.json"
    spaced.write_bytes(good.replace(b'":', b'": ', 1))
    failures = check_files([GOLDEN_SPECS[0], unknown, spaced])
    assert set(failures) == {str(unknown), str(spaced)}
    assert 'unknown field "bogus"' in failures[str(unknown)]
    assert "re-encoding differs" in failures[str(spaced)]
