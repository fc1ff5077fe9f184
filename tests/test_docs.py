"""The repository stands on its own: its documents link only inside it and name no side folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.repo_files import ROOT, markdown_files, relative_links, repo_files

# Built from parts so this file does not contain the string it looks for.
SIDE_FOLDER = ".." + "/shared"
MARKDOWN = markdown_files()


def test_the_file_walk_finds_the_documents() -> None:
    """The file list holds README, ARCHITECTURE, RULES and CHANGELOG (an empty walk cannot pass)."""
    names = {p.relative_to(ROOT).as_posix() for p in MARKDOWN}
    assert {"README.md", "ARCHITECTURE.md", "controller/RULES.md", "CHANGELOG.md"} <= names


@pytest.mark.parametrize("path", MARKDOWN, ids=[p.relative_to(ROOT).as_posix() for p in MARKDOWN])
def test_every_relative_link_resolves_inside_the_repository(path: Path) -> None:
    """Every relative link of a Markdown file names an existing file or folder of the repository."""
    broken = []
    for target in relative_links(path):
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
    assert not broken, (
        f"{path.relative_to(ROOT)}: links that leave or miss the repository: {broken}"
    )


def test_no_file_refers_to_a_side_folder() -> None:
    """No file of the repository refers to the shared folder beside it (SIDE_FOLDER)."""
    offenders = []
    for path in repo_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if SIDE_FOLDER in text:
            offenders.append(path.relative_to(ROOT).as_posix())
    assert not offenders, f"files naming {SIDE_FOLDER}: {offenders}"


def test_readme_and_docstrings_link_the_rules_and_the_architecture() -> None:
    """README links RULES.md and ARCHITECTURE.md; generate.py's docstring names RULES.md."""
    readme = set(relative_links(ROOT / "README.md"))
    assert "controller/RULES.md" in readme
    assert "ARCHITECTURE.md" in readme
    assert "RULES.md" in (ROOT / "controller" / "generate.py").read_text(encoding="utf-8")
