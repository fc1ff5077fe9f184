"""The repository's own files, for tests that check documentation and references.

Tracked files plus new ones not ignored (``git ls-files --cached --others --exclude-standard``);
outside a git checkout (an unpacked sdist), or where git refuses it, every file except the tool
folders.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_SKIPPED_DIRS = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
_SKIPPED_DIRS |= {".hypothesis", ".import_linter_cache", "build", "dist"}
#: ``[text](target)`` links of Markdown (inline form, the one this repository uses; the text may
#: run over a line break).
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@functools.cache
def repo_files() -> tuple[Path, ...]:
    """Every file of the repository, as absolute paths, sorted."""
    git = shutil.which("git")
    if git is not None and (ROOT / ".git").exists():
        listed = subprocess.run(
            [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        # git refuses a checkout another user owns ("dubious ownership"): walk it instead.
        if listed.returncode == 0:
            names = listed.stdout.decode().split("\0")
            return tuple(sorted(p for p in (ROOT / n for n in names if n) if p.is_file()))
    found = [
        p
        for p in ROOT.rglob("*")
        if p.is_file()
        and not _SKIPPED_DIRS.intersection(p.relative_to(ROOT).parts)
        and not p.name.endswith(".egg-info")
    ]
    return tuple(sorted(found))


def markdown_files() -> list[Path]:
    """Every Markdown file of the repository."""
    return [p for p in repo_files() if p.suffix == ".md"]


def relative_links(path: Path, *, same_page: bool = False) -> list[str]:
    """The relative link targets of one Markdown file (no URLs; same-page ``#anchor`` links only
    with ``same_page``)."""
    targets = []
    for target in MARKDOWN_LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue
        if target.startswith("#") and not same_page:
            continue
        targets.append(target)
    return targets


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of one Markdown file: the heading's text without its
    inline markup, lower-cased, every character but letters, digits, spaces, ``-`` and ``_``
    dropped, spaces made ``-``; a repeated anchor gets ``-1``, ``-2``, …"""
    anchors: set[str] = set()
    fence = None
    for line in path.read_text(encoding="utf-8").splitlines():
        marker = re.match(r"^\s*(`{3,}|~{3,})", line)
        if marker and (fence is None or marker.group(1).startswith(fence)):
            fence = None if fence else marker.group(1)
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fence or not heading:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors
