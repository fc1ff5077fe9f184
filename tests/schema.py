"""Checks every generated spec against the OCI runtime spec schema and the strict OCI types (S32).

The schema files are the runtime-spec repository's ``schema/*.json`` as Debian packages them in
``golang-github-opencontainers-specs-dev`` (installed by ``.ci/install-oci-checks.sh``; see the
DEVELOPMENT.md's set-up), under ``/usr/share/gocode``. ``WINSPEC_OCI_SCHEMA_DIR`` points the
checks at another copy. The files reference each other by bare file name, so each one is
registered under that name.

Only the two documented deviations are let through (controller/RULES.md lists them): S26
(``windows.credentialSpec`` is the JSON *text*, the schema says object) and S28
(``windows.devices[].idType`` other than ``class``, as later moby allows).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import referencing
import referencing.jsonschema

from controller import oci
from controller.generate import encode_spec

#: Where Debian's golang-github-opencontainers-specs-dev installs the runtime-spec sources.
RUNTIME_SPEC_SOURCE = Path("/usr/share/gocode/src/github.com/opencontainers/runtime-spec")
SCHEMA_DIR = Path(os.environ.get("WINSPEC_OCI_SCHEMA_DIR") or RUNTIME_SPEC_SOURCE / "schema")
CONFIG_SCHEMA = "config-schema.json"


def schema_available() -> bool:
    """Whether the OCI schema folder is there (tests that need it skip when it is not)."""
    return (SCHEMA_DIR / CONFIG_SCHEMA).is_file()


SKIP_REASON = (
    f"OCI runtime spec schema not found at {SCHEMA_DIR} "
    "(install it with .ci/install-oci-checks.sh: golang-github-opencontainers-specs-dev)"
)


@functools.cache
def _validator() -> jsonschema.Draft4Validator:
    """A draft-04 validator of config-schema.json with every sibling file registered."""
    resources: list[tuple[str, referencing.Resource[Any]]] = []
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append((path.name, referencing.jsonschema.DRAFT4.create_resource(contents)))
    registry: referencing.Registry[Any] = referencing.Registry().with_resources(resources)
    schema = json.loads((SCHEMA_DIR / CONFIG_SCHEMA).read_text(encoding="utf-8"))
    return jsonschema.Draft4Validator(schema, registry=registry)


def _is_allowed_deviation(error: jsonschema.ValidationError) -> bool:
    """S26 and S28: the two places our output knowingly differs from the schema."""
    path: Sequence[Any] = list(error.absolute_path)
    if (
        path == ["windows", "credentialSpec"]
        and error.validator == "type"
        and isinstance(error.instance, str)
    ):
        return True  # S26: hcsshim reads the credential spec as a JSON string
    return (
        len(path) == 4
        and path[:2] == ["windows", "devices"]
        and isinstance(path[2], int)
        and path[3] == "idType"
        and error.validator == "enum"
        and isinstance(error.instance, str)
        and error.instance != ""
    )  # S28: IDType://ID device assignment (e.g. vpci-class-guid)


def schema_errors(spec_json: dict[str, Any]) -> list[str]:
    """Every schema violation of a spec except the documented deviations, as readable lines."""
    lines: list[str] = []
    for error in _validator().iter_errors(spec_json):
        if _is_allowed_deviation(error):
            continue
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        lines.append(f"{where}: {error.message}")
    return sorted(lines)


def validate_spec(spec_json: dict[str, Any]) -> None:
    """Assert a spec (as decoded JSON) validates against the OCI schema, deviations aside."""
    errors = schema_errors(spec_json)
    if errors:
        raise AssertionError("spec does not validate:\n" + "\n".join(errors))


def strict_roundtrip(data: bytes) -> oci.Spec:
    """Assert ``config.json`` bytes decode strictly into the OCI types and re-encode unchanged."""
    try:
        spec = msgspec.json.decode(data, type=oci.Spec)
    except msgspec.DecodeError as exc:
        raise AssertionError(f"spec does not decode strictly into oci.Spec: {exc}") from exc
    again = encode_spec(spec)
    if again != data:
        raise AssertionError(
            f"spec does not re-encode byte-identically:\n{data.decode()}\n{again.decode()}"
        )
    return spec


def check_spec_bytes(data: bytes) -> None:
    """Both checks of S32 on ``config.json`` bytes (schema only when it is installed)."""
    strict_roundtrip(data)
    if schema_available():
        validate_spec(json.loads(data))
