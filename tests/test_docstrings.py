"""The test suite's own rule: every test states the behaviour it checks in a one-line docstring."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def _offences(path: Path) -> list[str]:
    """file:line:name of each test_* function in path without a single-line docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if not node.name.startswith("test_"):
            continue
        docstring = ast.get_docstring(node, clean=False)
        first = node.body[0]
        # One physical line: a docstring whose quotes sit on their own lines has no newline
        # once stripped, but still spans several lines of the file.
        if not docstring or "\n" in docstring.strip() or first.lineno != first.end_lineno:
            found.append((node.lineno, node.name))
    where = path.relative_to(TESTS.parent)
    return [f"{where}:{line}:{name}" for line, name in sorted(found)]


def test_every_test_has_a_one_line_docstring() -> None:
    """Every test_* function under tests/ has a docstring on one single line."""
    files = sorted(TESTS.rglob("test_*.py"))
    # Guards against a walk that silently finds nothing (and so passes).
    assert TESTS / "test_docstrings.py" in files
    offenders = [offence for path in files for offence in _offences(path)]
    assert not offenders, "tests without a one-line docstring:\n" + "\n".join(offenders)
