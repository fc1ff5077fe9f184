"""The output contract (S32): determinism, strict OCI types, the schema and its deviations."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from controller import oci
from controller.bundle import LinksDocument
from controller.errors import PermanentError
from controller.generate import encode_spec, generate
from controller.models import decode_request
from tests.schema import (
    SCHEMA_DIR,
    SKIP_REASON,
    check_spec_bytes,
    schema_available,
    schema_errors,
    strict_roundtrip,
    validate_spec,
)
from tests.unit.spec.request_builders import lcow_request, merge, run, spec_json, windows_request

EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.json")) if EXAMPLES_DIR.is_dir() else []
needs_schema = pytest.mark.skipif(not schema_available(), reason=SKIP_REASON)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_generate_or_fail_typed(path: Path) -> None:
    """S32: every examples/*.json gives a deterministic valid spec or a PermanentError."""
    document = path.read_bytes()
    try:
        first = encode_spec(generate(decode_request(document)).spec)
    except PermanentError:
        return
    assert encode_spec(generate(decode_request(document)).spec) == first
    check_spec_bytes(first)


def test_examples_present() -> None:
    """S32: the repository's examples folder is found (so the test above is not vacuous)."""
    if not EXAMPLES_DIR.is_dir():
        pytest.skip(f"no examples folder at {EXAMPLES_DIR}")
    assert EXAMPLES


@pytest.mark.parametrize("factory", [windows_request, lcow_request], ids=["windows", "lcow"])
def test_generate_twice_byte_identical(factory: Any) -> None:
    """S32: two generations from separately decoded copies of a request are byte-identical."""
    request = factory()
    first = encode_spec(run(copy.deepcopy(request)).spec)
    assert encode_spec(run(copy.deepcopy(request)).spec) == first


def test_field_order_is_gos() -> None:
    """S32: members come in the Go struct order, so the bytes are stable and read like dockerd's."""
    assert list(spec_json(lcow_request())) == [
        "ociVersion", "process", "root", "hostname", "mounts", "linux", "windows",
    ]  # fmt: skip
    assert list(spec_json(lcow_request())["process"]) == [
        "user", "args", "env", "cwd", "capabilities",
    ]  # fmt: skip


def test_strict_decode_refuses_unknown_members() -> None:
    """S32: the OCI types are strict: an unknown member does not decode."""
    data = encode_spec(run(windows_request()).spec)
    bad = data.replace(b'"ociVersion"', b'"bogus":1,"ociVersion"')
    with pytest.raises(AssertionError, match="does not decode strictly"):
        strict_roundtrip(bad)
    assert isinstance(strict_roundtrip(data), oci.Spec)


def test_strict_roundtrip_refuses_non_canonical_bytes() -> None:
    """S32: bytes that decode but re-encode differently (spacing, order) are refused."""
    data = encode_spec(run(windows_request()).spec)
    with pytest.raises(AssertionError, match="byte-identically"):
        strict_roundtrip(json.dumps(json.loads(data), indent=1).encode())


@needs_schema
def test_schema_dir_has_the_config_schema() -> None:
    """S32: the packaged OCI schema folder holds config-schema.json and its Windows definitions."""
    assert (SCHEMA_DIR / "config-schema.json").is_file()
    assert (SCHEMA_DIR / "config-windows.json").is_file()


@needs_schema
def test_credential_spec_string_is_the_only_credential_spec_deviation() -> None:
    """S26/S32: a string credentialSpec is allowed; any other wrong type is still an error."""
    spec = spec_json(windows_request())
    spec["windows"]["credentialSpec"] = '{"a":1}'
    validate_spec(spec)
    spec["windows"]["credentialSpec"] = 5
    assert schema_errors(spec) == ["windows/credentialSpec: 5 is not of type 'object'"]


@needs_schema
def test_device_id_type_is_the_only_device_deviation() -> None:
    """S28/S32: idType other than class is allowed; a missing id or an empty type is not."""
    spec = spec_json(windows_request())
    spec["windows"]["devices"] = [{"id": "x", "idType": "vpci-class-guid"}]
    validate_spec(spec)
    spec["windows"]["devices"] = [{"idType": "class"}, {"id": "y", "idType": ""}]
    errors = schema_errors(spec)
    assert len(errors) == 2
    assert errors[0].startswith("windows/devices/0: 'id' is a required property")


@needs_schema
@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("process", "cwd"), 3),
        (("windows", "layerFolders"), []),
        (("windows", "resources"), {"cpu": {"shares": 70000}}),
        (("windows", "network"), {"endpointList": "x"}),
        (("root",), {}),
    ],
)
def test_schema_catches_real_violations(path: tuple[str, ...], value: Any) -> None:
    """S32: the schema check is live: real violations are reported."""
    spec = spec_json(windows_request())
    target = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(AssertionError, match="spec does not validate"):
        validate_spec(spec)


def test_links_document_round_trips() -> None:
    """S5/S32: the links map encodes to JSON that decodes back to the same links."""
    request = merge(
        windows_request(),
        {
            "secrets": [{"secretId": "s1", "target": "pw"}],
            "configs": [{"configId": "c1", "target": "c.json"}],
        },
    )
    links = run(request).links
    data = msgspec.json.encode(LinksDocument(links=links))
    assert msgspec.json.decode(data, type=LinksDocument).links == links
