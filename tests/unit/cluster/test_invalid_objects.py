"""A WindowsContainer whose spec the models refuse: a typed error naming the field, never its
value, carrying the metadata and status (decoded on their own) that status and Events need."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.cluster import InvalidObjectError, decode_windows_container
from controller.errors import PermanentError, RequestDecodeError, reason_of

SECRET = "hunter2-s3cret"


def _object(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "nodeName": "win-1",
        "command": ["cmd.exe"],
        "layerFolders": ["C:\\layers\\base"],
    }
    base.update(spec)
    return {
        "apiVersion": "winspec.io/v1alpha1",
        "kind": "WindowsContainer",
        "metadata": {
            "name": "web",
            "namespace": "apps",
            "uid": "u-1",
            "generation": 4,
            "resourceVersion": "77",
            "finalizers": ["winspec.io/bundle"],
        },
        "spec": base,
        "status": {"conditions": [{"type": "Ready", "status": "False", "message": "before"}]},
    }


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"command": SECRET}, "$.spec.command"),
        ({"isolation": SECRET}, "$.spec.isolation"),
        ({"env": [{"name": "A", "value": 7}]}, "$.spec.env[0].value"),
        ({"image": {"os": SECRET}}, "$.spec.image.os"),
    ],
)
def test_the_error_names_the_field_but_not_the_value(spec: dict[str, Any], field: str) -> None:
    """A wrong type or enum value: the message names the field and never quotes the value."""
    for form in (_object(**spec), json.dumps(_object(**spec)).encode()):
        with pytest.raises(InvalidObjectError) as caught:
            decode_windows_container(form)
        message = str(caught.value)
        assert message.startswith("invalid WindowsContainer: ")
        assert f"`{field}`" in message
        assert SECRET not in message
        assert "7" not in message.replace(field, "")


def test_the_error_keeps_metadata_and_status_and_is_permanent() -> None:
    """The error carries what status writing needs; it is permanent with reason InvalidSpec."""
    with pytest.raises(InvalidObjectError) as caught:
        decode_windows_container(_object(command=SECRET))
    error = caught.value
    assert isinstance(error, RequestDecodeError)
    assert isinstance(error, PermanentError)
    assert reason_of(error) == "InvalidSpec"
    assert error.key == "apps/web"
    meta = error.metadata
    assert (meta.uid, meta.generation, meta.resource_version) == ("u-1", 4, "77")
    assert meta.finalizers == ("winspec.io/bundle",)
    assert error.status.conditions[0].message == "before"
    again = error.again()
    assert again is not error
    assert (str(again), again.head) == (str(error), error.head)


def test_a_malformed_status_still_leaves_the_metadata() -> None:
    """A status of the wrong shape too: the metadata alone is kept (with an empty status)."""
    body = _object(command=SECRET)
    body["status"] = {"conditions": "nope"}
    with pytest.raises(InvalidObjectError) as caught:
        decode_windows_container(body)
    assert caught.value.key == "apps/web"
    assert caught.value.status.conditions == []


@pytest.mark.parametrize("body", [b"not json", b'{"metadata": 3}', b"{}", b"[]"])
def test_without_metadata_it_is_a_plain_decode_error(body: bytes) -> None:
    """Nothing to name the object by: a RequestDecodeError, not an InvalidObjectError."""
    with pytest.raises(RequestDecodeError) as caught:
        decode_windows_container(body)
    assert not isinstance(caught.value, InvalidObjectError)
