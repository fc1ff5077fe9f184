"""The repository stands on its own: its documents link only inside it, to files and headings that
exist, and name no side folder; every command a page shows is run by a test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.readme_commands import DOCUMENTS, commands_of, known_commands
from tests.repo_files import ROOT, heading_anchors, markdown_files, relative_links, repo_files

# Built from parts so this file does not contain the string it looks for.
SIDE_FOLDER = ".." + "/shared"
MARKDOWN = markdown_files()
DOCUMENT_IDS = [p.relative_to(ROOT).as_posix() for p in DOCUMENTS]
#: Fence languages that would hold shell commands the command scan (``sh`` only) does not read.
OTHER_SHELLS = {"bash", "shell", "console", "zsh", "shell-session", "sh-session"}


def test_the_file_walk_finds_the_documents() -> None:
    """The file list holds README, ARCHITECTURE, RULES and CHANGELOG (an empty walk cannot pass)."""
    names = {p.relative_to(ROOT).as_posix() for p in MARKDOWN}
    assert {"README.md", "ARCHITECTURE.md", "controller/RULES.md", "CHANGELOG.md"} <= names


@pytest.mark.parametrize("path", MARKDOWN, ids=[p.relative_to(ROOT).as_posix() for p in MARKDOWN])
def test_every_relative_link_resolves_inside_the_repository(path: Path) -> None:
    """Relative links name existing files or folders of the repository; an #anchor, a heading."""
    broken = []
    for target in relative_links(path, same_page=True):
        name, _, anchor = target.partition("#")
        resolved = (path.parent / name).resolve() if name else path
        missing = not resolved.is_relative_to(ROOT) or not resolved.exists()
        headed = not missing and resolved.suffix == ".md" and anchor in heading_anchors(resolved)
        if missing or (anchor and not headed):
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


def test_the_documents_are_the_readme_development_and_every_docs_page() -> None:
    """The pages whose commands are checked: README.md, DEVELOPMENT.md and every docs/*.md."""
    expected = {"README.md", "DEVELOPMENT.md"} | {
        p.relative_to(ROOT).as_posix() for p in MARKDOWN if p.parent == ROOT / "docs"
    }
    assert len(expected) > 5
    assert set(DOCUMENT_IDS) == expected


@pytest.mark.parametrize("document", DOCUMENTS, ids=DOCUMENT_IDS)
def test_every_command_of_a_page_is_run_by_a_test(document: Path) -> None:
    """Each command of the page (sh blocks, inline .venv/bin commands) is one a test or CI runs."""
    unknown = sorted(set(commands_of(document)) - known_commands())
    assert not unknown, f"{document.relative_to(ROOT)}: commands no test or .ci/run runs: {unknown}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=DOCUMENT_IDS)
def test_no_page_hides_commands_in_another_shell_fence(document: Path) -> None:
    """No code block of the page is marked bash, shell or console, which the command scan skips."""
    text = document.read_text(encoding="utf-8")
    languages = {m.lower() for m in re.findall(r"^```\s*([\w-]+)", text, re.MULTILINE)}
    assert not languages & OTHER_SHELLS, f"{document.relative_to(ROOT)}: use ```sh for commands"


def test_the_anchor_rule_matches_github(tmp_path: Path) -> None:
    """Headings with code, punctuation and repeats get GitHub's anchors (the link check's basis)."""
    page = tmp_path / "page.md"
    page.write_text("# A `b` (c): d_e\n## A `b` (c): d_e\n```sh\n# not a heading\n```\n")
    assert heading_anchors(page) == {"a-b-c-d_e", "a-b-c-d_e-1"}
    anchors = heading_anchors(ROOT / "docs" / "agent.md")
    assert {"central-delivery---delivery-agent", "node-agent-winspec-agent"} <= anchors
    assert "docker-mode-what-winspec-trusts" in heading_anchors(ROOT / "docs" / "security.md")
