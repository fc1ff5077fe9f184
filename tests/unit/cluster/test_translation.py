"""A WindowsContainer becomes the generator's request: each field lands where Docker's would."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from controller.bundle import build_bundle
from controller.cluster import (
    CONFIG_MAP,
    GMSA_CREDENTIAL_SPEC,
    SECRET,
    Dependencies,
    ReferenceIndex,
    credential_spec_names,
    decode_windows_container,
    references,
    secret_payload_id,
    to_request,
)
from controller.errors import PermanentError, RequestDecodeError, SpecError
from controller.generate import INTERNAL_CONFIGS_DIR, INTERNAL_SECRETS_DIR, generate
from controller.models import NodeFacts

GMSA_JSON = '{"CmsPlugins":["ActiveDirectory"],"DomainJoinConfig":{"MachineAccountName":"web"}}'


def _object(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "nodeName": "win-1",
        "command": ["cmd.exe", "/S", "/C"],
        "args": ["echo hello"],
        "layerFolders": ["C:\\layers\\base", "C:\\layers\\rw"],
    }
    base.update(spec)
    return {
        "apiVersion": "winspec.io/v1alpha1",
        "kind": "WindowsContainer",
        "metadata": {"name": "web", "namespace": "apps", "uid": "u-1", "generation": 3},
        "spec": base,
    }


def test_command_env_and_resources_reach_the_spec() -> None:
    """command+args become the process args, env stays in order, memory becomes a limit."""
    wc = decode_windows_container(
        _object(
            env=[{"name": "A", "value": "1"}, {"name": "B"}],
            resources={"memory": 1 << 30},
            workingDir="C:\\app",
        )
    )
    request = to_request(wc, node=NodeFacts(), deps=Dependencies(), bundle_root=None)
    spec = generate(request).spec
    assert spec.process is not None
    assert spec.process.args == ["cmd.exe", "/S", "/C", "echo hello"]
    assert spec.process.env == ["A=1", "B="]
    assert spec.process.cwd == "C:\\app"
    assert spec.hostname == "web"  # the object's name when spec.hostname is empty
    assert spec.windows is not None
    assert spec.windows.resources is not None
    assert spec.windows.resources.memory is not None
    assert spec.windows.resources.memory.limit == 1 << 30


def test_secret_data_goes_into_the_bundle_under_a_stable_id() -> None:
    """A referenced Secret key's bytes are a bundle payload named by a stable id."""
    wc = decode_windows_container(
        _object(secrets=[{"secretName": "db", "key": "password", "target": "db-password"}])
    )
    deps = Dependencies(secrets={("db", "password"): b"s3cr3t"})
    request = to_request(wc, node=NodeFacts(), deps=deps, bundle_root=None)
    content = build_bundle(request, generate(request))
    payload_id = secret_payload_id(wc.spec.secrets[0])
    assert content.files[f"secrets/{payload_id}"] == b"s3cr3t"
    assert payload_id == secret_payload_id(
        decode_windows_container(
            _object(secrets=[{"secretName": "db", "key": "password", "target": "elsewhere"}])
        ).spec.secrets[0]
    )


@pytest.mark.parametrize(
    "spec",
    [
        {"gmsaCredentialSpecName": "web-gmsa"},
        {"securityOptions": ["CredentialSpec=config://web-gmsa"]},
    ],
)
def test_a_gmsa_credential_spec_is_the_windows_credential_spec(spec: dict[str, Any]) -> None:
    """gmsaCredentialSpecName and credentialspec=config://<name> both name a GMSACredentialSpec."""
    wc = decode_windows_container(_object(**spec))
    assert credential_spec_names(wc.spec) == ["web-gmsa"]
    deps = Dependencies(credential_specs={"web-gmsa": GMSA_JSON})
    generated = generate(to_request(wc, node=NodeFacts(), deps=deps, bundle_root=None))
    assert generated.spec.windows is not None
    assert generated.spec.windows.credentialSpec == GMSA_JSON


def test_an_unresolved_credential_spec_is_refused() -> None:
    """A named credential spec that was not resolved is the generator's rule error."""
    wc = decode_windows_container(_object(gmsaCredentialSpecName="missing"))
    with pytest.raises(SpecError, match="config missing not found"):
        generate(to_request(wc, node=NodeFacts(), deps=Dependencies(), bundle_root=None))


@pytest.mark.parametrize(
    "option", ["credentialspec=file://web.json", "CredentialSpec=registry://web"]
)
def test_a_host_credential_spec_is_refused_naming_what_to_use(option: str) -> None:
    """file:// and registry:// are refused in cluster mode, pointing to a GMSACredentialSpec."""
    wc = decode_windows_container(_object(securityOptions=[option]))
    with pytest.raises(SpecError) as info:
        to_request(wc, node=NodeFacts(), deps=Dependencies(), bundle_root=None)
    scheme = option.partition("=")[2].partition("://")[0]
    assert str(info.value) == (
        f"spec.securityOptions: credentialspec={scheme}:// is refused in cluster mode (it would "
        "be read on winspec's own host, not on the node); put the credential spec in a "
        "GMSACredentialSpec (windows.k8s.io/v1) and name it with spec.gmsaCredentialSpecName or "
        "credentialspec=config://<name>"
    )


def test_both_ways_of_naming_a_credential_spec_are_refused() -> None:
    """gmsaCredentialSpecName beside a credentialspec= option is a permanent error."""
    wc = decode_windows_container(
        _object(gmsaCredentialSpecName="a", securityOptions=["credentialspec=raw://{}"])
    )
    with pytest.raises(PermanentError, match="both"):
        to_request(wc, node=NodeFacts(), deps=Dependencies(), bundle_root=None)


def test_a_bad_cgroup_rule_is_refused_with_the_rule_message() -> None:
    """An LCOW device cgroup rule S31 rejects gives the generator's exact message."""
    wc = decode_windows_container(
        _object(image={"os": "linux"}, command=["/bin/sh"], deviceCgroupRules=["c *:*  rwm"])
    )
    request = to_request(
        wc, node=NodeFacts(lcow_supported=True), deps=Dependencies(), bundle_root=None
    )
    with pytest.raises(SpecError) as info:
        generate(request)
    assert str(info.value) == (
        "linux runtime spec devices: invalid device cgroup rule format: 'c *:*  rwm'"
    )


def test_the_container_id_is_stable_and_docker_shaped() -> None:
    """The same object always gets the same 64-hex-digit container id; another uid another."""
    first = to_request(
        decode_windows_container(_object()), node=NodeFacts(), deps=Dependencies(), bundle_root=None
    )
    again = to_request(
        decode_windows_container(_object()), node=NodeFacts(), deps=Dependencies(), bundle_root=None
    )
    other = _object()
    other["metadata"]["uid"] = "u-2"
    third = to_request(
        decode_windows_container(other), node=NodeFacts(), deps=Dependencies(), bundle_root=None
    )
    assert first.container.id == again.container.id != third.container.id
    assert len(first.container.id) == 64
    assert int(first.container.id, 16) >= 0


def test_a_malformed_object_is_a_decode_error() -> None:
    """A field of the wrong type is a RequestDecodeError naming it."""
    bad = _object(tty="yes")
    with pytest.raises(RequestDecodeError, match=r"spec.tty"):
        decode_windows_container(bad)


def test_the_reference_index_maps_objects_back_to_keys() -> None:
    """Referenced objects map to the keys using them; dropping a reference drops the key."""
    index = ReferenceIndex()
    a = decode_windows_container(
        _object(
            secrets=[{"secretName": "db", "key": "k", "target": "t"}],
            configs=[{"configMapName": "cfg", "key": "k", "target": "t"}],
            gmsaCredentialSpecName="web-gmsa",
        )
    )
    index.record("apps/a", references(a))
    index.record("apps/b", references(decode_windows_container(_object(
        secrets=[{"secretName": "db", "key": "other", "target": "u"}]))))  # fmt: skip
    assert index.keys_for((SECRET, "apps", "db")) == {"apps/a", "apps/b"}
    assert index.keys_for((SECRET, "other-namespace", "db")) == set()
    assert index.keys_for((CONFIG_MAP, "apps", "cfg")) == {"apps/a"}
    assert index.keys_for((GMSA_CREDENTIAL_SPEC, "", "web-gmsa")) == {"apps/a"}
    assert index.keys_for_kind(SECRET) == {"apps/a", "apps/b"}
    index.record("apps/b", references(decode_windows_container(_object())))
    assert index.keys_for((SECRET, "apps", "db")) == {"apps/a"}
    index.remove("apps/a")
    assert index.keys_for((SECRET, "apps", "db")) == set()
    assert index.keys_for_kind(CONFIG_MAP) == set()


_PAYLOAD_REFS = {
    "secrets": [{"secretName": "db", "key": "password", "target": "db-password"}],
    "configs": [{"configMapName": "web", "key": "app.json", "target": "C:\\app\\app.json"}],
}
_PAYLOAD_DEPS = Dependencies(
    secrets={("db", "password"): b"s3cr3t"}, configs={("web", "app.json"): b"{}"}
)


def _payload_sources(request: Any) -> list[str]:
    """The host sources of the spec's secrets and configs mounts, in order."""
    spec = generate(request).spec
    internal = (INTERNAL_SECRETS_DIR, INTERNAL_CONFIGS_DIR)
    return [m.source for m in spec.mounts if m.destination in internal]


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        (
            "C:\\ProgramData\\winspec\\bundles",
            "C:\\ProgramData\\winspec\\bundles\\apps\\web\\{}",
        ),
        ("D:\\bundles\\", "D:\\bundles\\apps\\web\\{}"),
        ("/var/lib/winspec/bundles", "/var/lib/winspec/bundles/apps/web/{}"),
    ],
)
def test_payload_mounts_point_into_the_bundle_below_the_node_root(root: str, expected: str) -> None:
    """Without spec.bundleDir the payload mounts name <root>/<namespace>/<name>/secrets|configs."""
    wc = decode_windows_container(_object(**_PAYLOAD_REFS))
    request = to_request(wc, node=NodeFacts(), deps=_PAYLOAD_DEPS, bundle_root=root)
    assert _payload_sources(request) == [expected.format("secrets"), expected.format("configs")]
    files = build_bundle(request, generate(request)).files
    # Each link's source is a file of the bundle's payload directory the mount points at.
    links = msgspec.json.decode(files["links.json"])["links"]
    assert len(links) == 2
    for link in links:
        directory, _, payload = link["source"].rpartition("\\")
        assert f"{directory.rpartition(chr(92))[2]}/{payload}" in files


def test_an_explicit_bundle_dir_wins_over_the_node_root() -> None:
    """spec.bundleDir is where the payload mounts point, whatever the node's bundle root."""
    wc = decode_windows_container(_object(bundleDir="E:\\elsewhere\\web", **_PAYLOAD_REFS))
    request = to_request(
        wc, node=NodeFacts(), deps=_PAYLOAD_DEPS, bundle_root="C:\\ProgramData\\winspec\\bundles"
    )
    assert _payload_sources(request) == [
        "E:\\elsewhere\\web\\secrets",
        "E:\\elsewhere\\web\\configs",
    ]
