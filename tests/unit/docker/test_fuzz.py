"""Fuzzing of what the Docker adapter decodes from an engine: event lines and objects, the
container list, task, config, info and container bodies, ids that become paths, secret names.

Every property is the same: whatever arrives, the answer is a value of the expected shape or a
typed refusal (:class:`RequestDecodeError`, :class:`PermanentError`), never another exception
and never a hang (each test runs under the per-test timeout). A hostile event stream also runs
end to end against a scripted engine over real HTTP.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import example, given, settings
from hypothesis import strategies as st

import adapters.docker.client as client_module
from adapters.docker.client import _LineSplitter, decode_event_line
from adapters.docker.events import (
    DockerEventSource,
    EventSourceSettings,
    container_of,
    decode_container_list,
    decode_event,
)
from adapters.docker.paths import CONTAINER_ID, IdKind, api_path, check_path
from adapters.docker.resolver import check_task_owner
from adapters.docker.secrets import read_secret
from adapters.docker.types import Config, Info, Task, decode
from controller.errors import PermanentError, RequestDecodeError
from controller.models import Container
from tests.support.waiting import eventually
from tests.unit.docker.scripted import ScriptedEngine, answer_json, event_stream
from tests.unit.docker.test_events import watching

CID = "a" * 64
DEEP = 100_000

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=25,
)
ids = st.sampled_from([CID, "b" * 64, "", "..", "../secrets", "A" * 64, "a" * 63, 7, None])
event_objects = st.fixed_dictionaries(
    {},
    optional={
        "Type": st.sampled_from(["container", "network", "image", ""]) | json_values,
        "Action": st.sampled_from(["create", "destroy", "connect", "start", "x"]) | json_values,
        "Actor": st.fixed_dictionaries(
            {},
            optional={
                "ID": ids | json_values,
                "Attributes": st.dictionaries(
                    st.sampled_from(["container", "name"]) | st.text(max_size=5),
                    ids | json_values,
                    max_size=3,
                )
                | json_values,
            },
        )
        | json_values,
        "time": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
        "timeNano": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
    },
)


def nested(depth: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    """A JSON document nested ``depth`` levels deep."""
    return open_ * depth + close * depth


# -- event lines and objects ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
@example(nested(DEEP))
@example(b'{"a":' * DEEP + b"1" + b"}" * DEEP)
@example(b'{"time": ' + b"9" * 5000 + b"}")
@example(b"\xff\xfe{")
def test_any_event_line_decodes_to_an_object_or_nothing(line: bytes) -> None:
    """An event line of any bytes is a JSON object or None (skipped), never an exception."""
    event = decode_event_line(line)
    assert event is None or isinstance(event, dict)


@settings(max_examples=400, deadline=None)
@given(event_objects)
def test_any_event_object_is_read_or_ignored_and_only_full_ids_are_enqueued(
    raw: dict[str, Any],
) -> None:
    """Any event object is ignored or names a full container id; the source never raises."""
    event = decode_event(raw)
    if event is not None:
        cid = container_of(event)
        assert cid is None or CONTAINER_ID.fullmatch(cid)
    enqueued: list[str] = []

    async def no_bundles() -> list[str]:
        return []

    source = DockerEventSource(
        client_module.DockerClient("unix:///nonexistent.sock", env={}),
        enqueue=enqueued.append,
        bundle_ids=no_bundles,
    )
    source._handle(raw)
    assert all(CONTAINER_ID.fullmatch(cid) for cid in enqueued)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=8),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=10),
    st.integers(min_value=0, max_value=30),
    st.booleans(),
)
def test_line_splitter_gives_every_line_within_the_limit_whatever_the_chunks(
    lines: list[bytes], cuts: list[int], limit: int, final_newline: bool
) -> None:
    """Lines come out whole and in order however the stream is cut; longer ones are dropped."""
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    splitter = _LineSplitter(limit)
    got: list[bytes] = []
    position, i = 0, 0
    while position < len(data):
        size = cuts[i % len(cuts)]
        got += splitter.feed(data[position : position + size])
        position, i = position + size, i + 1
    rest = splitter.rest()
    if rest:
        got.append(rest)
    pieces = data.split(b"\n")
    complete, last = pieces[:-1], pieces[-1]
    expected = [p for p in complete if len(p) <= limit]
    if last and len(last) <= limit:
        expected.append(last)
    assert got == expected


async def test_a_hostile_event_stream_is_survived_and_good_events_still_arrive(
    engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deep nesting, an over-long line, junk and bad ids in the stream: good events still count."""
    monkeypatch.setattr(client_module, "MAX_EVENT_BYTES", 4096)
    good = [
        {"Type": "container", "Action": "create", "Actor": {"ID": c * 64}, "timeNano": n}
        for n, c in enumerate("de", start=1)
    ]
    hostile: list[Any] = [
        good[0],
        {"Type": "container", "Action": "create", "Actor": {"ID": "../secrets"}},
        {
            "Type": "container",
            "Action": "create",
            "Actor": {"ID": "f" * 64, "Attributes": {"big": "x" * 10_000}},
        },
        {"Type": "network", "Action": "connect", "Actor": {"Attributes": {"container": 7}}},
        {"Type": "container", "Action": "create", "timeNano": 2**80},
        [1, 2, 3],
        "text",
        good[1],
    ]
    lines = [json.dumps(e).encode() for e in hostile]
    lines.insert(2, nested(DEEP))
    lines.insert(3, b"\xff\x00not json")

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for line in lines:
            await response.write(line + b"\n")
        await response.write(
            b'{"Type": "container", "Action": "destroy", "Actor": {"ID": "' + b"9" * 64 + b'"}}'
        )  # the last line without its newline
        return response

    engine.on("/containers/json", answer_json([]))
    engine.on("/events", handler, event_stream([], hold=30.0))
    settings_ = EventSourceSettings(resync_interval=300, idle_timeout=30, reconnect_initial=0.01)
    async with watching(engine, settings_) as recorded:
        await eventually(lambda: "9" * 64 in recorded.enqueued, within=5.0)
        assert recorded.enqueued == ["d" * 64, "e" * 64, "9" * 64]


# -- API bodies -------------------------------------------------------------------------------

BODY_TYPES = [Task, Config, Info, Container]


@pytest.mark.parametrize("typ", BODY_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.dictionaries(
        st.sampled_from(
            ["ID", "Id", "Spec", "Status", "Slot", "NCPU", "Config", "HostConfig", "Swarm"]
        ),
        json_values,
    ).map(lambda v: json.dumps(v).encode())
)
@example(body=nested(DEEP))
@example(body=b'{"Spec": {"ContainerSpec": {"Configs": [{"Runtime": ' + nested(DEEP) + b"}]}}}")
@example(body=b'{"Slot": ' + b"9" * 5000 + b"}")
@example(body=b'{"NCPU": 1e400}')
def test_any_api_body_decodes_or_is_a_decode_error(typ: type[Any], body: bytes) -> None:
    """Any task, config, info or container body decodes, or is a RequestDecodeError."""
    try:
        decoded = decode(body, typ, "body")
    except RequestDecodeError:
        return
    assert isinstance(decoded, typ)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.lists(st.fixed_dictionaries({"Id": ids | json_values}), max_size=5).map(
        lambda v: json.dumps(v).encode()
    )
)
@example(nested(DEEP))
@example(b'[{"Id": "' + b"a" * 64 + b'", "Labels": ' + nested(DEEP) + b"}]")
def test_any_container_list_gives_full_ids_or_a_decode_error(body: bytes) -> None:
    """Any container list body gives only full container ids, or is a RequestDecodeError."""
    try:
        listed = decode_container_list(body, "fuzz")
    except RequestDecodeError:
        return
    assert all(CONTAINER_ID.fullmatch(cid) for cid in listed)


swarm_ids = st.sampled_from(["s" * 25, "n" * 25, "t" * 25, ""]) | st.text(max_size=30)


@settings(max_examples=300, deadline=None)
@given(
    labels=st.dictionaries(
        st.sampled_from(
            [
                "com.docker.swarm.service.id",
                "com.docker.swarm.node.id",
                "com.docker.swarm.task.name",
                "other",
            ]
        ),
        swarm_ids,
    ),
    task_id=swarm_ids,
    service_id=swarm_ids,
    node_id=swarm_ids,
    slot=st.integers(min_value=0, max_value=2**62),
    container=st.sampled_from([CID, "", "b" * 64]) | st.text(max_size=70),
)
def test_task_ownership_is_proved_awaited_or_refused(
    labels: dict[str, str],
    task_id: str,
    service_id: str,
    node_id: str,
    slot: int,
    container: str,
) -> None:
    """A task either proves the container is its own, is still to name it, or is refused."""
    doc = {"Id": CID, "Config": {"Labels": labels}}
    body = {
        "ID": task_id,
        "ServiceID": service_id,
        "NodeID": node_id,
        "Slot": slot,
        "Status": {"ContainerStatus": {"ContainerID": container}},
    }
    c = decode(json.dumps(doc).encode(), Container, "container")
    task = decode(json.dumps(body).encode(), Task, "task")
    refusal = ""
    try:
        owned = check_task_owner(c, task_id, task)
    except PermanentError as exc:
        refusal = str(exc)
    if refusal:
        assert "no secrets or configs resolved" in refusal
        return
    assert owned == (container == CID)
    assert labels.get("com.docker.swarm.service.id") == service_id
    assert labels.get("com.docker.swarm.node.id") == node_id


# -- ids and names ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(IdKind), ids=lambda k: k.name)
@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=80) | st.text(alphabet=string.printable, max_size=80))
@example(value="../secrets")
@example(value="%2e%2e")
def test_any_value_becomes_one_plain_segment_or_is_refused(kind: IdKind, value: str) -> None:
    """Any text is one quoted segment under its collection, passing check_path, or refused."""
    try:
        path = api_path("things", kind, value, "json")
    except PermanentError:
        return
    assert check_path(path) == path
    segments = path.split("/")
    assert segments[:2] == ["", "things"]
    assert segments[3:] == ["json"]
    assert len(segments) == 4


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=80))
@example(name="db")
def test_any_secret_name_reads_a_file_in_the_directory_or_is_refused(
    tmp_path_factory: pytest.TempPathFactory, name: str
) -> None:
    """Any secret name reads the one file of that name in the directory, or is refused, typed."""
    directory: Path = tmp_path_factory.getbasetemp() / "fuzz-secrets"
    directory.mkdir(exist_ok=True)
    (directory / "db").write_bytes(b"pw")
    try:
        data = read_secret(str(directory), name, "s" * 25)
    except PermanentError:
        return
    assert name == "db"
    assert data == b"pw"
