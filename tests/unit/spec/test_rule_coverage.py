"""Every rule S1–S32 (controller/RULES.md) is named by a test; every test says what it checks."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

SPEC_TESTS = Path(__file__).resolve().parent
RULE = re.compile(r"\bS([1-9][0-9]?)\b")
ALL_RULES = {f"S{n}" for n in range(1, 33)}


def _test_functions() -> list[tuple[str, ast.FunctionDef]]:
    """Every ``test_*`` function in the tree, with its file name."""
    found = []
    for path in sorted(SPEC_TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found.append((f"{path.name}::{node.name}", node))
    return found


def _named_rules() -> dict[str, set[str]]:
    """Rule id → where it is named: test docstrings and golden case meta.json files."""
    named: dict[str, set[str]] = {}
    for where, node in _test_functions():
        for number in RULE.findall(ast.get_docstring(node) or ""):
            named.setdefault(f"S{number}", set()).add(where)
    for meta in sorted((SPEC_TESTS / "cases").glob("*/meta.json")):
        for rule in json.loads(meta.read_text(encoding="utf-8"))["rules"]:
            named.setdefault(rule, set()).add(f"cases/{meta.parent.name}")
    return named


def test_every_rule_is_named_by_a_test() -> None:
    """S1–S32: each rule id S1…S32 appears in a test docstring or a golden case's meta.json."""
    missing = sorted(ALL_RULES - set(_named_rules()), key=lambda r: int(r[1:]))
    assert not missing, f"rules no test names: {missing}"


def test_no_unknown_rule_ids() -> None:
    """S32: tests name only rules that exist (S1–S32)."""
    unknown = set(_named_rules()) - ALL_RULES
    assert not unknown, f"unknown rule ids: {sorted(unknown)}"


TESTS = _test_functions()


@pytest.mark.parametrize(("where", "node"), TESTS, ids=[where for where, _ in TESTS])
def test_each_test_has_a_one_line_rule_docstring(where: str, node: ast.FunctionDef) -> None:
    """S32: every test has a one-line docstring that names the rule(s) it checks."""
    doc = ast.get_docstring(node)
    assert doc, f"{where}: no docstring"
    assert "\n" not in doc.strip(), f"{where}: docstring is more than one line"
    assert RULE.search(doc), f"{where}: docstring names no rule id"
