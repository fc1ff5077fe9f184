"""Hostile request documents: typed refusals within documented limits (issue 6: 6 and 8).

Each of these crashed ``winspec generate`` with a traceback (exit 1) or produced a path out of
the daemon root: deep nesting in an untyped field (RecursionError), a NUL in a ``file://``
value (ValueError), a 4,400-digit device cgroup major (int()'s digit limit), a crafted
container id. Now each is a PermanentError and ``winspec generate`` prints one line, exit 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import controller.generate
from adapters.cli import main
from adapters.credspecs import NodeCredentialSpecReader
from controller.errors import PermanentError, TransientError
from controller.generate import generate
from controller.models import (
    MAX_ITEMS,
    MAX_NESTING_DEPTH,
    MAX_PAYLOAD_BYTES,
    MAX_REQUEST_BYTES,
    MAX_STRING_LENGTH,
    decode_request,
)
from tests.processes import REPO, clean_env
from tests.unit.spec.request_builders import lcow_request, merge, windows_request

SECRET = {"secretId": "s1", "target": "db", "data": "cHc="}


def _nested(depth: int) -> Any:
    """A JSON value that is ``depth`` levels of arrays deep."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _with_endpoint_data(depth: int) -> bytes:
    """A request whose untyped endpoint data nests so the document is ``depth`` levels deep."""
    # The document object, "endpoints", the network's object: three levels before the value.
    request = merge(windows_request(), {"endpoints": {"nat": {"extra": _nested(depth - 3)}}})
    return json.dumps(request).encode()


def _refusal(document: bytes) -> str:
    with pytest.raises(PermanentError) as caught:
        generate(decode_request(document), reader=NodeCredentialSpecReader())
    return str(caught.value)


def _generate_cli(document: bytes, tmp_path: Path) -> tuple[int, str]:
    """``winspec generate`` of ``document`` as a child process: its exit code and stderr."""
    path = tmp_path / "request.json"
    path.write_bytes(document)
    return _generate_path(path)


def _generate_path(path: Path) -> tuple[int, str]:
    """``winspec generate PATH`` as a child process: its exit code and stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "adapters.cli", "generate", str(path)],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stderr


def test_nesting_past_the_limit_is_refused_and_at_the_limit_accepted() -> None:
    """A document exactly MAX_NESTING_DEPTH deep decodes; one level more is refused."""
    decode_request(_with_endpoint_data(MAX_NESTING_DEPTH))
    message = _refusal(_with_endpoint_data(MAX_NESTING_DEPTH + 1))
    assert message == (
        f"invalid request: arrays and objects nested deeper than {MAX_NESTING_DEPTH} levels"
    )


@pytest.mark.parametrize("depth", [1_100, 100_000])
def test_deep_nesting_in_an_untyped_field_exits_2_with_one_line(depth: int, tmp_path: Path) -> None:
    """1,100 (and 100,000) levels in endpoint data: one line on stderr, exit 2, no traceback."""
    document = ("[" * depth + "]" * depth).encode()
    request = json.dumps(merge(windows_request(), {"endpoints": {"nat": {"x": 0}}}))
    document = request.replace("0}}", document.decode() + "}}", 1).encode()
    code, stderr = _generate_cli(document, tmp_path)
    assert code == 2, stderr
    assert stderr == (
        f"winspec: invalid request: arrays and objects nested deeper than {MAX_NESTING_DEPTH} "
        "levels\n"
    )


def test_a_nul_in_a_file_credential_spec_exits_2_with_one_line(tmp_path: Path) -> None:
    """A NUL byte in a file:// value is S23's refusal, not "ValueError: embedded null byte"."""
    request = merge(
        windows_request(),
        {
            "container": {"HostConfig": {"SecurityOpt": ["credentialspec=file://web\u0000.json"]}},
            "node": {"daemonRoot": str(tmp_path)},
        },
    )
    code, stderr = _generate_cli(json.dumps(request).encode(), tmp_path)
    assert code == 2, stderr
    assert stderr == (
        "winspec: invalid credential spec - file:// path contains a NUL or control character\n"
    )


def _cgroup_request(rule: str) -> bytes:
    request = merge(lcow_request(), {"container": {"HostConfig": {"DeviceCgroupRules": [rule]}}})
    return json.dumps(request).encode()


def test_a_4400_digit_cgroup_major_is_refused_like_go(tmp_path: Path) -> None:
    """S31: a 4,400-digit major is Go's out-of-range error (was int()'s digit-limit ValueError)."""
    rule = "c " + "9" * 4400 + ":1 rwm"
    code, stderr = _generate_cli(_cgroup_request(rule), tmp_path)
    assert code == 2, stderr
    assert stderr.startswith(
        "winspec: linux runtime spec devices: invalid major value in device cgroup rule format"
    )
    assert stderr.count("\n") == 1


def test_leading_zeros_in_a_cgroup_number_are_read_as_go_reads_them() -> None:
    """S31: Go's ParseInt takes any number of leading zeros: 4,400 of them before 7 is 7."""
    document = _cgroup_request("b " + "0" * 4400 + "7:" + "0" * 30 + " rw")
    spec = generate(decode_request(document)).spec
    assert spec.linux is not None
    assert spec.linux.resources is not None
    device = spec.linux.resources.devices[0]
    assert (device.major, device.minor) == (7, 0)
    with pytest.raises(PermanentError, match="invalid minor value"):
        generate(decode_request(_cgroup_request("c 1:" + "0" * 50 + "9223372036854775808 m")))


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("Hostname", "h" * (MAX_STRING_LENGTH + 1), "$.container.Config.Hostname"),
        ("Env", [f"E{i}=1" for i in range(MAX_ITEMS + 1)], "$.container.Config.Env"),
        ("Labels", {f"l{i}": "" for i in range(MAX_ITEMS + 1)}, "$.container.Config.Labels"),
    ],
)
def test_strings_and_lists_past_their_limits_are_refused(
    field: str, value: Any, where: str
) -> None:
    """A string or list over its documented limit is a RequestDecodeError naming the field."""
    request = merge(windows_request(), {"container": {"Config": {field: value}}})
    message = _refusal(json.dumps(request).encode())
    assert message.startswith("invalid request: Expected `")
    assert where in message


def test_a_payload_past_its_limit_is_refused() -> None:
    """A secret payload over MAX_PAYLOAD_BYTES is refused; one at the limit is accepted."""
    import base64

    def with_payload(size: int) -> bytes:
        data = base64.b64encode(b"x" * size).decode()
        return json.dumps(
            merge(windows_request(), {"secrets": [{**SECRET, "data": data}]})
        ).encode()

    decode_request(with_payload(MAX_PAYLOAD_BYTES))
    assert "$.secrets[0].data" in _refusal(with_payload(MAX_PAYLOAD_BYTES + 1))


def test_a_request_past_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    """A document over MAX_REQUEST_BYTES is refused before it is parsed, also by the CLI."""
    document = b"{" + b" " * MAX_REQUEST_BYTES + b"}"
    assert _refusal(document) == (
        f"invalid request: larger than {MAX_REQUEST_BYTES} bytes ({MAX_REQUEST_BYTES + 2} bytes)"
    )
    path = tmp_path / "huge.json"
    path.write_bytes(document)
    assert main(["generate", str(path)]) == 2


@pytest.mark.parametrize(
    "container_id",
    [
        "..\\..\\..\\Windows",
        "../../etc",
        "A" * 64,  # upper case: not how Docker writes ids
        "a" * 63,
        "a" * 65,
        "a" * 63 + "\n",
        "",
        "x" * 10_000,
    ],
)
def test_a_container_id_that_is_not_dockers_is_refused_before_any_path(container_id: str) -> None:
    """The id must be 64 lower-case hex digits before it becomes <daemonRoot>\\containers\\<id>."""
    request = merge(windows_request(), {"container": {"Id": container_id}, "secrets": [SECRET]})
    request.pop("bundleDir", None)
    message = _refusal(json.dumps(request).encode())
    assert message.startswith("invalid container id ")
    assert "64 lower-case hex digits" in message
    assert len(message) < 300  # a 10,000-character id is not repeated whole


def test_a_docker_container_id_puts_payloads_under_the_daemon_root() -> None:
    """A valid id without bundleDir gives <daemonRoot>\\containers\\<id>\\secrets, nothing else."""
    request = merge(windows_request(), {"secrets": [SECRET]})
    request.pop("bundleDir", None)
    spec = generate(decode_request(json.dumps(request).encode())).spec
    container_id = request["container"]["Id"]
    sources = [m.source for m in spec.mounts]
    assert f"C:\\ProgramData\\docker\\containers\\{container_id}\\secrets" in sources


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"container": {"Id": 1}}',
        b'{"container": {"Id": "' + b"a" * 64 + b'"}, "image": {"Os": "windows"}, "endpoints": '
        b'{"n": {"x": ' + b"9" * 5000 + b"}}}",
        b'{"container": {"Id": "' + b"a" * 64 + b'"}, "image": {"Os": "' + b"\\ud800" + b'"}}',
    ],
)
def test_malformed_documents_exit_2_with_one_line(document: bytes, tmp_path: Path) -> None:
    """Empty, binary, wrongly typed, huge-number or lone-surrogate documents: exit 2, one line."""
    code, stderr = _generate_cli(document, tmp_path)
    assert code == 2, stderr
    assert stderr.startswith("winspec: ")
    assert stderr.count("\n") == 1, stderr


def test_a_request_path_that_is_a_directory_is_one_line(tmp_path: Path) -> None:
    """A request path that is a directory is exit 2 with one line (reading it fails cleanly)."""
    code, stderr = _generate_path(tmp_path)
    assert code == 2
    assert stderr.startswith(f"winspec: cannot read request {tmp_path}: ")
    assert stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TransientError("credential spec file 'x' could not be read within 10 s"), "within 10 s"),
        (KeyError("surprise"), "internal error (KeyError: 'surprise'); please report it"),
    ],
)
def test_a_failure_that_is_not_the_inputs_fault_exits_1_with_one_line(
    error: Exception,
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A read that timed out or a bug in the generator: exit 1 and one line, no traceback."""

    def failing(*_args: object, **_kwargs: object) -> None:
        raise error

    # `winspec generate` imports the generator when it runs: the module's function is replaced.
    monkeypatch.setattr(controller.generate, "generate", failing)
    path = tmp_path / "request.json"
    path.write_text(json.dumps(windows_request()))
    assert main(["generate", str(path)]) == 1
    stderr = capsys.readouterr().err
    assert stderr.startswith("winspec: ")
    assert expected in stderr
    assert stderr.count("\n") == 1
