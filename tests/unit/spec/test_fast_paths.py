"""The generator's fast paths give what the slow reference (``ntpath``) gives, for any path.

``controller.winpath`` and ``check_file_path`` skip ``ntpath`` when a cheap test proves the
result; these properties compare them with the plain ``ntpath`` computation on paths built
from the pieces that matter to Windows path rules (drives, both separators, ".", "..", empty
components, colons, UNC and device prefixes, non-ASCII letters).
"""

from __future__ import annotations

import ntpath
import posixpath

from hypothesis import example, given, settings
from hypothesis import strategies as st

from controller.credspec import check_file_path, credential_spec_base
from controller.errors import SpecError
from controller.winpath import clean, depth, has_drive_root, host_join, is_absolute, looks_windows

COMPONENT = st.sampled_from(
    ["a", "usr", "f.json", ".", "..", "...", "", ":", "x:", " ", "İ", "ß", "a\n", ".\n", "C:"]
)
SEPARATOR = st.sampled_from(["\\", "/"])
START = st.sampled_from(
    ["", "/", "\\", "C:", "C:\\", "c:/", "//", "\\\\", "/:", "\\\\?\\", "\\\\.\\", "x", "D:\\İ\\"]
)
END = st.sampled_from(["", "\\", "/"])


@st.composite
def paths(draw: st.DrawFn) -> str:
    """A start (drive, root, UNC or device prefix), components joined by either separator."""
    components = draw(st.lists(st.tuples(COMPONENT, SEPARATOR), max_size=6))
    body = "".join(c + s for c, s in components)[:-1] if components else ""
    return draw(START) + body + draw(END)


PATHS = st.one_of(paths(), st.text(alphabet="C:\\/.a İ", max_size=12))


@settings(max_examples=400)
@given(path=PATHS)
# Near misses of the fast paths: a drive read into "/:", "." and ".." components, empty
# components, trailing separators, a bare drive root, device prefixes.
@example(path="/:./:")
@example(path="/usr/./share")
@example(path="/usr/../share")
@example(path="/usr//share")
@example(path="/usr/share/")
@example(path="C:\\a\\.\\b")
@example(path="C:\\a\\..")
@example(path="C:\\a\\")
@example(path="C:\\")
@example(path="C:")
@example(path="C:\\a/b")
@example(path="\\\\?\\C:\\a\\..")
def test_clean_and_depth_agree_with_ntpath(path: str) -> None:
    """S5: clean() is ntpath.normpath and depth() counts its separators, fast path or not."""
    assert clean(path) == ntpath.normpath(path)
    assert depth(path) == ntpath.normpath(path).count("\\")


@settings(max_examples=400)
@given(base=PATHS, parts=st.lists(st.one_of(COMPONENT, PATHS), max_size=4))
@example(base="C:\\docker", parts=[])
@example(base="C:\\docker\\", parts=["containers", "id"])
@example(base="C:/docker", parts=["x", ""])
@example(base="C:\\docker", parts=["D:x"])
@example(base="C:", parts=["x"])
def test_host_join_agrees_with_the_path_modules(base: str, parts: list[str]) -> None:
    """S5: host_join() is ntpath.join on a Windows base and posixpath.join on another one."""
    module = ntpath if looks_windows(base) else posixpath
    assert host_join(base, *parts) == module.join(base, *parts)


@settings(max_examples=300)
@given(base=PATHS, path=PATHS)
def test_drive_rooted_paths_survive_a_join(base: str, path: str) -> None:
    """S5: ntpath.join returns a path with a drive and a root unchanged (config targets)."""
    if has_drive_root(path):
        assert ntpath.join(base, path) == path


def _reference_check_file_path(value: str, daemon_root: str) -> tuple[str, ...]:
    """S23's containment check done in full with ntpath, without the fast path."""
    if any(ord(ch) < 0x20 for ch in value):
        raise SpecError(
            "invalid credential spec - file:// path contains a NUL or control character"
        )
    if is_absolute(value):
        raise SpecError("invalid credential spec - file:// path cannot be absolute")
    base = credential_spec_base(daemon_root)
    base_win = ntpath.normpath(base.replace("/", "\\"))
    full = ntpath.normpath(ntpath.join(base_win, value)).split("\\")
    base_parts = ntpath.normcase(base_win).rstrip("\\").split("\\")
    head = [ntpath.normcase(p) for p in full[: len(base_parts)]]
    rest = tuple(p for p in full[len(base_parts) :] if p)
    if head != base_parts or not rest:
        raise SpecError(f"invalid credential spec - file:// path must be under {base}")
    return rest


def _outcome(check: object, value: str, daemon_root: str) -> tuple[str, object]:
    assert callable(check)
    try:
        return ("parts", check(value, daemon_root))
    except SpecError as exc:
        return ("error", str(exc))


@settings(max_examples=400)
@given(value=PATHS, daemon_root=PATHS)
@example(value="f.json", daemon_root="C:\\İ")
@example(value="a\\.\\f.json", daemon_root="C:\\docker")
@example(value="a:b", daemon_root="C:\\docker")
@example(value="f.json", daemon_root="/srv/docker")
def test_check_file_path_agrees_with_the_full_check(value: str, daemon_root: str) -> None:
    """S23: check_file_path() gives the parts or error of the full ntpath containment check."""

    def fast(v: str, root: str) -> tuple[str, ...]:
        return check_file_path(v, daemon_root=root)

    expected = _outcome(_reference_check_file_path, value, daemon_root)
    assert _outcome(fast, value, daemon_root) == expected


def test_a_base_whose_case_folding_changes_length_keeps_the_names_whole() -> None:
    """S23: a daemon root with "İ" (longer when lower-cased) still yields the file's own name."""
    assert check_file_path("f.json", daemon_root="C:\\İ") == ("f.json",)
    assert check_file_path("a\\..\\f.json", daemon_root="C:\\İ") == ("f.json",)
