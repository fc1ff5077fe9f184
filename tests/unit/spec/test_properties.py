"""Property tests: any request document gives a valid spec or a permanent error (S32).

Requests are built from the golden base requests with random changes (isolation strings,
resources in and out of range, environment, mounts, security options, devices, cgroup rules,
capabilities, networks and endpoint data, node facts, image OS), encoded to JSON and run
through ``decode_request`` + ``generate`` exactly as a request document would be.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.capabilities import ALL_CAPABILITIES
from controller.errors import PermanentError
from controller.generate import encode_spec, generate
from controller.models import Request, decode_request
from tests.schema import check_spec_bytes
from tests.unit.spec.request_builders import lcow_request, merge, windows_request

INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1


def mostly(valid: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` seven times in eight, else ``wild``: deep paths run, edges still get hit."""
    return st.integers(min_value=0, max_value=7).flatmap(lambda n: wild if n == 0 else valid)


# Numbers near every boundary the rules name, plus values outside Go's types.
EDGE_INTS = st.sampled_from(
    [0, 1, -1, 99, 100, 101, 9999, 10000, 10001, 65535, 65536, 2**31, INT64_MAX, INT64_MAX + 1,
     UINT64_MAX, UINT64_MAX + 1, -(2**63), -(2**63) - 1]
)  # fmt: skip
WILD_INTS = st.one_of(st.integers(min_value=-3, max_value=12_000), EDGE_INTS)
SHORT_TEXT = st.text(max_size=12)
PATHISH = st.one_of(
    st.text(alphabet="C:\\/.ab ", max_size=14),
    st.sampled_from(["C:\\", "C:\\a\\..\\b", "D:\\data", "\\\\srv\\share\\x", "/srv", "C:x", ""]),
    SHORT_TEXT,
)
ISOLATION = mostly(
    st.sampled_from(["", "default", "DEFAULT", "process", "Process", "hyperv", "HyperV"]),
    SHORT_TEXT,
)
ENV_ENTRY = st.one_of(
    SHORT_TEXT,
    st.builds(
        "{}={}".format, st.sampled_from(["PATH", "HOSTNAME", "TERM", "A", "a", ""]), SHORT_TEXT
    ),
)
RAW_SPEC = st.sampled_from(['{"CmsPlugins":["ActiveDirectory"]}', "x", "{}"])
SECURITY_OPT = mostly(
    st.one_of(
        st.builds("credentialspec=raw://{}".format, RAW_SPEC),
        st.sampled_from(
            ["CredentialSpec=file://spec.json", "credentialspec=registry://web",
             "credentialspec=config://cfg", "credentialspec=FILE://a/../spec.json"]
        ),
    ),
    st.one_of(
        SHORT_TEXT,
        st.builds(
            "{}={}://{}".format,
            st.sampled_from(["credentialspec", "CredentialSpec", "seccomp", ""]),
            st.sampled_from(["file", "FILE", "registry", "config", "raw", "Raw", "http", ""]),
            st.one_of(PATHISH, st.sampled_from(["..\\x.json", "..", "\\x", "C:x"])),
        ),
    ),
)  # fmt: skip
RESOLVED_SPECS = st.fixed_dictionaries(
    {},
    optional={
        "file": mostly(
            st.just({"spec.json": "{}", "a/../spec.json": "{}"}),
            st.dictionaries(PATHISH, SHORT_TEXT, max_size=2),
        ),
        "registry": mostly(st.just({"web": "{}"}), st.dictionaries(SHORT_TEXT, SHORT_TEXT)),
        "config": mostly(st.just({"cfg": "{}"}), st.dictionaries(SHORT_TEXT, SHORT_TEXT)),
    },
)
DEVICE_PATH = mostly(
    st.builds(
        "{}{}".format,
        st.sampled_from(["class/", "class://", "vpci-class-guid://"]),
        st.text(alphabet="0123456789ABCDEF-", min_size=1, max_size=12),
    ),
    st.one_of(
        SHORT_TEXT,
        st.builds("{}{}".format, st.sampled_from(["://", "klass/", "", "/"]), SHORT_TEXT),
    ),
)
CGROUP_RULE = mostly(
    st.from_regex(r"\A[acb] ([0-9]{1,21}|\*):([0-9]{1,21}|\*) [rwm]{1,3}\Z", fullmatch=True),
    st.text(alphabet="abcz *:0123456789rwmx\n", max_size=14),
)
CAPABILITY = mostly(
    st.sampled_from([*ALL_CAPABILITIES, "ALL", "all", "chown", "Sys_Admin", "net_raw"]),
    st.one_of(SHORT_TEXT, st.just("CAP_AUDIT_READ")),
)
JSONISH = st.one_of(st.none(), st.booleans(), st.integers(), SHORT_TEXT)
ENDPOINT_DATA = st.fixed_dictionaries(
    {"hnsid": mostly(SHORT_TEXT, JSONISH)},
    optional={
        "GW_INFO": mostly(
            st.fixed_dictionaries({"hnsid": mostly(SHORT_TEXT, JSONISH)}),
            st.one_of(JSONISH, st.fixed_dictionaries({})),
        ),
        "AllowUnqualifiedDNSQuery": JSONISH,
    },
)
NETWORK_NAMES = st.sampled_from(["nat", "transparent", "l2bridge", "overlay", "z"])


def ints(low: int, high: int) -> st.SearchStrategy[int]:
    """Mostly in ``[low, high]``, sometimes anywhere (out of range, beyond Go's types)."""
    return mostly(st.integers(min_value=low, max_value=high), WILD_INTS)


HOST_CONFIG = st.fixed_dictionaries(
    {},
    optional={
        "Isolation": ISOLATION,
        "NetworkMode": st.sampled_from(["nat", "default", "container:abc", "none"]),
        "DnsSearch": st.one_of(st.none(), st.lists(SHORT_TEXT, max_size=3)),
        "SecurityOpt": st.one_of(st.none(), st.lists(SECURITY_OPT, max_size=3)),
        "Devices": st.lists(st.fixed_dictionaries({"PathOnHost": DEVICE_PATH}), max_size=3),
        "ConsoleSize": st.tuples(ints(0, 500), ints(0, 500)),
        "ReadonlyRootfs": st.booleans(),
        "Privileged": st.booleans(),
        "CapAdd": st.one_of(st.none(), st.lists(CAPABILITY, max_size=3)),
        "CapDrop": st.one_of(st.none(), st.lists(CAPABILITY, max_size=3)),
        "Capabilities": st.one_of(st.none(), st.lists(CAPABILITY, max_size=3)),
        "DeviceCgroupRules": st.one_of(st.none(), st.lists(CGROUP_RULE, max_size=3)),
        "CpuShares": ints(0, 10000),
        "CpuPercent": ints(0, 100),
        "CpuCount": ints(0, 64),
        "NanoCpus": mostly(st.integers(min_value=0, max_value=4_000_000_000), WILD_INTS),
        "Memory": ints(0, 2**40),
        "IOMaximumBandwidth": ints(0, 2**40),
        "IOMaximumIOps": ints(0, 2**20),
        "BlkioWeight": mostly(st.just(0), st.sampled_from([10, -1])),
        "CpusetCpus": mostly(st.just(""), st.just("0-1")),
        "MemorySwappiness": mostly(st.sampled_from([None, -1]), st.sampled_from([0, 60])),
        "OomKillDisable": mostly(st.sampled_from([None, False]), st.just(True)),
        "PidsLimit": mostly(st.sampled_from([None, 0]), st.just(10)),
        "Ulimits": mostly(st.sampled_from([None, []]), st.just([{"Name": "n", "Soft": 1}])),
    },
)
CONFIG = st.fixed_dictionaries(
    {},
    optional={
        "Hostname": SHORT_TEXT,
        "Domainname": SHORT_TEXT,
        "User": SHORT_TEXT,
        "Env": st.one_of(st.none(), st.lists(ENV_ENTRY, max_size=6)),
        "Tty": st.booleans(),
        "WorkingDir": PATHISH,
        "ArgsEscaped": st.booleans(),
        "Labels": st.sampled_from([None, {}, {"com.docker.swarm.task.id": "t1"}]),
    },
)
MOUNT = st.fixed_dictionaries(
    {"Source": PATHISH, "Destination": PATHISH, "RW": st.booleans()},
    optional={"Type": st.sampled_from(["bind", "volume"]), "Name": SHORT_TEXT},
)
CONTAINER = st.fixed_dictionaries(
    {},
    optional={
        "Path": SHORT_TEXT,
        "Args": st.one_of(st.none(), st.lists(st.text(max_size=10), max_size=4)),
        "Config": CONFIG,
        "HostConfig": HOST_CONFIG,
        "State": st.fixed_dictionaries(
            {"StartedAt": st.sampled_from(["0001-01-01T00:00:00Z", "", "2019-03-19T10:00:00Z"])}
        ),
        "Mounts": st.one_of(st.none(), st.lists(MOUNT, max_size=4)),
    },
)
NODE = st.fixed_dictionaries(
    {},
    optional={
        "windowsBuild": st.sampled_from([14393, 17134, 17763, 20348]),
        "cpuCount": ints(1, 64),
        "defaultIsolation": ISOLATION,
        "lcowSupported": mostly(st.just(True), st.just(False)),
        "dnsSearch": st.one_of(st.none(), st.lists(SHORT_TEXT, max_size=2)),
        "daemonRoot": st.sampled_from(["C:\\ProgramData\\docker", "D:\\docker\\", "/srv/docker"]),
    },
)
REFS = st.lists(st.tuples(st.text(alphabet="abc123", min_size=1, max_size=6), PATHISH), max_size=3)
TOP_LEVEL = st.fixed_dictionaries(
    {},
    optional={
        "image": st.fixed_dictionaries(
            {"Os": mostly(st.sampled_from(["windows", "linux"]), st.sampled_from(["", "freebsd"]))}
        ),
        "node": NODE,
        "layerFolders": mostly(st.lists(PATHISH, min_size=1, max_size=3), st.just([])),
        "volumePath": st.one_of(st.none(), PATHISH),
        "sharedEndpoints": st.lists(SHORT_TEXT, max_size=2),
        "networkSharedContainerId": st.one_of(st.none(), SHORT_TEXT),
        "swarmManaged": st.one_of(st.none(), st.booleans()),
        "bundleDir": st.one_of(st.none(), st.sampled_from(["C:\\bundles\\x", "/srv/bundles/x"])),
        "credentialSpecs": RESOLVED_SPECS,
    },
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """A random request: a golden base with random container, node and dependency changes."""
    base = draw(st.sampled_from([windows_request(), lcow_request()]))
    request = merge(base, {"container": draw(CONTAINER)})
    request = merge(request, draw(TOP_LEVEL))
    # Networks the container is on, and endpoint data for most of them (S15).
    networks = draw(st.lists(NETWORK_NAMES, unique=True, max_size=3))
    request["container"]["NetworkSettings"] = {
        "Networks": {n: draw(st.sampled_from([None, {"EndpointID": "e-" + n}])) for n in networks}
    }
    request["endpoints"] = {
        n: draw(ENDPOINT_DATA) for n in networks + draw(st.lists(NETWORK_NAMES, max_size=1))
    }
    secrets = draw(REFS)
    configs = draw(REFS)
    request["secrets"] = [{"secretId": i, "target": t} for i, t in secrets]
    request["configs"] = [{"configId": i, "target": t} for i, t in configs]
    return request


def _outcome(document: bytes) -> bytes | None:
    """The config.json bytes, or ``None`` when the request is refused with a permanent error."""
    try:
        request: Request = decode_request(document)
        return encode_spec(generate(request).spec)
    except PermanentError:
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests())
def test_any_request_gives_valid_spec_or_permanent_error(request: dict[str, Any]) -> None:
    """S32: a random request gives a strict, schema-valid spec or a PermanentError, nothing else."""
    # too_slow is suppressed: each example is large (a whole inspect document) by design.
    document = json.dumps(request).encode()
    spec = _outcome(document)
    if spec is not None:
        check_spec_bytes(spec)
        assert _outcome(document) == spec, "S32: not deterministic"


@settings(max_examples=150, deadline=None)
@given(document=st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode)))
def test_any_bytes_give_spec_or_permanent_error(document: bytes) -> None:
    """S32: arbitrary bytes as a request document never raise anything but a PermanentError."""
    spec = _outcome(document)
    if spec is not None:
        check_spec_bytes(spec)


@settings(max_examples=150, deadline=None)
@given(
    container=CONTAINER,
    extra=st.dictionaries(st.sampled_from(["Foo", "Driver", "Platform"]), JSONISH, max_size=2),
)
def test_unknown_inspect_fields_are_ignored(
    container: dict[str, Any], extra: dict[str, Any]
) -> None:
    """S32: fields Docker adds to an inspect (unknown to us) never change the spec."""
    plain = merge(windows_request(), {"container": container})
    noisy = merge(plain, {"container": extra, "image": extra})
    assert _outcome(json.dumps(plain).encode()) == _outcome(json.dumps(noisy).encode())


def _windows_with(**host_config: Any) -> dict[str, Any]:
    return merge(windows_request(), {"container": {"HostConfig": host_config}})


@settings(max_examples=200, deadline=None)
@given(
    options=st.lists(SECURITY_OPT, max_size=3),
    resolved=RESOLVED_SPECS,
    swarm=st.booleans(),
)
def test_security_options_give_spec_or_permanent_error(
    options: list[str], resolved: dict[str, Any], swarm: bool
) -> None:
    """S21–S26: any security options give a valid spec (last raw value wins) or a PermanentError."""
    request = merge(
        _windows_with(SecurityOpt=options),
        {"credentialSpecs": resolved, "swarmManaged": swarm},
    )
    spec = _outcome(json.dumps(request).encode())
    if spec is None:
        return
    check_spec_bytes(spec)
    written = json.loads(spec)["windows"].get("credentialSpec", "")
    if options and options[-1].lower().startswith("credentialspec=raw://"):
        assert written == options[-1].split("://", 1)[1]


@settings(max_examples=200, deadline=None)
@given(
    isolation=ISOLATION,
    node_isolation=ISOLATION,
    resources=st.fixed_dictionaries(
        {},
        optional={
            "CpuShares": ints(0, 10000),
            "CpuPercent": ints(0, 100),
            "CpuCount": ints(0, 64),
            "NanoCpus": mostly(st.integers(min_value=0, max_value=8_000_000_000), WILD_INTS),
            "Memory": ints(0, 2**40),
            "IOMaximumBandwidth": ints(0, 2**40),
            "IOMaximumIOps": ints(0, 2**20),
            "ConsoleSize": st.tuples(ints(0, 500), ints(0, 500)),
        },
    ),
    cpus=ints(1, 8),
    lcow=st.booleans(),
)
def test_resources_give_spec_or_permanent_error(
    isolation: str, node_isolation: str, resources: dict[str, Any], cpus: int, lcow: bool
) -> None:
    """S16–S20: any CPU, memory, storage and console numbers give a valid spec or an error."""
    base = lcow_request() if lcow else windows_request()
    request = merge(
        base,
        {
            "container": {
                "HostConfig": {"Isolation": isolation, **resources},
                "Config": {"Tty": True},
            },
            "node": {"cpuCount": cpus, "defaultIsolation": node_isolation},
        },
    )
    spec = _outcome(json.dumps(request).encode())
    if spec is not None:
        check_spec_bytes(spec)


@settings(max_examples=200, deadline=None)
@given(
    adds=st.one_of(st.none(), st.lists(CAPABILITY, max_size=3)),
    drops=st.one_of(st.none(), st.lists(CAPABILITY, max_size=3)),
    explicit=st.one_of(st.none(), st.lists(CAPABILITY, max_size=3)),
    privileged=st.booleans(),
    rules=st.one_of(st.none(), st.lists(CGROUP_RULE, max_size=3)),
)
def test_lcow_capabilities_and_rules_give_spec_or_permanent_error(
    adds: list[str] | None,
    drops: list[str] | None,
    explicit: list[str] | None,
    privileged: bool,
    rules: list[str] | None,
) -> None:
    """S30, S31: any capability options and device cgroup rules give a valid spec or an error."""
    request = merge(
        lcow_request(),
        {
            "container": {
                "HostConfig": {
                    "CapAdd": adds,
                    "CapDrop": drops,
                    "Capabilities": explicit,
                    "Privileged": privileged,
                    "DeviceCgroupRules": rules,
                }
            }
        },
    )
    spec = _outcome(json.dumps(request).encode())
    if spec is None:
        return
    check_spec_bytes(spec)
    linux = json.loads(spec)["linux"]
    assert len(linux["resources"].get("devices", [])) == len(rules or [])


@settings(max_examples=200, deadline=None)
@given(devices=st.lists(DEVICE_PATH, max_size=4), build=st.sampled_from([17134, 17763, 20348]))
def test_devices_give_spec_or_permanent_error(devices: list[str], build: int) -> None:
    """S27, S28: any device paths give one device each in order, or a PermanentError."""
    request = merge(
        _windows_with(Devices=[{"PathOnHost": d} for d in devices]),
        {"node": {"windowsBuild": build}},
    )
    spec = _outcome(json.dumps(request).encode())
    if spec is None:
        return
    check_spec_bytes(spec)
    written = json.loads(spec)["windows"].get("devices", [])
    assert len(written) == len(devices)
