"""Golden cases: ``cases/<name>/request.json`` in, the exact expected files out.

A case directory holds ``meta.json`` (``{"rules": ["S5", …], "doc": "one line"}``),
``request.json`` and either

- ``config.json``: the exact bytes of :func:`encode_spec`; with ``links.json`` (the bundle's
  links map, S5) when the spec has links and ``warnings.json`` when it has warnings; or
  A spec case also holds ``explain.txt``: ``winspec explain``'s annotation of the spec (each
  field with the rules and request fields that decided it, ``controller/explain.py``); or
- ``error.txt``: the exact message of the :class:`PermanentError` the request must raise.

Expected files are reviewed by hand against controller/RULES.md and moby's code, never merely
recorded: ``python -m tests.unit.spec.regen_golden`` rewrites them, and the diff must be read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import msgspec

from controller.bundle import LinksDocument
from controller.errors import PermanentError
from controller.explain import explain, render_annotations
from controller.generate import encode_spec
from controller.models import decode_request

CASES_DIR = Path(__file__).resolve().parent / "cases"
OUTPUT_FILES = ("config.json", "links.json", "warnings.json", "explain.txt", "error.txt")


@dataclass(frozen=True, slots=True)
class Case:
    """One golden case directory."""

    path: Path
    rules: tuple[str, ...]
    doc: str

    @property
    def name(self) -> str:
        """The directory name."""
        return self.path.name

    @property
    def test_id(self) -> str:
        """``<rule ids>-<name>``, so a failing test names the rules it checks."""
        return "+".join(self.rules) + ":" + self.name


def load_cases() -> list[Case]:
    """Every case directory, in name order."""
    cases = []
    for path in sorted(p for p in CASES_DIR.iterdir() if (p / "request.json").is_file()):
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        cases.append(Case(path=path, rules=tuple(meta["rules"]), doc=meta["doc"]))
    return cases


def expected_outputs(case: Case) -> dict[str, bytes]:
    """The output files present in a case directory."""
    return {n: (case.path / n).read_bytes() for n in OUTPUT_FILES if (case.path / n).is_file()}


def actual_outputs(case: Case) -> dict[str, bytes]:
    """The output files the generator gives for a case's request today."""
    try:
        # A document the decoder refuses (S12: empty layerFolders) is an outcome like any other.
        generated, annotations = explain(decode_request((case.path / "request.json").read_bytes()))
    except PermanentError as exc:
        return {"error.txt": (str(exc) + "\n").encode()}
    out = {"config.json": encode_spec(generated.spec)}
    out["explain.txt"] = render_annotations(annotations).encode()
    if generated.links:
        # The same bytes the bundle's links.json carries.
        out["links.json"] = msgspec.json.encode(LinksDocument(links=generated.links))
    if generated.warnings:
        out["warnings.json"] = (json.dumps(generated.warnings, indent=2) + "\n").encode()
    return out
