"""``winspec explain`` and ``winspec diff``: a spec's fields with the rules that decided them.

Pure: a request (or spec documents already decoded from JSON) in, annotations or differences
out. The generator records the provenance itself (:class:`controller.provenance.Provenance`), so
what is printed here cannot drift from what the code does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import msgspec

from controller.credspec import CredentialSpecReader
from controller.generate import Generated, encode_spec, generate
from controller.models import Request
from controller.provenance import Provenance

#: Rules that decide no field of a spec: checks and guarantees, not values.
FIELDLESS_RULES: dict[str, str] = {
    "S32": "stable, strict, valid output: a property of the whole spec, not of one field",
}

#: Per rule, one line on why winspec's value is what it is (``winspec diff`` prints it).
RULE_REASONS: dict[str, str] = {
    "S1": "Docker starts from its default spec for the image's OS",
    "S2": "the image's platform picks the default spec (LCOW: moby's Linux default)",
    "S3": "Docker's isolation: container setting, else the daemon default; LCOW is always Hyper-V",
    "S4": "Docker joins Hostname and Domainname (LCOW: the domain goes to a sysctl)",
    "S5": "Docker orders binds by destination depth, then adds the internal secrets/configs mounts",
    "S6": 'Docker marks a read-only bind with options ["ro"] and no type (LCOW: bind, rbind)',
    "S7": "Docker's working directory: the image's, else C:\\ (LCOW: /)",
    "S8": "Docker sends ArgsEscaped commands as one commandLine, others as args",
    "S9": "Docker escapes each argument as Windows' command-line parser reads it",
    "S10": "Docker's environment: the container's Env as it is (LCOW: PATH, HOSTNAME, TERM first)",
    "S11": "Docker's terminal, console size and user name come from the container config",
    "S12": "Docker lists the image layers topmost first, then the scratch layer",
    "S13": "Docker's root is the mounted volume under process isolation, empty under Hyper-V",
    "S14": "Docker skips flushes during a container's first boot only",
    "S15": "Docker's HNS endpoints, DNS search list and shared network container",
    "S16": "Docker's CPU count, shares and maximum (CPUPercent × 100) from the HostConfig",
    "S17": "Docker turns NanoCPUs into a CPU count (Hyper-V) or a maximum (process)",
    "S18": "Docker writes the CPU object only when one of its values is set",
    "S19": "Docker's memory limit and storage IOPS/bandwidth from the HostConfig",
    "S20": "Docker's create-time checks (process isolation keeps count, else shares, else percent)",
    "S21": "Docker reads credentialspec= security options only",
    "S22": "Docker takes the last credential spec option",
    "S23": "Docker reads file:// specs under the daemon root's CredentialSpecs",
    "S24": "Docker reads registry:// specs from its registry key",
    "S25": "Docker's config:// (swarm only) and raw:// credential specs",
    "S26": "Docker passes the credential spec as its JSON text",
    "S27": "Docker assigns devices under process isolation on RS5+ only",
    "S28": "Docker's device paths: class/GUID or IDTYPE://ID",
    "S29": "Docker's LCOW root: rootfs, read-only when asked",
    "S30": "Docker's LCOW capabilities: the default 14 with CapAdd/CapDrop, all when privileged",
    "S31": "Docker's LCOW device cgroup rules from DeviceCgroupRules",
    "S32": "Docker's output is stable and strict",
}

_CREDENTIAL_SPEC = "windows.credentialSpec"
#: List fields compared as sets by ``diff`` (an order difference is reported on its own).
_SET_FIELDS = frozenset(
    {
        "process.env",
        "process.capabilities.bounding",
        "process.capabilities.effective",
        "process.capabilities.inheritable",
        "process.capabilities.permitted",
        "process.capabilities.ambient",
        "windows.devices",
        "linux.maskedPaths",
        "linux.readonlyPaths",
    }
)


class Annotation(msgspec.Struct, kw_only=True):
    """One leaf field of a spec, its value and where it comes from."""

    field: str
    value: Any
    rules: list[str]
    sources: list[str] = msgspec.field(name="from")


class Difference(msgspec.Struct, kw_only=True):
    """One field where two specs differ."""

    field: str
    kind: str  # "value", "only-theirs", "only-winspec", "order"
    theirs: Any = None
    winspec: Any = None
    rules: list[str] = msgspec.field(default_factory=list)
    reason: str = ""  # one line per rule: "S5: why winspec's value is what it is"


def redact(path: str, value: Any) -> Any:
    """A value as printed: a credential spec's JSON text is replaced by its size and digest."""
    if path == _CREDENTIAL_SPEC and isinstance(value, str) and value:
        digest = hashlib.sha256(value.encode()).hexdigest()[:16]
        return f"<credential spec: {len(value.encode())} bytes, sha256 {digest}…>"
    return value


def _leaves(
    node: Any, path: str = "", whole: frozenset[str] = frozenset()
) -> Iterator[tuple[str, Any]]:
    """Every leaf (scalar, list of strings, empty list or object) of a decoded JSON document,
    with its path; a field named in ``whole`` is one leaf, whatever it holds."""
    if path in whole:
        yield path, node
    elif isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}" if path else key, whole)
    elif isinstance(node, list) and node and not all(isinstance(v, str) for v in node):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{path}[{i}]", whole)
    else:
        yield path, node


def explain(
    request: Request, *, reader: CredentialSpecReader | None = None
) -> tuple[Generated, list[Annotation]]:
    """The spec for ``request`` and every leaf field of it with its rules and request fields."""
    record = Provenance()
    generated = generate(request, reader=reader, record=record)
    return generated, annotate(json.loads(encode_spec(generated.spec)), record)


def annotate(document: dict[str, Any], record: Provenance) -> list[Annotation]:
    """The leaves of a spec document, each with what ``record`` says decided it."""
    out = []
    for path, value in _leaves(document):
        rules, sources = record.lookup(path)
        out.append(Annotation(field=path, value=redact(path, value), rules=rules, sources=sources))
    return out


def select(annotations: list[Annotation], field: str) -> list[Annotation]:
    """The annotations of ``field`` and of the fields below it."""
    return [
        a for a in annotations if a.field == field or a.field.startswith((field + ".", field + "["))
    ]


def render_annotations(annotations: list[Annotation]) -> str:
    """One line per field: ``path = value  [rules]  <- request fields``."""
    lines = []
    for a in annotations:
        value = json.dumps(a.value, ensure_ascii=False)
        rules = " ".join(a.rules) or "-"
        sources = ", ".join(a.sources) or "-"
        lines.append(f"{a.field} = {value}  [{rules}]  <- {sources}")
    return "".join(line + "\n" for line in lines)


def _keyed(document: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """Leaves for comparison: mounts keyed by destination, set fields whole; → (raw path, value).

    The raw path (``mounts[2].source``) is what the provenance of the spec knows.
    """
    out: dict[str, tuple[str, Any]] = {}
    doc = dict(document)
    mounts = doc.pop("mounts", None) or []
    for i, mount in enumerate(mounts):
        key = f"mounts[{mount.get('destination', i) if isinstance(mount, dict) else i}]"
        for sub, value in _leaves(mount, ""):
            out[f"{key}.{sub}" if sub else key] = (
                f"mounts[{i}].{sub}" if sub else f"mounts[{i}]",
                value,
            )
    for path, value in _leaves(doc, whole=_SET_FIELDS):
        out[path] = (path, value)
    return out


def diff(
    theirs: dict[str, Any], ours: dict[str, Any], record: Provenance | None = None
) -> list[Difference]:
    """The fields where ``theirs`` (a spec made elsewhere) differs from ``ours`` (winspec's).

    Mounts are matched by destination, set fields (capabilities, environment, devices) as sets;
    an order difference in either is reported on its own (kind ``order``). With ``record`` (the
    provenance of ``ours``) each difference names the rules that decide winspec's value.
    """
    left, right = _keyed(theirs), _keyed(ours)
    out: list[Difference] = []
    for path in sorted(left.keys() | right.keys()):
        # A mount only theirs has is decided by the mount rules as a whole.
        raw = right[path][0] if path in right else left[path][0].split("[")[0]
        a = left[path][1] if path in left else None
        b = right[path][1] if path in right else None
        if path not in left:
            kind = "only-winspec"
        elif path not in right:
            kind = "only-theirs"
        elif a == b:
            continue
        elif path in _SET_FIELDS and sorted(map(str, a or [])) == sorted(map(str, b or [])):
            kind = "order"
        else:
            kind = "value"
        out.append(_difference(path, raw, kind, a, b, record))
    order = _mount_order(theirs, ours)
    if order is not None:
        out.append(_difference("mounts", "mounts", "order", order[0], order[1], record))
    return out


def _mount_order(
    theirs: dict[str, Any], ours: dict[str, Any]
) -> tuple[list[Any], list[Any]] | None:
    """The destinations both specs mount, in each one's order, when the orders differ."""

    def destinations(doc: dict[str, Any]) -> list[Any]:
        return [m.get("destination") for m in doc.get("mounts") or [] if isinstance(m, dict)]

    a, b = destinations(theirs), destinations(ours)
    common = set(a) & set(b)
    a, b = [d for d in a if d in common], [d for d in b if d in common]
    return (a, b) if a != b else None


def _difference(
    path: str, raw: str, kind: str, theirs: Any, ours: Any, record: Provenance | None
) -> Difference:
    rules = record.lookup(raw)[0] if record is not None else []
    if kind == "order" and path == "mounts":
        rules = ["S5"] if record is not None else []
    reason = "\n".join(f"{r}: {RULE_REASONS[r]}" for r in rules if r in RULE_REASONS)
    if record is None:
        reason = "rules not known: compare with a request, or give --request"
    elif not reason:
        reason = "no rule: winspec never builds this field"
    return Difference(
        field=path,
        kind=kind,
        theirs=redact(raw, theirs),
        winspec=redact(raw, ours),
        rules=list(rules),
        reason=reason,
    )


def render_differences(differences: list[Difference]) -> str:
    """Per difference: the field and both values, then one indented line per rule and its reason."""
    if not differences:
        return "no differences\n"
    lines = []
    for d in differences:
        theirs = (
            "(absent)" if d.kind == "only-winspec" else json.dumps(d.theirs, ensure_ascii=False)
        )
        ours = "(absent)" if d.kind == "only-theirs" else json.dumps(d.winspec, ensure_ascii=False)
        lines.append(f"{d.field} ({d.kind}): theirs {theirs}, winspec {ours}")
        lines.extend("    " + reason for reason in d.reason.splitlines())
    return "".join(line + "\n" for line in lines)
