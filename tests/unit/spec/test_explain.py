"""``winspec explain`` and ``winspec diff`` (controller/explain.py): provenance of every spec field
(S1–S32) and the comparison of specs made elsewhere with Docker's rules."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from controller.explain import (
    FIELDLESS_RULES,
    RULE_REASONS,
    diff,
    explain,
    render_annotations,
    render_differences,
    select,
)
from controller.generate import encode_spec, generate
from controller.models import decode_request
from controller.provenance import Provenance
from tests.unit.spec.golden import CASES_DIR, load_cases

RULE_IDS = {f"S{n}" for n in range(1, 33)}
SPEC_CASES = [c for c in load_cases() if (c.path / "config.json").is_file()]
_RULES_OF_LINE = re.compile(r"  \[([S0-9 ]+)\]  <- ")


def _request(case: str) -> Any:
    return decode_request((CASES_DIR / case / "request.json").read_bytes())


def _ours(case: str) -> tuple[dict[str, Any], Provenance]:
    record = Provenance()
    spec = generate(_request(case), record=record).spec
    return json.loads(encode_spec(spec)), record


def _golden_rules() -> set[str]:
    rules: set[str] = set()
    for case in SPEC_CASES:
        for line in (case.path / "explain.txt").read_text(encoding="utf-8").splitlines():
            match = _RULES_OF_LINE.search(line)
            assert match, f"{case.name}: a field without rules: {line[:120]}"
            rules.update(match.group(1).split())
    return rules


def test_every_rule_is_reported_by_a_golden_annotation_or_listed_as_fieldless() -> None:
    """S1–S32: each rule decides a field of some golden case, or is listed as deciding none."""
    reported = _golden_rules()
    assert reported | set(FIELDLESS_RULES) == RULE_IDS
    # The list of field-less rules is honest: none of them is reported for a field.
    assert not reported & set(FIELDLESS_RULES)


@pytest.mark.parametrize("case", SPEC_CASES, ids=[c.name for c in SPEC_CASES])
def test_the_recorder_leaves_the_spec_unchanged(case: Any) -> None:
    """S32: the spec generated with a provenance recorder is byte-identical to the one without."""
    request = decode_request((case.path / "request.json").read_bytes())
    plain = encode_spec(generate(request).spec)
    recorded = encode_spec(generate(request, record=Provenance()).spec)
    assert plain == recorded == (case.path / "config.json").read_bytes()


def test_every_rule_has_a_one_line_reason() -> None:
    """S1–S32: diff's reason table covers every rule id, one line each, and nothing else."""
    assert set(RULE_REASONS) == RULE_IDS
    assert all(r and "\n" not in r for r in RULE_REASONS.values())


def test_field_narrows_to_one_field_with_its_rule_and_request_field() -> None:
    """S11: --field process.user.username gives that field alone, from Config.User."""
    _, annotations = explain(_request("s11-tty-console-user"))
    (only,) = select(annotations, "process.user.username")
    assert only.rules == ["S11"]
    assert only.sources == ["container.Config.User"]
    assert only.value == _request("s11-tty-console-user").container.config.user


def test_mounts_name_the_container_mount_they_come_from() -> None:
    """S5, S6: a mount sorted by depth names the index of its container mount, not its own."""
    request = _request("s5-mount-depth-order")
    _, annotations = explain(request)
    for a in annotations:
        if a.field.endswith(".destination") and a.field.startswith("mounts["):
            (source,) = a.sources
            index = int(re.fullmatch(r"container\.Mounts\[(\d+)\]\.Destination", source)[1])  # type: ignore[index]
            assert request.container.mounts is not None
            assert request.container.mounts[index].destination == a.value


def test_a_credential_spec_is_never_printed() -> None:
    """S26: explain shows a credential spec's size and digest, never its JSON text."""
    request = _request("s23-file-resolved")
    generated, annotations = explain(request)
    text = render_annotations(annotations)
    content = generated.spec.windows.credentialSpec  # type: ignore[union-attr]
    assert content
    assert content not in text
    (cred,) = select(annotations, "windows.credentialSpec")
    assert f"{len(content.encode())} bytes" in cred.value
    assert cred.rules == ["S21", "S22", "S23", "S26"]


def _kinds(differences: list[Any]) -> dict[str, tuple[str, list[str]]]:
    return {d.field: (d.kind, d.rules) for d in differences}


def test_identical_specs_have_no_difference() -> None:
    """S32: a spec compared with itself has no difference."""
    ours, record = _ours("s5-mount-depth-order")
    assert diff(copy.deepcopy(ours), ours, record) == []


def test_mount_order_is_a_difference_of_its_own() -> None:
    """S5: the same mounts in another order are one order difference, decided by S5."""
    ours, record = _ours("s5-mount-depth-order")
    theirs = copy.deepcopy(ours)
    theirs["mounts"].reverse()
    assert _kinds(diff(theirs, ours, record)) == {"mounts": ("order", ["S5"])}


def test_a_mount_only_one_side_has_is_decided_by_the_mount_rules() -> None:
    """S5, S6: an extra mount is reported by its destination, with the mount rules."""
    ours, record = _ours("s5-mount-depth-order")
    theirs = copy.deepcopy(ours)
    theirs["mounts"].insert(0, {"destination": "C:\\extra", "source": "C:\\x"})
    assert _kinds(diff(theirs, ours, record)) == {
        "mounts[C:\\extra].destination": ("only-theirs", ["S5", "S6"]),
        "mounts[C:\\extra].source": ("only-theirs", ["S5", "S6"]),
    }


def test_capabilities_compare_as_sets() -> None:
    """S30: reordered capabilities are an order difference; a missing one a value difference."""
    ours, record = _ours("s1-lcow-default")
    theirs = copy.deepcopy(ours)
    caps = theirs["process"]["capabilities"]
    caps["bounding"].reverse()
    caps["effective"].remove("CAP_KILL")
    assert _kinds(diff(theirs, ours, record)) == {
        "process.capabilities.bounding": ("order", ["S30"]),
        "process.capabilities.effective": ("value", ["S30"]),
    }


def test_unescaped_command_line_names_the_escaping_rule() -> None:
    """S8, S9: a commandLine joined without Windows escaping differs, decided by S8 and S9."""
    request = _request("s8-args-escaped")
    ours, record = _ours("s8-args-escaped")
    theirs = copy.deepcopy(ours)
    theirs["process"]["commandLine"] = " ".join([request.container.path, *request.container.args])
    assert theirs["process"]["commandLine"] != ours["process"]["commandLine"]
    differences = diff(theirs, ours, record)
    assert _kinds(differences) == {"process.commandLine": ("value", ["S8", "S9"])}
    assert "S9: " in render_differences(differences)


def test_a_different_credential_spec_is_reported_without_its_text() -> None:
    """S23, S26: another credential spec is a difference whose output holds digests only."""
    ours, record = _ours("s23-file-resolved")
    theirs = copy.deepcopy(ours)
    theirs["windows"]["credentialSpec"] = '{"CmsPlugins": ["ActiveDirectory"], "other": true}'
    differences = diff(theirs, ours, record)
    assert _kinds(differences) == {
        "windows.credentialSpec": ("value", ["S21", "S22", "S23", "S26"])
    }
    text = render_differences(differences)
    assert "CmsPlugins" not in text
    assert ours["windows"]["credentialSpec"] not in text
    assert text.count("sha256") == 2


def test_devices_compare_as_sets() -> None:
    """S27, S28: reordered devices are an order difference; one missing, a value difference."""
    ours, record = _ours("s28-devices")
    theirs = copy.deepcopy(ours)
    theirs["windows"]["devices"].reverse()
    assert _kinds(diff(theirs, ours, record)) == {"windows.devices": ("order", ["S27", "S28"])}
    theirs["windows"]["devices"].pop()
    assert _kinds(diff(theirs, ours, record)) == {"windows.devices": ("value", ["S27", "S28"])}


def test_two_specs_without_a_request_say_the_rules_are_unknown() -> None:
    """S5: without provenance a difference carries no rule and says how to get one."""
    ours, _ = _ours("s5-mount-depth-order")
    theirs = copy.deepcopy(ours)
    theirs["mounts"].reverse()
    (only,) = diff(theirs, ours)
    assert only.rules == []
    assert "--request" in only.reason


def test_the_golden_annotations_are_in_the_cases() -> None:
    """S32: every spec case holds explain.txt (test_golden compares it byte for byte)."""
    missing = [c.name for c in SPEC_CASES if not (c.path / "explain.txt").is_file()]
    assert not missing
