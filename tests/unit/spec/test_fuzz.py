"""Fuzzing with hostile input: no crash, no hang, every refusal a PermanentError (issue 6).

Where ``test_properties.py`` varies the fields of a request within their types, these throw
what an attacker would: arbitrary JSON of any shape in any member (typed, untyped and unknown),
nesting around the limit and far past it, strings and lists at and past their limits, any text
as container id, security option, ``file://`` value (read by the real node reader from a real
directory holding a FIFO, links and a socket), device path and device cgroup rule.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.credspecs import NodeCredentialSpecReader
from controller.errors import PermanentError
from controller.generate import encode_spec, generate
from controller.models import MAX_ITEMS, MAX_NESTING_DEPTH, MAX_STRING_LENGTH, decode_request
from tests.schema import check_spec_bytes
from tests.unit.spec.request_builders import lcow_request, merge, windows_request

INT64_MAX = 2**63 - 1
OUTSIDE = "the outside secret"
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
# Where a value can go: typed members, untyped ones and names no model knows.
PLACES: list[tuple[str, ...]] = [
    ("container",),
    ("image",),
    ("node",),
    ("endpoints",),
    ("endpoints", "nat"),
    ("endpoints", "nat", "GW_INFO"),
    ("secrets",),
    ("configs",),
    ("credentialSpecs",),
    ("credentialSpecs", "file"),
    ("layerFolders",),
    ("sharedEndpoints",),
    ("container", "Id"),
    ("container", "Args"),
    ("container", "Config"),
    ("container", "Config", "Env"),
    ("container", "Config", "Labels"),
    ("container", "HostConfig"),
    ("container", "HostConfig", "Devices"),
    ("container", "HostConfig", "SecurityOpt"),
    ("container", "HostConfig", "BlkioWeightDevice"),
    ("container", "HostConfig", "Ulimits"),
    ("container", "HostConfig", "ConsoleSize"),
    ("container", "HostConfig", "CpuCount"),
    ("container", "Mounts"),
    ("container", "NetworkSettings"),
    ("container", "GraphDriver"),
    ("container", "SomethingNew"),
    ("image", "RootFS"),
    ("image", "SomethingNew"),
    ("somethingUnknown",),
]


def _place(request: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """``request`` with ``value`` at ``path`` (intermediate objects created or replaced)."""
    node = request
    for name in path[:-1]:
        if not isinstance(node.get(name), dict):
            node[name] = {}
        node = node[name]
    node[path[-1]] = value
    return request


def _outcome(document: bytes, reader: NodeCredentialSpecReader | None = None) -> bytes | None:
    """config.json bytes, or ``None`` for a PermanentError; anything else fails the test."""
    try:
        return encode_spec(generate(decode_request(document), reader=reader).spec)
    except PermanentError:
        return None


def _base(lcow: bool) -> dict[str, Any]:
    return lcow_request() if lcow else windows_request()


@FUZZ
@given(
    lcow=st.booleans(),
    places=st.lists(st.tuples(st.sampled_from(PLACES), JSON_VALUES), min_size=1, max_size=3),
)
def test_arbitrary_json_anywhere_gives_spec_or_permanent_error(
    lcow: bool, places: list[tuple[tuple[str, ...], Any]]
) -> None:
    """S32: any JSON value in any member, typed or not, gives a valid spec or a PermanentError."""
    request = _base(lcow)
    for path, value in places:
        request = _place(request, path, value)
    spec = _outcome(json.dumps(request).encode())
    if spec is not None:
        check_spec_bytes(spec)


def _nest(depth: int, objects: bool) -> str:
    """JSON text ``depth`` levels deep (built as text: json.dumps recurses)."""
    if objects:
        return '{"k":' * depth + "0" + "}" * depth
    return "[" * depth + "0" + "]" * depth


@settings(max_examples=60, deadline=None)
@given(
    depth=st.one_of(
        st.integers(min_value=MAX_NESTING_DEPTH - 8, max_value=MAX_NESTING_DEPTH + 8),
        st.integers(min_value=MAX_NESTING_DEPTH, max_value=5_000),
    ),
    objects=st.booleans(),
    place=st.sampled_from(
        [("endpoints", "nat", "x"), ("container", "HostConfig", "Ulimits"), ("container", "New")]
    ),
)
def test_nesting_is_refused_exactly_past_the_limit(
    depth: int, objects: bool, place: tuple[str, ...]
) -> None:
    """S32: a document nested past MAX_NESTING_DEPTH is refused, one within it is not."""
    value = _nest(depth, objects)
    if place[-1] == "Ulimits":
        value = "[" + _nest(depth - 1, objects) + "]"  # a list of anything: the type holds
    marker = "NESTED-VALUE-MARKER"
    text = json.dumps(_place(windows_request(), place, marker))
    document = text.replace(f'"{marker}"', value).encode()
    total = depth + len(place)  # the members above the value are levels too
    if total <= MAX_NESTING_DEPTH:
        decode_request(document)
        return
    with pytest.raises(PermanentError) as caught:
        decode_request(document)
    assert str(caught.value) == (
        f"invalid request: arrays and objects nested deeper than {MAX_NESTING_DEPTH} levels"
    )


STRING_FIELDS = [
    ("container", "Path"),
    ("container", "Config", "Hostname"),
    ("container", "HostConfig", "Isolation"),
    ("image", "Os"),
    ("node", "daemonRoot"),
    ("bundleDir",),
]
LIST_FIELDS = [
    ("container", "Args"),
    ("container", "Config", "Env"),
    ("container", "HostConfig", "DeviceCgroupRules"),
    ("layerFolders",),
]


@settings(max_examples=30, deadline=None)
@given(
    field=st.sampled_from(STRING_FIELDS),
    extra=st.integers(min_value=-2, max_value=2),
)
def test_strings_around_their_limit(field: tuple[str, ...], extra: int) -> None:
    """S32: a string of MAX_STRING_LENGTH characters decodes; a longer one is refused."""
    document = json.dumps(_place(windows_request(), field, "x" * (MAX_STRING_LENGTH + extra)))
    if extra <= 0:
        decode_request(document.encode())
        return
    with pytest.raises(PermanentError, match=f"length <= {MAX_STRING_LENGTH}"):
        decode_request(document.encode())


@settings(max_examples=20, deadline=None)
@given(field=st.sampled_from(LIST_FIELDS), extra=st.integers(min_value=-1, max_value=1))
def test_lists_around_their_limit(field: tuple[str, ...], extra: int) -> None:
    """S32: a list of MAX_ITEMS entries decodes; one more is refused."""
    document = json.dumps(_place(windows_request(), field, ["x"] * (MAX_ITEMS + extra)))
    if extra <= 0:
        decode_request(document.encode())
        return
    with pytest.raises(PermanentError, match=f"length <= {MAX_ITEMS}"):
        decode_request(document.encode())


@FUZZ
@given(
    container_id=st.one_of(
        st.text(max_size=80),
        st.from_regex(r"\A[0-9a-fA-F./\\]{60,68}\Z", fullmatch=True),
    ),
    lcow=st.booleans(),
)
def test_any_container_id_is_docker_grammar_or_refused(container_id: str, lcow: bool) -> None:
    """S5: a spec is made only for a 64 lower-case hex id; every other id is a PermanentError."""
    request = merge(_base(lcow), {"container": {"Id": container_id}})
    request["secrets"] = [{"secretId": "s1", "target": "t", "data": "eA=="}]
    request.pop("bundleDir", None)
    spec = _outcome(json.dumps(request).encode())
    hex64 = len(container_id) == 64 and all(c in "0123456789abcdef" for c in container_id)
    assert (spec is not None) == hex64  # the base request is valid: only the id decides


@pytest.fixture(scope="module")
def daemon_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A daemon root whose CredentialSpecs hold a file, a FIFO, a socket, links, a directory."""
    root = tmp_path_factory.mktemp("fuzz-root")
    specs = root / "CredentialSpecs"
    (specs / "sub").mkdir(parents=True)
    (specs / "web.json").write_text('{"ok": 1}', encoding="utf-8")
    (specs / "sub" / "web.json").write_text('{"ok": 2}', encoding="utf-8")
    (root / "outside.json").write_text(OUTSIDE, encoding="utf-8")
    os.mkfifo(specs / "fifo.json")
    (specs / "out.json").symlink_to(root / "outside.json")
    (specs / "up").symlink_to(root, target_is_directory=True)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(specs / "sock.json"))
        yield root


NAMES = st.sampled_from(
    ["web.json", "sub", "sub\\web.json", "fifo.json", "out.json", "up\\outside.json", "sock.json",
     "missing.json", "..\\outside.json", "sub\\..\\web.json", "", ".", "..", "\\", "C:x"]
)  # fmt: skip
FILE_VALUES = st.one_of(
    NAMES,
    st.text(max_size=30),
    st.builds("{}{}{}".format, NAMES, st.sampled_from(["", "\x00", "\n", "/", "\\", ":"]), NAMES),
)


@pytest.mark.skipif(os.name == "nt", reason="POSIX FIFOs, links and sockets")
@FUZZ
@given(values=st.lists(FILE_VALUES, min_size=1, max_size=3), raw_first=st.booleans())
def test_file_credential_specs_read_from_a_hostile_directory(
    daemon_root: Path, values: list[str], raw_first: bool
) -> None:
    """S21-S23: any file:// values, read for real: a spec or a PermanentError, never outside."""
    options = [f"credentialspec=file://{v}" for v in values]
    if raw_first:
        options.insert(0, "credentialspec=raw://{}")
    request = merge(
        windows_request(),
        {
            "container": {"HostConfig": {"SecurityOpt": options}},
            "node": {"daemonRoot": str(daemon_root)},
        },
    )
    spec = _outcome(json.dumps(request).encode(), reader=NodeCredentialSpecReader(timeout=5))
    if spec is not None:
        check_spec_bytes(spec)
        assert OUTSIDE not in json.loads(spec)["windows"].get("credentialSpec", "")


@FUZZ
@given(
    options=st.lists(
        st.one_of(
            st.text(max_size=40),
            st.builds("credentialspec={}".format, st.text(max_size=40)),
            st.builds(
                "{}://{}".format,
                st.sampled_from(
                    ["credentialspec=raw", "credentialspec=config", "CredentialSpec=x"]
                ),
                st.text(max_size=40),
            ),
        ),
        max_size=4,
    ),
    swarm=st.booleans(),
)
def test_any_security_options_give_spec_or_permanent_error(options: list[str], swarm: bool) -> None:
    """S21, S22, S25: any text as security options gives a valid spec or a PermanentError."""
    request = merge(
        windows_request(),
        {"container": {"HostConfig": {"SecurityOpt": options}}, "swarmManaged": swarm},
    )
    spec = _outcome(json.dumps(request).encode(), reader=NodeCredentialSpecReader(timeout=5))
    if spec is not None:
        check_spec_bytes(spec)


@FUZZ
@given(
    paths=st.lists(
        st.one_of(
            st.text(max_size=60),
            st.builds("class/{}".format, st.text(max_size=60)),
            st.builds("{}://{}".format, st.text(max_size=10), st.text(max_size=60)),
        ),
        max_size=4,
    )
)
def test_any_device_strings_give_spec_or_permanent_error(paths: list[str]) -> None:
    """S27, S28: any text as device paths gives one device each or a PermanentError."""
    request = merge(
        windows_request(),
        {"container": {"HostConfig": {"Devices": [{"PathOnHost": p} for p in paths]}}},
    )
    spec = _outcome(json.dumps(request).encode())
    if spec is not None:
        check_spec_bytes(spec)
        assert len(json.loads(spec)["windows"].get("devices", [])) == len(paths)


def _go_parse_int64(digits: str) -> int | None:
    """Go's strconv.ParseInt(digits, 10, 64) for a string of ASCII digits (None: out of range)."""
    significant = digits.lstrip("0") or "0"
    if len(significant) > 19:
        return None
    value = int(significant)
    return value if value <= INT64_MAX else None


NUMBER = st.one_of(
    st.just("*"),
    st.from_regex(r"\A0{0,4500}[0-9]{1,25}\Z", fullmatch=True),
    st.integers(min_value=0, max_value=2**64).map(str),
)


@FUZZ
@given(
    rules=st.lists(
        st.one_of(
            st.builds(
                "{} {}:{} {}".format,
                st.sampled_from("abc"),
                NUMBER,
                NUMBER,
                st.sampled_from(["r", "rw", "rwm", "m"]),
            ),
            st.text(max_size=30),
        ),
        max_size=3,
    )
)
def test_any_cgroup_rules_parse_as_go_does(rules: list[str]) -> None:
    """S31: any rules give Go's numbers (any digit count) or a PermanentError, never a crash."""
    request = merge(lcow_request(), {"container": {"HostConfig": {"DeviceCgroupRules": rules}}})
    spec = _outcome(json.dumps(request).encode())
    if spec is None:
        return
    check_spec_bytes(spec)
    devices = json.loads(spec)["linux"]["resources"].get("devices", [])
    for rule, device in zip(rules, devices, strict=True):
        _kind, numbers, _access = rule.split(" ")
        for raw, written in zip(
            numbers.split(":"), (device["major"], device["minor"]), strict=True
        ):
            assert written == (-1 if raw == "*" else _go_parse_int64(raw))
