"""Windows argument escaping (S9) and its use in ``process.commandLine`` (S8)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.escape import escape_arg, escape_args
from tests.unit.spec.argv import command_line_to_argv

# Go's TestEscapeArg table (src/syscall/exec_windows_test.go), input → syscall.EscapeArg output.
GO_ESCAPE_ARG_TABLE = [
    ("", '""'),
    ("a", "a"),
    (" ", '" "'),
    ("\\", "\\"),
    ('"', '\\"'),
    ('\\"', '\\\\\\"'),
    ('\\\\"', '\\\\\\\\\\"'),
    ("\\\\ ", '"\\\\ "'),
    (" \\\\", '" \\\\\\\\"'),
    ("a ", '"a "'),
    ("C:\\", "C:\\"),
    ("C:\\Program Files (x32)\\Common\\", '"C:\\Program Files (x32)\\Common\\\\"'),
    ("C:\\Users\\Игорь\\", "C:\\Users\\Игорь\\"),
    ("Андрей\\file", "Андрей\\file"),
    ("C:\\Windows\\temp", "C:\\Windows\\temp"),
    ("c:\\temp\\newfile", "c:\\temp\\newfile"),
    ("\\\\?\\C:\\Windows", "\\\\?\\C:\\Windows"),
    ("\\\\?\\", "\\\\?\\"),
    ("\\\\.\\C:\\Windows\\", "\\\\.\\C:\\Windows\\"),
    ("\\\\server\\share\\file", "\\\\server\\share\\file"),
    ("\\\\newserver\\tempshare\\really.txt", "\\\\newserver\\tempshare\\really.txt"),
]


@pytest.mark.parametrize(("arg", "expected"), GO_ESCAPE_ARG_TABLE)
def test_escape_arg_matches_go(arg: str, expected: str) -> None:
    """S9: escape_arg gives exactly what Go's syscall.EscapeArg gives for its own test table."""
    assert escape_arg(arg) == expected


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("a\tb", '"a\tb"'),
        ("a\nb", "a\nb"),
        ('a"b c', '"a\\"b c"'),
        ("a\\\\b", "a\\\\b"),
        ("x\\", "x\\"),
        ("x \\\\", '"x \\\\\\\\"'),
    ],
)
def test_escape_arg_quotes_only_for_space_and_tab(arg: str, expected: str) -> None:
    """S9: only a space or a tab quotes; backslashes double only before a quote or the end."""
    assert escape_arg(arg) == expected


def test_escape_args_joins_with_spaces() -> None:
    """S9: escape_args escapes each argument and joins them with single spaces."""
    assert escape_args(["a b", "", 'c"']) == '"a b" "" c\\"'
    assert escape_args([]) == ""


def test_parser_reads_known_command_lines() -> None:
    """S9: the reference parser itself splits textbook command lines as Windows does."""
    assert command_line_to_argv('"a b c" d e') == ["a b c", "d", "e"]
    assert command_line_to_argv('"ab\\"c" "\\\\" d') == ['ab"c', "\\", "d"]
    assert command_line_to_argv('a\\\\\\b d"e f"g h') == ["a\\\\\\b", "de fg", "h"]
    assert command_line_to_argv('a\\\\\\"b c d') == ['a\\"b', "c", "d"]
    assert command_line_to_argv('a\\\\\\\\"b c" d e') == ["a\\\\b c", "d", "e"]
    assert command_line_to_argv('"a ""b" c') == ['a "b', "c"]


ARG_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(['"', "\\", " ", "\t", "a", "é"]),
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    ),
    max_size=16,
)


@settings(max_examples=300, deadline=None)
@given(args=st.lists(ARG_TEXT, max_size=6))
def test_escape_args_round_trips_through_command_line_to_argv(args: list[str]) -> None:
    """S9: Windows parses escape_args(args) back to exactly args (any text without NUL)."""
    assert command_line_to_argv(escape_args(args)) == args
