"""The process: working directory, command, environment, terminal and user (S7–S11)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.errors import SpecError
from controller.escape import escape_args
from controller.generate import LCOW_PATH, _apply_env
from tests.unit.spec.argv import command_line_to_argv
from tests.unit.spec.request_builders import (
    lcow_request,
    merge,
    run,
    windows_request,
    with_config,
    with_host_config,
)


def _process(request: dict[str, Any]) -> Any:
    process = run(request).spec.process
    assert process is not None
    return process


@pytest.mark.parametrize(
    ("request_", "cwd"),
    [
        (windows_request(), "C:\\"),
        (lcow_request(), "/"),
        (with_config(windows_request(), WorkingDir="D:\\work dir"), "D:\\work dir"),
        (with_config(lcow_request(), WorkingDir="/srv"), "/srv"),
    ],
    ids=["windows-default", "lcow-default", "windows-set", "lcow-set"],
)
def test_cwd(request_: dict[str, Any], cwd: str) -> None:
    """S7: cwd is Config.WorkingDir, else C:\\ (Windows) or / (LCOW)."""
    assert _process(request_).cwd == cwd


def _escaped(path: str, args: list[str] | None) -> dict[str, Any]:
    return merge(
        with_config(windows_request(), ArgsEscaped=True),
        {"container": {"Path": path, "Args": args}},
    )


@pytest.mark.parametrize(
    ("path", "args", "command_line"),
    [
        ("cmd", None, "cmd"),
        ("cmd", [], "cmd"),
        ("cmd", [""], 'cmd ""'),
        ("C:\\Program Files\\a.exe", ["x y"], 'C:\\Program Files\\a.exe "x y"'),
        ("cmd /S /C", ["echo", 'a "b"'], 'cmd /S /C echo "a \\"b\\""'),
    ],
)
def test_args_escaped_command_line(path: str, args: list[str] | None, command_line: str) -> None:
    """S8: with ArgsEscaped, commandLine is Path (verbatim) plus escaped Args; no args."""
    process = _process(_escaped(path, args))
    assert process.commandLine == command_line
    assert process.args == []


@settings(max_examples=200, deadline=None)
@given(
    path=st.text(alphabet="abc:\\ .", min_size=1, max_size=10),
    args=st.lists(
        st.text(
            alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=8
        ),
        max_size=5,
    ),
)
def test_command_line_round_trips(path: str, args: list[str]) -> None:
    """S8/S9: what follows Path in commandLine parses back to exactly the container's Args."""
    command_line = _process(_escaped(path, args)).commandLine
    assert command_line.startswith(path)
    rest = command_line[len(path) :]
    if args:
        assert rest == " " + escape_args(args)
        assert command_line_to_argv(rest) == args
    else:
        assert rest == ""


def test_args_not_escaped() -> None:
    """S8: without ArgsEscaped, args are [Path] + Args verbatim and commandLine is absent."""
    request = merge(windows_request(), {"container": {"Path": "a b.exe", "Args": ['"q"', ""]}})
    process = _process(request)
    assert process.args == ["a b.exe", '"q"', ""]
    assert process.commandLine == ""


def test_lcow_ignores_args_escaped() -> None:
    """S8: LCOW always writes args = [Path] + Args, whatever ArgsEscaped says."""
    request = merge(
        with_config(lcow_request(), ArgsEscaped=True), {"container": {"Args": ["-c", "a b"]}}
    )
    process = _process(request)
    assert process.args == ["/bin/sh", "-c", "a b"]
    assert process.commandLine == ""


def test_image_args_escaped_is_not_read() -> None:
    """S8: the container's Config.ArgsEscaped decides (the daemon copied the image's at create)."""
    request = merge(windows_request(), {"image": {"Config": {"ArgsEscaped": True}}})
    assert _process(request).commandLine == ""


def replace_or_append_env(defaults: list[str], overrides: list[str]) -> list[str]:
    """moby's ReplaceOrAppendEnvValues (container/env.go), step by step, as the reference."""
    env = list(defaults)
    cache = {e.split("=", 1)[0]: i for i, e in enumerate(env)}
    for value in overrides:
        if "=" not in value:
            if value in cache:
                env[cache[value]] = ""
            continue
        key = value.split("=", 1)[0]
        if key in cache:
            env[cache[key]] = value
        else:
            env.append(value)
    return [e for e in env if e != ""]


ENV_KEYS = st.sampled_from(["PATH", "HOSTNAME", "TERM", "A", "B", "path", ""])
ENV_ENTRIES = st.lists(
    st.one_of(ENV_KEYS, st.builds("{}={}".format, ENV_KEYS, st.text(max_size=4))), max_size=8
)


@settings(max_examples=200, deadline=None)
@given(env=ENV_ENTRIES, tty=st.booleans(), hostname=st.text(max_size=6))
def test_lcow_env_follows_moby(env: list[str], tty: bool, hostname: str) -> None:
    """S10: LCOW env = moby's ReplaceOrAppendEnvValues over PATH, HOSTNAME (and TERM)."""
    start = [f"PATH={LCOW_PATH}", f"HOSTNAME={hostname}"] + (["TERM=xterm"] if tty else [])
    request = with_config(lcow_request(), Env=env, Tty=tty, Hostname=hostname)
    assert _process(request).env == replace_or_append_env(start, env)


@settings(max_examples=100, deadline=None)
@given(env=ENV_ENTRIES)
def test_windows_env_keeps_assignments_only(env: list[str]) -> None:
    """S10: Windows starts empty: every K=V kept in order (duplicates too), bare keys dropped."""
    assert _process(with_config(windows_request(), Env=env)).env == [e for e in env if "=" in e]


def test_env_merge_matches_moby_env_test() -> None:
    """S10: moby's TestReplaceAndAppendEnvVars table: replace HOME, append TERM, drop FOO."""
    defaults = ["HOME=/", "FOO=foo_default"]
    overrides = ["HOME=/root", "TERM=xterm", "FOO", "BAR"]
    assert _apply_env(defaults, overrides) == ["HOME=/root", "TERM=xterm"]
    assert replace_or_append_env(defaults, overrides) == ["HOME=/root", "TERM=xterm"]


def test_lcow_env_examples() -> None:
    """S10: replace in place, remove, append duplicates, keys matched case-sensitively."""
    request = with_config(
        lcow_request(), Hostname="h", Env=["path=/x", "HOSTNAME", "A=1", "A=2", "PATH=/y"]
    )
    assert _process(request).env == ["PATH=/y", "path=/x", "A=1", "A=2"]


def test_terminal_and_console_size() -> None:
    """S11: Tty gives terminal and consoleSize {height: ConsoleSize[0], width: ConsoleSize[1]}."""
    request = with_host_config(with_config(windows_request(), Tty=True), ConsoleSize=[25, 80])
    process = _process(request)
    assert process.terminal is True
    assert (process.consoleSize.height, process.consoleSize.width) == (25, 80)


def test_no_tty_no_console() -> None:
    """S11: without a TTY there is no terminal and no consoleSize, whatever ConsoleSize holds."""
    process = _process(with_host_config(windows_request(), ConsoleSize=[-1, 2**70]))
    assert process.terminal is False
    assert process.consoleSize is None


@pytest.mark.parametrize("size", [[-1, 80], [25, -1], [2**64, 80]])
def test_console_size_out_of_range(size: list[int]) -> None:
    """S11 (Ours): a console size Go's uint could not hold is refused, not wrapped."""
    request = with_host_config(with_config(windows_request(), Tty=True), ConsoleSize=size)
    with pytest.raises(SpecError, match=r"^invalid ConsoleSize"):
        run(request)


def test_user() -> None:
    """S11: user.username is Config.User; uid and gid are always written as 0."""
    process = _process(with_config(windows_request(), User="ContainerAdministrator"))
    assert (process.user.uid, process.user.gid, process.user.username) == (
        0,
        0,
        "ContainerAdministrator",
    )
