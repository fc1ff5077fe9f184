"""controller/RULES.md describes every rule S1–S32 and names only tests and cases that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
RULES_MD = ROOT / "controller" / "RULES.md"
CASES = ROOT / "tests" / "unit" / "spec" / "cases"
SECTION = re.compile(r"^### (S\d+) — ", re.MULTILINE)
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")
CASES_LINE = re.compile(r"cases? ((?:`[\w-]+`(?:,\s*)?)+)")


def _sections() -> dict[str, str]:
    """Rule id → the text of its section."""
    text = RULES_MD.read_text(encoding="utf-8")
    starts = list(SECTION.finditer(text))
    sections = {}
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else text.find("\n## ", match.end())
        sections[match.group(1)] = text[match.start() : end if end != -1 else len(text)]
    return sections


def _test_names(path: Path) -> set[str]:
    """The names of the test functions defined in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def test_every_rule_has_a_section_in_order() -> None:
    """S1–S32: RULES.md has one section per rule id, in order, and no other."""
    assert list(_sections()) == [f"S{n}" for n in range(1, 33)]


def test_every_rule_names_its_tests() -> None:
    """S1–S32: each section of RULES.md has a Tests line naming at least one test function."""
    missing = [rule for rule, text in _sections().items() if not TEST_REF.search(text)]
    assert not missing, f"sections naming no test: {missing}"


def test_every_named_test_exists() -> None:
    """S1–S32: every `file::test` RULES.md names is a test function defined in that file."""
    text = RULES_MD.read_text(encoding="utf-8")
    refs = TEST_REF.findall(text)
    assert len(refs) > 32
    missing = [
        f"{file}::{name}"
        for file, name in refs
        if not (ROOT / file).is_file() or name not in _test_names(ROOT / file)
    ]
    assert not missing, f"RULES.md names tests that do not exist: {missing}"


def test_every_named_case_exists_and_checks_its_rule() -> None:
    """S1–S32: every golden case a rule's section names exists and lists that rule in meta.json."""
    problems = []
    for rule, text in _sections().items():
        for group in CASES_LINE.findall(text):
            for name in re.findall(r"`([\w-]+)`", group):
                meta = CASES / name / "meta.json"
                if not meta.is_file():
                    problems.append(f"{rule}: no case {name}")
                elif f'"{rule}"' not in meta.read_text(encoding="utf-8"):
                    problems.append(f"{rule}: case {name} does not list {rule}")
    assert not problems, "\n".join(problems)


def test_deviations_are_listed_in_one_table() -> None:
    """S26, S28: RULES.md lists exactly these two deviations from the OCI schema, in one table."""
    text = RULES_MD.read_text(encoding="utf-8")
    heading = "## Deviations from the OCI schema"
    assert text.count(heading) == 1
    table = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (S\d+) \|", table, re.MULTILINE)
    assert rows == ["S26", "S28"]
