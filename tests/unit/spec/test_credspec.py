"""Credential specs from security options (S21–S26), including moby's own test cases.

moby's ``TestSetWindowsCredentialSpecInSpec`` (daemon/oci_windows_test.go, added with raw://
in March 2019) is mirrored case by case; the file system and registry are replaced by a fake
:class:`CredentialSpecReader`, as the generator reaches them only through that port.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapters.credspecs import NodeCredentialSpecReader
from controller.credspec import (
    INVALID_VALUE,
    check_file_path,
    credential_spec_base,
    parse_security_options,
)
from controller.errors import SpecError
from controller.generate import generate
from tests.unit.spec.request_builders import (
    CONTAINER_ID,
    DAEMON_ROOT,
    decode,
    lcow_request,
    merge,
    windows_request,
    with_host_config,
)

BASE = "C:\\ProgramData\\docker\\CredentialSpecs"
DUMMY = '{"We don\'t need no": "education"}'


@dataclass
class FakeReader:
    """A CredentialSpecReader over dicts; records every call, raises for missing entries."""

    files: dict[tuple[str, ...], str] = field(default_factory=dict)
    registry: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def read_file(self, parts: tuple[str, ...], *, base: str, container_id: str) -> str:
        """The file's content, or moby's could-not-be-read error."""
        self.calls.append(("file", parts, base, container_id))
        if parts not in self.files:
            full = "\\".join((base, *parts))
            raise SpecError(
                f"credential spec for container {container_id} could not be read from file "
                f'"{full}": The system cannot find the file specified.'
            )
        return self.files[parts]

    def read_registry(self, name: str, *, container_id: str) -> str:
        """The registry value, or moby's not-found error (S24)."""
        self.calls.append(("registry", name, container_id))
        if name not in self.registry:
            raise SpecError(
                f'registry credential spec "{name}" for container {container_id} was not found'
            )
        return self.registry[name]


def _container(*options: str, **changes: Any) -> dict[str, Any]:
    """A Windows request with these security options (moby's containerFactory)."""
    opts = [o if "=" in o else "credentialspec=" + o for o in options]
    return merge(with_host_config(windows_request(), SecurityOpt=opts), changes)


def _credential_spec(request: dict[str, Any], reader: FakeReader | None = None) -> str:
    """``windows.credentialSpec`` of the generated spec ("" when absent)."""
    spec = generate(decode(request), reader=reader).spec
    assert spec.windows is not None
    return spec.windows.credentialSpec


def _error(request: dict[str, Any], reader: FakeReader | None = None) -> str:
    with pytest.raises(SpecError) as info:
        generate(decode(request), reader=reader)
    return str(info.value)


# --- moby TestSetWindowsCredentialSpecInSpec -------------------------------------------------


@pytest.mark.parametrize("options", [None, []])
def test_no_security_options_no_credential_spec(options: list[str] | None) -> None:
    """S21/moby: no security options (null or empty) leaves credentialSpec out of the spec."""
    request = with_host_config(windows_request(), SecurityOpt=options)
    spec = generate(decode(request)).spec
    assert spec.windows is not None
    assert spec.windows.credentialSpec == ""


def test_file_happy_path_through_reader() -> None:
    """S23/moby: file://<name> reads <root>\\CredentialSpecs\\<name> through the reader."""
    reader = FakeReader(files={("dummy-cred-spec.json",): DUMMY})
    assert _credential_spec(_container("file://dummy-cred-spec.json"), reader) == DUMMY
    assert reader.calls == [("file", ("dummy-cred-spec.json",), BASE, CONTAINER_ID)]


def test_file_absolute_path_refused() -> None:
    """S23/moby: a file:// option with an absolute path is refused before any read."""
    reader = FakeReader()
    message = _error(_container("file://C:\\path\\to\\my\\credspec.json"), reader)
    assert message == "invalid credential spec - file:// path cannot be absolute"
    assert reader.calls == []


def test_file_breaking_out_refused() -> None:
    """S23/moby: a file:// option climbing out of the directory names the directory."""
    reader = FakeReader()
    message = _error(_container("file://..\\credspec.json"), reader)
    assert message == f"invalid credential spec - file:// path must be under {BASE}"
    assert reader.calls == []


def test_file_missing_fails_with_reader_error() -> None:
    """S23/moby: a file that does not exist fails with the reader's message."""
    message = _error(_container("file://i-dont-exist.json"), FakeReader())
    assert f"credential spec for container {CONTAINER_ID} could not be read from file" in message
    assert "The system cannot find" in message


def test_registry_happy_path() -> None:
    """S24/moby: registry://<name> reads the named value through the reader."""
    reader = FakeReader(registry={"my-cred-spec": DUMMY})
    assert _credential_spec(_container("registry://my-cred-spec"), reader) == DUMMY
    assert reader.calls == [("registry", "my-cred-spec", CONTAINER_ID)]


def test_registry_missing_value() -> None:
    """S24/moby: a registry value that does not exist gives moby's not-found message."""
    message = _error(_container("registry://my-cred-spec"), FakeReader())
    assert message == (
        f'registry credential spec "my-cred-spec" for container {CONTAINER_ID} was not found'
    )


def test_config_happy_path_on_swarm_container() -> None:
    """S25/moby: config://<id> on a swarm-managed container takes the config's data."""
    request = _container(
        "config://my-cred-spec", credentialSpecs={"config": {"my-cred-spec": DUMMY}}
    )
    request = merge(
        request, {"container": {"Config": {"Labels": {"com.docker.swarm.task.id": "t1"}}}}
    )
    assert _credential_spec(request) == DUMMY


def test_config_swarm_flag_overrides_label() -> None:
    """S25: the request's swarmManaged flag decides, whatever the labels say."""
    request = _container("config://c", credentialSpecs={"config": {"c": DUMMY}}, swarmManaged=True)
    assert _credential_spec(request) == DUMMY
    labelled = merge(
        request,
        {
            "swarmManaged": False,
            "container": {"Config": {"Labels": {"com.docker.swarm.task.id": "t1"}}},
        },
    )
    assert _error(labelled) == INVALID_VALUE


def test_config_missing_on_swarm_container() -> None:
    """S25: a swarm config that was not resolved is an error naming it."""
    request = _container("config://nope", swarmManaged=True)
    assert "nope" in _error(request)


def test_config_not_swarm_managed_gets_generic_error() -> None:
    """S25/moby: config:// on a container swarm does not manage gives the S22 message."""
    assert _error(_container("config://whatever")) == INVALID_VALUE


def test_raw_happy_path() -> None:
    """S25/S26/moby: raw://<json> is the credential spec itself, written as a string."""
    request = _container("raw://" + DUMMY)
    assert _credential_spec(request) == DUMMY
    spec = json.loads(generate(decode(request)).spec.windows.credentialSpec)  # type: ignore[union-attr]
    assert spec == {"We don't need no": "education"}


def test_option_names_are_case_insensitive() -> None:
    """S21/S22/moby: the key and the scheme match in any case."""
    assert _credential_spec(_container("CreDENtiaLSPeC=rAw://" + DUMMY)) == DUMMY


def test_unknown_option_rejected() -> None:
    """S21/moby: a key other than credentialspec is refused, naming the key."""
    message = _error(_container("credentialspe=config://whatever"))
    assert message == "security option not supported: credentialspe"


def test_unknown_scheme_rejected() -> None:
    """S22/moby: an unsupported scheme gives the generic invalid-value message."""
    assert _error(_container("idontexist://whatever")) == INVALID_VALUE


@pytest.mark.parametrize("scheme", ["file", "registry", "config", "raw"])
def test_empty_values_rejected(scheme: str) -> None:
    """S22/moby: every scheme with an empty value gives the generic invalid-value message."""
    assert _error(_container(scheme + "://")) == INVALID_VALUE


# --- S21, S22 parsing --------------------------------------------------------------------------


def test_no_equals_sign() -> None:
    """S21: an option without '=' is refused, quoting the whole option."""
    message = _error(with_host_config(windows_request(), SecurityOpt=["credentialspec"]))
    assert message == "invalid security option: no equals sign in supplied value credentialspec"


@pytest.mark.parametrize(
    "value",
    ["file", "file:/x", "file//x", ":// x", "raw:/x", "://x", "registry:\\\\x"],
)
def test_malformed_values(value: str) -> None:
    """S22: a value without a known '<scheme>://' prefix gives the generic message."""
    assert _error(_container("credentialspec=" + value)) == INVALID_VALUE


def test_last_valid_option_wins_and_all_are_checked() -> None:
    """S22: of several options the last wins, but a bad one anywhere is an error."""
    assert _credential_spec(_container("raw://first", "raw://second")) == "second"
    assert _error(_container("raw://first", "bogus")) == INVALID_VALUE
    assert _error(_container("bogus", "raw://second")) == INVALID_VALUE


def test_parse_keeps_value_after_first_separator() -> None:
    """S22: only the first '=' and '://' split; the rest belongs to the value."""
    parsed = parse_security_options(["credentialspec=raw://a=b://c"])
    assert [(p.scheme, p.value) for p in parsed] == [("raw", "a=b://c")]


def test_file_value_resolved_in_request_map() -> None:
    """S23: a file:// value resolved by the caller is taken from the request, no reader call."""
    reader = FakeReader()
    request = _container("file://web.json", credentialSpecs={"file": {"web.json": DUMMY}})
    assert _credential_spec(request, reader) == DUMMY
    assert reader.calls == []


def test_unresolved_without_reader_is_an_error() -> None:
    """S23/S24: without a reader, an unresolved file or registry spec is a clear error."""
    assert "file://web.json" in _error(_container("file://web.json"))
    assert "registry://web" in _error(_container("registry://web"))


def test_resolved_map_still_gets_containment_check() -> None:
    """S23: a file:// value outside the directory is refused even when the map has it."""
    request = _container("file://..\\x.json", credentialSpecs={"file": {"..\\x.json": DUMMY}})
    assert _error(request).startswith("invalid credential spec - file:// path must be under")


def test_lcow_ignores_credential_specs() -> None:
    """S21: LCOW containers ignore security options, valid or not."""
    request = with_host_config(lcow_request(), SecurityOpt=["nonsense", "credentialspec=raw://x"])
    spec = generate(decode(request)).spec
    assert spec.windows is not None
    assert spec.windows.credentialSpec == ""


# --- S23 containment ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["C:\\x", "\\x", "/x", "\\\\server\\share\\x", "//server/share/x", "C:x", "c:/x"],
)
def test_absolute_forms_refused(value: str) -> None:
    """S23: drive, drive-relative, UNC, and '\\'- or '/'-rooted paths count as absolute."""
    with pytest.raises(SpecError) as info:
        check_file_path(value, daemon_root=DAEMON_ROOT)
    assert str(info.value) == "invalid credential spec - file:// path cannot be absolute"


@pytest.mark.parametrize(
    "value",
    [
        "..\\CredentialSpecsX\\f.json",
        "../CredentialSpecsX/f.json",
        "..",
        ".",
        "a\\..",
        "a\\..\\..\\x",
        "..\\credentialspecs",
        "..\\..\\docker\\CredentialSpecs\\..\\x",
    ],
)
def test_outside_the_directory_refused(value: str) -> None:
    """S23 (Ours): a real containment check, unlike moby's string-prefix test."""
    with pytest.raises(SpecError) as info:
        check_file_path(value, daemon_root=DAEMON_ROOT)
    assert str(info.value) == f"invalid credential spec - file:// path must be under {BASE}"


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("f.json", ("f.json",)),
        ("..\\credentialspecs\\f.json", ("f.json",)),
        ("..\\CREDENTIALSPECS\\sub\\f.json", ("sub", "f.json")),
        ("a/../b.json", ("b.json",)),
        ("sub\\dir/f.json", ("sub", "dir", "f.json")),
        ("./sub//f.json", ("sub", "f.json")),
    ],
)
def test_inside_the_directory_accepted(value: str, parts: tuple[str, ...]) -> None:
    """S23: relative paths under the directory, compared case-insensitively, give parts."""
    assert check_file_path(value, daemon_root=DAEMON_ROOT) == parts


def test_base_follows_daemon_root() -> None:
    """S23: the directory is <daemon root>\\CredentialSpecs, also for another root."""
    assert credential_spec_base("D:\\docker") == "D:\\docker\\CredentialSpecs"
    assert credential_spec_base("D:\\docker\\") == "D:\\docker\\CredentialSpecs"
    with pytest.raises(SpecError, match=r"must be under D:\\docker\\CredentialSpecs$"):
        check_file_path("..\\x", daemon_root="D:\\docker")


def test_windows_rules_on_any_host() -> None:
    """S23: '\\' separates components whatever OS runs the check."""
    assert check_file_path("a\\..\\b\\c.json", daemon_root=DAEMON_ROOT) == ("b", "c.json")


# --- the node reader (adapter) keeps the S23/S24 promises ---------------------------------------


def test_node_reader_reads_inside_and_refuses_link_escape(tmp_path: Path) -> None:
    """S23 (Ours): the node reader reads a file under the base and refuses a link out of it."""
    base = tmp_path / "CredentialSpecs"
    base.mkdir()
    (base / "ok.json").write_text(DUMMY, encoding="utf-8")
    outside = tmp_path / "secret.json"
    outside.write_text("{}", encoding="utf-8")
    reader = NodeCredentialSpecReader()
    assert reader.read_file(("ok.json",), base=str(base), container_id="c") == DUMMY
    try:
        (base / "link.json").symlink_to(outside)
    except OSError:
        pytest.skip("symlinks not available")
    with pytest.raises(SpecError, match=r"link\.json is a link"):
        reader.read_file(("link.json",), base=str(base), container_id="c")


@pytest.mark.skipif(sys.platform == "win32", reason="checks the non-Windows behaviour")
def test_node_reader_registry_elsewhere_is_a_clear_error() -> None:
    """S24: registry:// outside a Windows host is a clear permanent error, not a crash."""
    with pytest.raises(SpecError, match="only available on a Windows host"):
        NodeCredentialSpecReader().read_registry("web", container_id="c")


@pytest.mark.skipif(sys.platform == "win32", reason="checks the non-Windows behaviour")
def test_node_reader_refuses_a_windows_daemon_root_off_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S23: off Windows, a Windows base is refused clearly, never read under the current dir."""
    # A directory that the base would name if it were taken as a relative POSIX path.
    monkeypatch.chdir(tmp_path)
    relative = tmp_path / BASE
    relative.mkdir()
    (relative / "web.json").write_text(DUMMY, encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        NodeCredentialSpecReader().read_file(("sub", "web.json"), base=BASE, container_id="c")
    assert str(caught.value) == (
        f"file:// credential spec sub\\web.json is under a Windows daemon root ({BASE}); it can "
        "only be read on that Windows host — resolve it into the request's "
        "credentialSpecs.file map"
    )
    for base in ("D:/docker/CredentialSpecs", "\\\\server\\share\\CredentialSpecs"):
        with pytest.raises(SpecError, match="under a Windows daemon root"):
            NodeCredentialSpecReader().read_file(("web.json",), base=base, container_id="c")


def test_case_rules_follow_go() -> None:
    """S21/S22: key matched as Go's EqualFold ("ſ" is "s"), scheme lowered as Go's ToLower."""
    assert _credential_spec(_container("credentialſpec=raw://x")) == "x"
    assert _credential_spec(_container("credentialspec=RAW://x")) == "x"
    request = _container("credentialspec=F\u0130LE://web.json")
    request = merge(request, {"credentialSpecs": {"file": {"web.json": DUMMY}}})
    assert _credential_spec(request) == DUMMY
    assert _error(_container("credentialspec=ra\u1e86://x")) == INVALID_VALUE
