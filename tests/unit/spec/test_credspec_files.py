"""The node reader of file:// credential specs against hostile directories (issue 6: 2, 4, 6).

Real files, links, FIFOs, sockets and devices in a temporary directory; a real thread swapping
a directory for a link while the reader reads. Each test runs with the openat walk and with the
open-then-verify fallback that hosts without openat (Windows) use.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import adapters.credspecs as credspecs
from adapters.credspecs import NodeCredentialSpecReader
from controller.credspec import check_file_path
from controller.errors import SpecError, TransientError
from controller.generate import generate
from tests.unit.spec.request_builders import DAEMON_ROOT, decode, windows_request, with_host_config

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX links, FIFOs and sockets")

INSIDE = '{"inside": true}'
OUTSIDE = '{"outside": "the secret"}'


@pytest.fixture(params=["walk", "verify"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the openat walk and with the open-then-verify fallback."""
    if request.param == "verify":
        monkeypatch.setattr(credspecs, "WALK_SUPPORTED", False)
    elif not credspecs.WALK_SUPPORTED:
        pytest.skip("this host has no openat")
    return str(request.param)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """``<root>/CredentialSpecs`` with ``sub/web.json`` inside and a secret file outside."""
    specs = tmp_path / "root" / "CredentialSpecs"
    (specs / "sub").mkdir(parents=True)
    (specs / "sub" / "web.json").write_text(INSIDE, encoding="utf-8")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "web.json").write_text(OUTSIDE, encoding="utf-8")
    return specs


def _read(base: Path, *parts: str, reader: NodeCredentialSpecReader | None = None) -> str:
    return (reader or NodeCredentialSpecReader()).read_file(
        parts, base=str(base), container_id="c1"
    )


def _refusal(base: Path, *parts: str) -> str:
    with pytest.raises(SpecError) as caught:
        _read(base, *parts)
    message = str(caught.value)
    assert "container c1" in message
    assert parts[-1] in message
    return message


@pytest.mark.usefixtures("mode")
def test_reads_a_regular_file_below_the_base(base: Path) -> None:
    """S23: a regular file in a subdirectory of the base is read whole, as UTF-8 text."""
    assert _read(base, "sub", "web.json") == INSIDE


@pytest.mark.usefixtures("mode")
def test_a_base_that_is_a_link_is_followed(base: Path, tmp_path: Path) -> None:
    """S23: the base directory itself is the operator's: a link to it is followed."""
    (tmp_path / "base-link").symlink_to(base)
    assert _read(tmp_path / "base-link", "sub", "web.json") == INSIDE


def _swap_forever(base: Path, outside: Path, stop: threading.Event, swaps: list[int]) -> None:
    """Swap ``sub`` between the real directory and a link to ``outside`` until ``stop``."""
    real, link, sub = base / "sub.dir", base / "sub.link", base / "sub"
    link.symlink_to(outside, target_is_directory=True)
    while not stop.is_set():
        os.rename(sub, real)
        os.rename(link, sub)
        os.rename(sub, link)
        os.rename(real, sub)
        swaps[0] += 1


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("mode")
def test_swapping_a_directory_for_a_link_never_reads_outside(base: Path, tmp_path: Path) -> None:
    """S23: a thread swapping sub/ for a link out of the base never gets the outside read."""
    stop = threading.Event()
    swaps = [0]
    swapper = threading.Thread(
        target=_swap_forever, args=(base, tmp_path / "outside", stop, swaps), daemon=True
    )
    swapper.start()
    outcomes: dict[str, int] = {}
    try:
        for _ in range(2000):
            try:
                outcome = _read(base, "sub", "web.json")
            except SpecError as exc:
                outcome = "refused: " + str(exc).split(": ", 1)[1].split(" (")[0]
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    finally:
        stop.set()
        swapper.join()
    assert OUTSIDE not in outcomes, outcomes
    assert outcomes.get(INSIDE), outcomes  # the reads did happen, in between swaps
    assert swaps[0] > 100, swaps  # and so did the swaps


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("mode")
def test_swapping_the_file_for_a_link_never_reads_outside(base: Path, tmp_path: Path) -> None:
    """S23: the same race on the last component: web.json swapped for a link out of the base."""
    sub = base / "sub"
    (sub / "web.link").symlink_to(tmp_path / "outside" / "web.json")
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(sub / "web.json", sub / "web.real")
            os.rename(sub / "web.link", sub / "web.json")
            os.rename(sub / "web.json", sub / "web.link")
            os.rename(sub / "web.real", sub / "web.json")

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    seen: set[str] = set()
    try:
        for _ in range(2000):
            try:
                seen.add(_read(base, "sub", "web.json"))
            except SpecError:
                seen.add("refused")
    finally:
        stop.set()
        swapper.join()
    assert OUTSIDE not in seen
    assert INSIDE in seen


def test_links_are_refused_naming_the_component(base: Path, tmp_path: Path) -> None:
    """S23: walking, any link below the base is refused by name, even one that stays inside."""
    if not credspecs.WALK_SUPPORTED:
        pytest.skip("this host has no openat")
    (base / "alias").symlink_to(base / "sub", target_is_directory=True)
    (base / "sub" / "alias.json").symlink_to(base / "sub" / "web.json")
    (base / "out.json").symlink_to(tmp_path / "outside" / "web.json")
    assert "alias is a link" in _refusal(base, "alias", "web.json")
    assert "sub/alias.json is a link" in _refusal(base, "sub", "alias.json")
    message = _refusal(base, "out.json")
    assert "out.json is a link" in message
    assert OUTSIDE not in message


def test_without_openat_links_out_of_the_base_are_refused(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S23: open-then-verify: a link that leads out of the base is refused; one inside is read."""
    monkeypatch.setattr(credspecs, "WALK_SUPPORTED", False)
    (base / "alias").symlink_to(base / "sub", target_is_directory=True)
    (base / "out.json").symlink_to(tmp_path / "outside" / "web.json")
    (base / "outdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    assert _read(base, "alias", "web.json") == INSIDE
    for parts in (("out.json",), ("outdir", "web.json")):
        message = _refusal(base, *parts)
        assert "resolves outside" in message
        assert OUTSIDE not in message


@pytest.mark.timeout(10)
@pytest.mark.usefixtures("mode")
def test_a_fifo_is_refused_without_blocking(base: Path) -> None:
    """S23: a FIFO (no writer) is refused at once, as the last component and as a directory."""
    os.mkfifo(base / "pipe.json")
    os.mkfifo(base / "pipe")
    started = time.monotonic()
    assert "is a FIFO, not a regular file" in _refusal(base, "pipe.json")
    message = _refusal(base, "pipe", "web.json")
    assert "not a directory" in message or "Not a directory" in message
    assert time.monotonic() - started < 2


@pytest.mark.usefixtures("mode")
def test_sockets_devices_and_directories_are_refused(base: Path) -> None:
    """S23: a unix socket, a character device and a directory are not credential spec files."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(base / "sock.json"))
        message = _refusal(base, "sock.json")
        # Opened by path (no openat), a socket fails the open itself: ENXIO.
        assert "is a socket, not a regular file" in message or "No such device" in message
    assert "is a directory, not a regular file" in _refusal(base, "sub")
    try:
        os.mknod(base / "null.json", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (PermissionError, OSError):
        return  # creating a device node needs privileges this run does not have
    assert "is a device, not a regular file" in _refusal(base, "null.json")


@pytest.mark.usefixtures("mode")
def test_size_and_encoding_are_bounded(base: Path) -> None:
    """S23: a file over the size limit, or not UTF-8, is refused; exactly the limit is read."""
    reader = NodeCredentialSpecReader(max_bytes=64)
    (base / "limit.json").write_bytes(b"x" * 64)
    (base / "big.json").write_bytes(b"x" * 65)
    (base / "latin1.json").write_bytes(b'{"caf\xe9": 1}')
    assert _read(base, "limit.json", reader=reader) == "x" * 64
    with pytest.raises(SpecError, match=r"big\.json.*larger than 64 bytes"):
        _read(base, "big.json", reader=reader)
    with pytest.raises(SpecError, match=r"latin1\.json.*not UTF-8"):
        _read(base, "latin1.json", reader=reader)


@pytest.mark.usefixtures("mode")
def test_missing_files_are_a_spec_error_naming_the_file(base: Path) -> None:
    """S23: a missing file or directory is a SpecError naming the file, never a raw OSError."""
    assert "no such file" in _refusal(base, "sub", "missing.json")
    assert "no such file" in _refusal(base, "nodir", "missing.json")
    assert "no such file" in _refusal(base / "gone", "web.json")


@pytest.mark.parametrize(
    "parts", [("..", "x.json"), ("a/b.json",), ("a\0b.json",), (".",), ("",), ()]
)
def test_parts_that_are_not_plain_names_are_refused(base: Path, parts: tuple[str, ...]) -> None:
    """S23: the reader refuses parts that are not single plain names (its caller checks too)."""
    with pytest.raises(SpecError, match="not a plain relative path"):
        NodeCredentialSpecReader().read_file(parts, base=str(base), container_id="c1")


@pytest.mark.parametrize("value", ["web\0.json", "sub\\\0", "a\x01b.json", "\x1f"])
def test_nul_and_control_characters_are_refused_by_the_rule(value: str) -> None:
    """S23: a NUL or control character in a file:// value is a SpecError (was a ValueError)."""
    with pytest.raises(SpecError, match="contains a NUL or control character"):
        check_file_path(value, daemon_root=DAEMON_ROOT)
    request = decode(
        with_host_config(windows_request(), SecurityOpt=[f"credentialspec=file://{value}"])
    )
    with pytest.raises(SpecError, match="NUL or control character"):
        generate(request, reader=NodeCredentialSpecReader())


@pytest.fixture
def hanging(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Make every file read hang until the returned event is set (set again at the end)."""
    release = threading.Event()

    def hang(base: str, parts: object, *, max_bytes: int) -> bytes:
        release.wait(30)
        return INSIDE.encode()

    monkeypatch.setattr(credspecs, "read_contained", hang)
    yield release
    release.set()


@pytest.mark.timeout(20)
def test_a_read_that_hangs_times_out_and_stuck_reads_are_capped(
    base: Path, hanging: threading.Event
) -> None:
    """S23: a hanging read is a TransientError after the timeout; past the cap, fails at once."""
    reader = NodeCredentialSpecReader(timeout=0.2, max_unfinished=2)
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(TransientError, match=r"web\.json.*could not be read within 0\.2 s"):
            _read(base, "sub", "web.json", reader=reader)
        assert time.monotonic() - started < 2
    started = time.monotonic()
    with pytest.raises(TransientError, match="2 earlier calls have not ended"):
        _read(base, "sub", "web.json", reader=reader)
    assert time.monotonic() - started < 0.1
    hanging.set()  # the file system answers again: the stuck reads end and free their places
    deadline = time.monotonic() + 5
    while True:
        try:
            assert _read(base, "sub", "web.json", reader=reader) == INSIDE
            break
        except TransientError:
            assert time.monotonic() < deadline
            time.sleep(0.01)
