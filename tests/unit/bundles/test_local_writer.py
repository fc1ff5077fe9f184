"""Tests of LocalBundleWriter: layout, modes, skipping unchanged content, atomic replacement,
payload directories carried over, crash states, removal, listing, the start-up sweep and the
refusal of bad ids and file names."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import shutil
import stat
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from adapters.bundles import fsops, local
from adapters.bundles.local import (
    DIGEST_FILE,
    KEY_FILE,
    LocalBundleWriter,
    atomic_replace_supported,
    find_drift,
    remove_bundle_sync,
    write_bundle_sync,
)
from adapters.bundles.namespaced import NamespacedBundleWriter
from controller.bundle import BundleContent, WriteOutcome, drift_of
from controller.errors import PermanentError, TransientError

BUNDLE_ID = "3f" * 32
OTHER_ID = "web-1"
#: The longest Kubernetes object name (a DNS-1123 subdomain): 253 characters.
LONGEST_ID = ".".join(["a" * 63] * 3 + ["b" * 61])

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX modes and directory handles")


WriterFactory = Callable[..., LocalBundleWriter]


@pytest.fixture
def make_writer() -> Iterator[WriterFactory]:
    """Builds writers and closes them (their fsync threads) after the test."""
    writers: list[LocalBundleWriter] = []

    def make(root: Path) -> LocalBundleWriter:
        writers.append(LocalBundleWriter(root))
        return writers[-1]

    yield make
    for writer in writers:
        writer.close()


def _content(
    version: int = 0,
    *,
    secret: str = "s1",
    config: str | None = "c1",
    secret_data: str | None = None,
    config_data: str | None = None,
) -> BundleContent:
    """A bundle whose every file depends on ``version``, unless a payload's data is given."""
    spec = {"ociVersion": "1.1.0", "version": version, "padding": "x" * 3000}
    files = {
        "config.json": json.dumps(spec).encode(),
        "links.json": json.dumps({"links": [{"version": version}]}).encode(),
        f"secrets/{secret}": (secret_data or f"secret {version}").encode(),
    }
    if config is not None:
        files[f"configs/{config}"] = (config_data or f"config {version}").encode()
    return BundleContent(files=files)


def _config_only(version: int) -> BundleContent:
    """Versions that differ in config.json and links.json only, as after a container's start."""
    return _content(version, secret_data="fixed secret", config_data="fixed config")


def _tree(bundle: Path) -> dict[str, bytes]:
    return {
        path.relative_to(bundle).as_posix(): path.read_bytes()
        for path in bundle.rglob("*")
        if path.is_file()
    }


def _expected_tree(content: BundleContent, root: Path) -> dict[str, bytes]:
    digest = content.keyed_digest((root / KEY_FILE).read_bytes())
    return {**content.files, ".digest": f"{digest}\n".encode()}


def _entries(root: Path) -> list[str]:
    """The entries of a bundle root but its digest key, sorted."""
    return sorted(name for name in os.listdir(root) if name != KEY_FILE)


def _snapshot(bundle: Path) -> dict[str, tuple[int, int, int]]:
    return {
        path.relative_to(bundle).as_posix(): (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        for path in [bundle, *bundle.rglob("*")]
        for st in [path.stat()]
    }


async def test_write_creates_the_layout_byte_for_byte(
    tmp_path: Path, make_writer: WriterFactory
) -> None:
    """A first write creates exactly the content's files plus .digest, and no leftovers."""
    root = tmp_path / "bundles"
    content = _content()

    assert await make_writer(root).write(BUNDLE_ID, content) is True

    assert _tree(root / BUNDLE_ID) == _expected_tree(content, root)
    assert _entries(root) == [BUNDLE_ID]


@posix_only
async def test_written_files_and_directories_are_owner_only(
    tmp_path: Path, make_writer: WriterFactory
) -> None:
    """Every file of a bundle is mode 0600 and every directory, the root included, 0700."""
    root = tmp_path / "bundles"
    await make_writer(root).write(BUNDLE_ID, _content())

    bundle = root / BUNDLE_ID
    for path in [root, bundle, *bundle.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path


async def test_same_content_is_not_rewritten(tmp_path: Path, make_writer: WriterFactory) -> None:
    """Writing the same content again returns False and touches no file (inode, mtime, ctime)."""
    writer = make_writer(tmp_path)
    await writer.write(BUNDLE_ID, _content())
    before = _snapshot(tmp_path / BUNDLE_ID)

    assert await writer.write(BUNDLE_ID, _content()) is False

    assert _snapshot(tmp_path / BUNDLE_ID) == before


@pytest.fixture
def disk_writer(tmp_path: Path, make_writer: WriterFactory) -> LocalBundleWriter:
    """A writer of ``tmp_path``; the test is skipped unless that is on a local disk's file system,
    where the writer works on the loop."""
    if fsops.filesystem_type(tmp_path) not in fsops.SYNCFS_FILESYSTEMS:
        pytest.skip(f"{tmp_path} is not on a local disk's file system")
    return make_writer(tmp_path)


def _count_thread_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of every function the writer hands to a thread (and still run it)."""
    calls: list[str] = []
    real = local._in_thread

    async def counted(fn: Callable[..., object], /, *args: object, **kwargs: object) -> object:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(local, "_in_thread", counted)
    return calls


async def test_an_up_to_date_bundle_on_a_local_disk_is_checked_without_a_thread(
    monkeypatch: pytest.MonkeyPatch, disk_writer: LocalBundleWriter
) -> None:
    """On a local disk an unchanged write is checked on the loop; a changed one goes to a thread."""
    writer = disk_writer
    await writer.write(BUNDLE_ID, _content())
    calls = _count_thread_calls(monkeypatch)

    assert await writer.write(BUNDLE_ID, _content()) is False
    assert calls == []
    assert await writer.write(BUNDLE_ID, _content(1)) is True
    assert calls == ["write_bundle_outcome_sync"]


async def test_a_new_bundle_on_a_local_disk_is_built_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disk_writer: LocalBundleWriter
) -> None:
    """On a local disk a new bundle is built without a thread call, behind two shared barriers."""
    syncs: list[str] = []
    real = fsops.syncfs
    monkeypatch.setattr(fsops, "syncfs", lambda path: (syncs.append("syncfs"), real(path))[1])
    writer = disk_writer
    await writer.write(OTHER_ID, _content())  # makes the root and its key
    calls = _count_thread_calls(monkeypatch)
    syncs.clear()
    content = _content(1, secret="s2", config="c2")

    results = await asyncio.gather(
        writer.write(BUNDLE_ID, content), writer.write(LONGEST_ID, content)
    )

    assert results == [True, True]
    assert calls == []
    assert 2 <= len(syncs) <= 4  # two barriers each, shared where they met
    for bundle_id in (BUNDLE_ID, LONGEST_ID):
        assert _tree(tmp_path / bundle_id) == _expected_tree(content, tmp_path)
    assert _entries(tmp_path) == sorted([OTHER_ID, BUNDLE_ID, LONGEST_ID])


async def test_a_bundle_appearing_while_a_new_one_is_built_is_left_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disk_writer: LocalBundleWriter
) -> None:
    """Something appearing at a new bundle's path fails the write, leaves nothing; a retry works."""
    writer = disk_writer
    await writer.write(OTHER_ID, _content())
    real = writer._make_durable

    async def intruding(syncs: list[Callable[[], None]]) -> None:
        (tmp_path / BUNDLE_ID).mkdir(exist_ok=True)
        (tmp_path / BUNDLE_ID / "config.json").write_text("{}")
        await real(syncs)

    monkeypatch.setattr(writer, "_make_durable", intruding)
    with pytest.raises(TransientError, match=BUNDLE_ID):
        await writer.write(BUNDLE_ID, _content())
    assert _entries(tmp_path) == sorted([OTHER_ID, BUNDLE_ID])
    assert _tree(tmp_path / BUNDLE_ID) == {"config.json": b"{}"}

    monkeypatch.undo()
    assert await writer.write(BUNDLE_ID, _content()) is True
    assert _tree(tmp_path / BUNDLE_ID) == _expected_tree(_content(), tmp_path)
    assert _entries(tmp_path) == sorted([OTHER_ID, BUNDLE_ID])


async def test_elsewhere_even_an_up_to_date_bundle_is_checked_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_writer: WriterFactory
) -> None:
    """On a file system that is not a local disk's (FUSE here), the loop never reads a bundle."""
    monkeypatch.setattr(fsops, "filesystem_type", lambda path: 0x65735546)  # FUSE_SUPER_MAGIC
    writer = make_writer(tmp_path)
    await writer.write(BUNDLE_ID, _content())
    calls = _count_thread_calls(monkeypatch)

    assert await writer.write(BUNDLE_ID, _content()) is False
    assert calls == ["write_bundle_outcome_sync"]


async def test_changed_content_replaces_the_whole_bundle(
    tmp_path: Path, make_writer: WriterFactory
) -> None:
    """New content replaces the bundle: files it no longer has disappear, nothing is left over."""
    writer = make_writer(tmp_path)
    await writer.write(BUNDLE_ID, _content(1, secret="old", config="gone"))
    new = _content(2, secret="new", config=None)

    assert await writer.write(BUNDLE_ID, new) is True

    assert _tree(tmp_path / BUNDLE_ID) == _expected_tree(new, tmp_path)
    assert _entries(tmp_path) == [BUNDLE_ID]


async def test_rename_aside_fallback_replaces_the_bundle(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_writer: WriterFactory,
) -> None:
    """Without an atomic exchange the old bundle is renamed aside, replaced, then deleted."""
    monkeypatch.setattr(fsops, "exchange", lambda first, second: False)
    writer = make_writer(tmp_path)
    await writer.write(BUNDLE_ID, _content(1))

    assert await writer.write(BUNDLE_ID, _content(2)) is True

    assert _tree(tmp_path / BUNDLE_ID) == _expected_tree(_content(2), tmp_path)
    assert _entries(tmp_path) == [BUNDLE_ID]


def _pair_key(config: bytes, links: bytes) -> str:
    return hashlib.sha256(len(config).to_bytes(8, "big") + config + links).hexdigest()


def _read_at(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    with open(fd, "rb") as f:
        return f.read()


@posix_only
@pytest.mark.parametrize("make_version", [_content, _config_only], ids=["payloads", "config"])
def test_concurrent_reader_never_sees_a_missing_or_mixed_bundle(
    tmp_path: Path, make_version: Callable[[int], BundleContent]
) -> None:
    """A reader polling a bundle through 200 rewrites sees whole versions only."""
    # By path, config.json is always there and complete. Read through one directory handle (the
    # documented way to read several files of one version), config.json, links.json and the
    # secret always match one written version, and versions never go backwards; this holds when
    # the payloads are written fresh and when they are carried over (config-only rewrites).
    if not atomic_replace_supported(tmp_path):
        pytest.skip("this file system cannot swap directories atomically")
    contents = [make_version(n) for n in range(201)]
    version_of = {
        _pair_key(c.files["config.json"], c.files["links.json"]): n for n, c in enumerate(contents)
    }
    configs = {c.files["config.json"] for c in contents}
    live = tmp_path / BUNDLE_ID
    write_bundle_sync(tmp_path, BUNDLE_ID, contents[0])
    stop = threading.Event()
    problems: list[str] = []
    seen: list[int] = []
    superseded = 0

    def read_until_stopped() -> None:
        nonlocal superseded
        while not stop.is_set():
            try:
                if (live / "config.json").read_bytes() not in configs:
                    problems.append("config.json read by path is partial")
                dir_fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError as exc:
                problems.append(f"missing by path: {exc}")
                continue
            try:
                read = _read_version(dir_fd)
            finally:
                os.close(dir_fd)
            if read is None:
                superseded += 1
            elif read[0] not in version_of:
                problems.append("mixed or partial bundle")
            elif read[1] != contents[version_of[read[0]]].files["secrets/s1"]:
                problems.append("a secret of another version")
            else:
                seen.append(version_of[read[0]])

    def _read_version(dir_fd: int) -> tuple[str, bytes] | None:
        """The pair key and secret behind ``dir_fd``; None once that version is superseded."""
        for _ in range(3):
            try:
                pair = _pair_key(_read_at(dir_fd, "config.json"), _read_at(dir_fd, "links.json"))
                return pair, _read_at(dir_fd, "secrets/s1")
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ELOOP):
                    raise
                # Only acceptable when this version has been replaced and is being deleted,
                # or (ELOOP, then a retry succeeds) when the lookup followed a stand-in just
                # as it was exchanged with its original.
                if os.fstat(dir_fd).st_ino != os.stat(live).st_ino:
                    return None
                if exc.errno == errno.ENOENT:
                    break
        problems.append("file missing from the live bundle")
        return None

    reader = threading.Thread(target=read_until_stopped)
    reader.start()
    try:
        with ThreadPoolExecutor(8) as fsyncs:
            for content in contents[1:]:
                written = write_bundle_sync(tmp_path, BUNDLE_ID, content, fsync_executor=fsyncs)
                assert written is True
    finally:
        stop.set()
        reader.join()

    assert problems == []
    assert seen == sorted(seen)
    assert len(set(seen)) >= 2, f"reader saw too little to mean anything: {len(seen)} reads"


async def test_remove_deletes_the_bundle_once(tmp_path: Path, make_writer: WriterFactory) -> None:
    """remove deletes the whole bundle and returns True, then False when there is none."""
    writer = make_writer(tmp_path)
    await writer.write(BUNDLE_ID, _content())

    assert await writer.remove(BUNDLE_ID) is True
    assert _entries(tmp_path) == []
    assert await writer.remove(BUNDLE_ID) is False


async def test_list_ids_ignores_temporary_and_foreign_entries(
    tmp_path: Path, make_writer: WriterFactory
) -> None:
    """list_ids lists bundle directories only: no temp or old dirs, stray files or bad names."""
    writer = make_writer(tmp_path)
    await writer.write(BUNDLE_ID, _content())
    await writer.write(OTHER_ID, _content())
    (tmp_path / f".tmp-{BUNDLE_ID}-abcd1234").mkdir()
    (tmp_path / f".old-{OTHER_ID}-0000ffff").mkdir()
    (tmp_path / "Upper").mkdir()
    (tmp_path / "stray-file").write_bytes(b"")

    assert await writer.list_ids() == sorted([BUNDLE_ID, OTHER_ID])


async def test_list_ids_of_a_missing_root_is_empty(
    tmp_path: Path, make_writer: WriterFactory
) -> None:
    """A root that does not exist yet holds no bundles (and is not created by listing)."""
    assert await make_writer(tmp_path / "absent").list_ids() == []
    assert not (tmp_path / "absent").exists()


async def test_sweep_removes_dead_bundles_and_leftovers(
    tmp_path: Path, make_writer: WriterFactory
) -> None:
    """sweep deletes bundles that are not live and every .tmp-/.old- leftover, nothing else."""
    writer = make_writer(tmp_path)
    await writer.write(BUNDLE_ID, _content())
    await writer.write(OTHER_ID, _content())
    partial = tmp_path / f".tmp-{BUNDLE_ID}-abcd1234"
    (partial / "secrets").mkdir(parents=True)
    (partial / "secrets" / "s1").write_bytes(b"half")
    (tmp_path / f".old-{OTHER_ID}-0000ffff").mkdir()
    (tmp_path / ".tmp-garbage").write_bytes(b"")
    (tmp_path / "README").write_bytes(b"not ours")

    removed = await writer.sweep({BUNDLE_ID})

    assert removed == sorted(
        [OTHER_ID, f".tmp-{BUNDLE_ID}-abcd1234", f".old-{OTHER_ID}-0000ffff", ".tmp-garbage"]
    )
    assert _entries(tmp_path) == sorted(["README", BUNDLE_ID])
    assert _tree(tmp_path / BUNDLE_ID) == _expected_tree(_content(), tmp_path)
    assert await writer.sweep({BUNDLE_ID}) == []


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "rename aside"])
async def test_the_longest_id_is_written_replaced_removed_and_swept(
    tmp_path: Path, fallback: bool, monkeypatch: pytest.MonkeyPatch, make_writer: WriterFactory
) -> None:
    """A 253-character id gets its bundle: written, replaced, removed; its leftovers swept."""
    assert len(LONGEST_ID) == 253
    if fallback:
        monkeypatch.setattr(fsops, "_renameat2", None)
    writer = make_writer(tmp_path)
    assert await writer.write(LONGEST_ID, _content(1)) is True
    assert await writer.write(LONGEST_ID, _content(2)) is True  # every payload changed
    assert await writer.write(LONGEST_ID, _content(2)) is False
    assert _tree(tmp_path / LONGEST_ID) == _expected_tree(_content(2), tmp_path)
    assert _entries(tmp_path) == [LONGEST_ID]
    assert await writer.list_ids() == [LONGEST_ID]

    # What a crash of either kind would leave, named as the writer names them.
    tag = local.leftover_tag(LONGEST_ID)
    leftovers = [f".tmp-{tag}-abcd_123", f".old-{tag}-0000ffff"]
    for name in leftovers:
        assert len(name.encode()) <= 255
        (tmp_path / name).mkdir()
    assert await writer.sweep({LONGEST_ID}) == sorted(leftovers)
    assert await writer.remove(LONGEST_ID) is True
    assert _entries(tmp_path) == []


async def test_a_sweep_beside_writers_keeps_every_bundle_they_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A namespaced sweep deletes leftovers only: a bundle published while it runs stays."""
    writers = NamespacedBundleWriter(tmp_path, fsync_threads=0)
    await writers.write(f"ns/{BUNDLE_ID}", _content())
    (tmp_path / "ns" / f".tmp-{OTHER_ID}-abcd1234").mkdir()
    real = local._sweep_candidates

    def published_meanwhile(root: Path, *args: object) -> object:
        # A worker publishes a new bundle after the sweep began, before it scans the directory.
        write_bundle_sync(root, OTHER_ID, _content(1))
        return real(root, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(local, "_sweep_candidates", published_meanwhile)

    assert await writers.sweep() == [f"ns/.tmp-{OTHER_ID}-abcd1234"]

    assert _entries(tmp_path / "ns") == sorted([BUNDLE_ID, OTHER_ID])
    assert _tree(tmp_path / "ns" / OTHER_ID) == _expected_tree(_content(1), tmp_path / "ns")
    writers.close()


async def test_a_scoped_sweep_leaves_what_it_does_not_own(
    tmp_path: Path, make_writer: WriterFactory
) -> None:
    """sweep with ``owned`` touches neither other ids' bundles nor their leftovers."""
    writer = make_writer(tmp_path)
    for bundle_id in (BUNDLE_ID, OTHER_ID, LONGEST_ID):
        await writer.write(bundle_id, _content())
    theirs = [f".tmp-{OTHER_ID}-abcd1234", f".tmp-{local.leftover_tag(LONGEST_ID)}-abcd1234"]
    mine = f".old-{BUNDLE_ID}-0000ffff"
    for name in [*theirs, mine]:
        (tmp_path / name).mkdir()

    assert await writer.sweep(set(), owned={BUNDLE_ID}) == sorted([BUNDLE_ID, mine])
    assert _entries(tmp_path) == sorted([OTHER_ID, LONGEST_ID, *theirs])


BAD_IDS = [
    "../x",
    "a/b",
    "",
    ".",
    "..",
    "ABC",
    "Web-1",
    "A" * 64,
    "x" * 300,
    "a.." + "b" * 10,
    "-leading-dash",
]


@pytest.mark.parametrize("bad_id", BAD_IDS)
async def test_invalid_bundle_ids_are_refused_before_any_path(
    tmp_path: Path, bad_id: str, make_writer: WriterFactory
) -> None:
    """A bad id raises PermanentError from every entry point and nothing is created anywhere."""
    root = tmp_path / "bundles"
    writer = make_writer(root)

    attempts: list[Callable[[], Awaitable[bool]]] = [
        lambda: writer.write(bad_id, _content()),
        lambda: writer.remove(bad_id),
    ]
    for attempt in attempts:
        try:
            await attempt()
        except PermanentError:
            pass
        else:
            raise AssertionError(f"{bad_id!r} was accepted")
    with pytest.raises(PermanentError):
        write_bundle_sync(root, bad_id, _content())
    with pytest.raises(PermanentError):
        remove_bundle_sync(root, bad_id)
    assert _entries(tmp_path) == []


BAD_FILES: list[dict[str, bytes]] = [
    {"config.json": b"{}", "/etc/passwd": b"x"},
    {"config.json": b"{}", "../escape": b"x"},
    {"config.json": b"{}", "secrets/../../escape": b"x"},
    {"config.json": b"{}", "secrets/a/b": b"x"},
    {"config.json": b"{}", "secrets/": b"x"},
    {"config.json": b"{}", "secrets/.hidden": b"x"},
    {"config.json": b"{}", "secrets\\..\\x": b"x"},
    {"config.json": b"{}", "C:/x": b"x"},
    {"config.json": b"{}", "other/x": b"x"},
    {"config.json": b"{}", ".digest": b"x"},
    {"config.json": b"{}", "secrets/nul": b"x"},
    {"config.json": b"{}", "configs/COM1.txt": b"x"},
    {"config.json": b"{}", "secrets/trailing.": b"x"},
    {"config.json": b"{}", "secrets/same": b"x", "secrets/SAME": b"y"},
    {"links.json": b"{}"},
]


@pytest.mark.parametrize("files", BAD_FILES, ids=lambda files: "|".join(files))
async def test_path_shaped_file_names_are_refused(
    tmp_path: Path, files: dict[str, bytes], make_writer: WriterFactory
) -> None:
    """A content whose file names leave the known shapes raises PermanentError, creating nothing."""
    with pytest.raises(PermanentError):
        await make_writer(tmp_path / "bundles").write(BUNDLE_ID, BundleContent(files=files))
    assert _entries(tmp_path) == []


async def test_file_system_failures_are_transient(
    tmp_path: Path, make_writer: WriterFactory
) -> None:
    """A root that cannot be a directory makes write and remove raise TransientError."""
    root = tmp_path / "bundles"
    root.write_bytes(b"a file where the root should be")
    writer = make_writer(root)

    with pytest.raises(TransientError) as caught:
        await writer.write(BUNDLE_ID, _content())
    assert isinstance(caught.value.__cause__, OSError)
    with pytest.raises(TransientError) as caught:
        await writer.remove(BUNDLE_ID)
    assert isinstance(caught.value.__cause__, OSError)


async def test_cancelled_write_holds_the_id_until_its_thread_ends(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_writer: WriterFactory,
) -> None:
    """Cancelling a write does not let the next write of the same id run beside its thread."""
    started = threading.Event()
    release = threading.Event()
    lock = threading.Lock()
    running = 0
    most = 0

    def slow_write(root: Path, bundle_id: str, content: BundleContent, **_: object) -> bool:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        started.set()
        release.wait(10)
        with lock:
            running -= 1
        return True

    writer = make_writer(tmp_path)
    await writer.write(BUNDLE_ID, _content())  # a change, not a new bundle: written in a thread
    monkeypatch.setattr(local, "write_bundle_outcome_sync", slow_write)
    first = asyncio.create_task(writer.write(BUNDLE_ID, _content(1)))
    await asyncio.to_thread(started.wait, 10)
    first.cancel()
    second = asyncio.create_task(writer.write(BUNDLE_ID, _content(1)))
    await asyncio.sleep(0.1)
    assert most == 1
    assert not second.done()

    release.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second is True
    assert most == 1


def test_sync_write_without_fsync_threads(tmp_path: Path) -> None:
    """write_bundle_sync with no executor fsyncs serially and writes the same tree."""
    assert write_bundle_sync(tmp_path, BUNDLE_ID, _content()) is True
    assert write_bundle_sync(tmp_path, BUNDLE_ID, _content()) is False
    assert _tree(tmp_path / BUNDLE_ID) == _expected_tree(_content(), tmp_path)


@pytest.mark.parametrize("durability", ["group commit", "fsync"])
async def test_failed_write_keeps_the_old_bundle_and_no_leftovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_writer: WriterFactory, durability: str
) -> None:
    """A failed syncfs or fsync keeps the old bundle whole and leaves nothing; transient."""
    if durability == "fsync":
        monkeypatch.setattr(fsops, "SYNCFS_FILESYSTEMS", frozenset())
    elif fsops.group_sync(tmp_path) is None:
        pytest.skip(f"{tmp_path} is on a file system without the group commit")
    writer = make_writer(tmp_path)
    await writer.write(BUNDLE_ID, _content(1))

    def failing_fsync(path: Path) -> None:
        raise OSError(5, "I/O error", str(path))

    monkeypatch.setattr(fsops, "fsync_file", failing_fsync)
    monkeypatch.setattr(fsops, "syncfs", failing_fsync)
    with pytest.raises(TransientError):
        await writer.write(BUNDLE_ID, _content(2))

    assert _tree(tmp_path / BUNDLE_ID) == _expected_tree(_content(1), tmp_path)
    assert _entries(tmp_path) == [BUNDLE_ID]


def test_payload_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    """A payload file name ending in a newline (``$`` would pass it) is refused; nothing is made."""
    content = BundleContent(files={"config.json": b"{}", "secrets/abc\n": b"x"})

    with pytest.raises(PermanentError):
        write_bundle_sync(tmp_path / "bundles", BUNDLE_ID, content)
    assert _entries(tmp_path) == []


# -- payload directories carried over ------------------------------------------------------------

SWAP_MODES = ["exchange", "fallback"]


def _use(mode: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run with RENAME_EXCHANGE (skip where there is none) or as without it (Windows)."""
    if mode == "fallback":
        monkeypatch.setattr(fsops, "exchange", lambda first, second: False)
    elif not atomic_replace_supported(root):
        pytest.skip("this file system cannot swap directories atomically")


def _inode(path: Path) -> int:
    return os.stat(path).st_ino


def _leftovers(root: Path) -> list[str]:
    return [name for name in _entries(root) if name.startswith((".tmp-", ".old-"))]


@posix_only
@pytest.mark.parametrize("mode", SWAP_MODES)
def test_config_only_rewrite_keeps_the_payload_directories(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config-only rewrite keeps the payload directories; a handle on secrets/ stays valid."""
    # The payload directories keep their inode and their files (nothing is rewritten), so a bind
    # mount of them stays valid; config.json and links.json are the new ones.
    _use(mode, tmp_path, monkeypatch)
    write_bundle_sync(tmp_path, BUNDLE_ID, _config_only(1))
    bundle = tmp_path / BUNDLE_ID
    secrets_fd = os.open(bundle / "secrets", os.O_RDONLY | os.O_DIRECTORY)
    try:
        files_before = {p.name: _inode(p) for p in (bundle / "secrets").iterdir()}
        configs_before = _inode(bundle / "configs")

        assert write_bundle_sync(tmp_path, BUNDLE_ID, _config_only(2)) is True

        assert os.fstat(secrets_fd).st_ino == os.lstat(bundle / "secrets").st_ino
        assert _read_at(secrets_fd, "s1") == b"fixed secret"
        assert {p.name: _inode(p) for p in (bundle / "secrets").iterdir()} == files_before
        assert os.lstat(bundle / "configs").st_ino == configs_before
    finally:
        os.close(secrets_fd)
    assert _tree(bundle) == _expected_tree(_config_only(2), tmp_path)
    assert _leftovers(tmp_path) == []


@posix_only
@pytest.mark.parametrize("mode", SWAP_MODES)
def test_a_changed_payload_set_is_written_fresh(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A changed secret gets a new secrets/ with the new bytes; the unchanged configs/ is kept."""
    _use(mode, tmp_path, monkeypatch)
    bundle = tmp_path / BUNDLE_ID
    write_bundle_sync(tmp_path, BUNDLE_ID, _content(1, secret_data="old", config_data="same"))
    secrets_before = _inode(bundle / "secrets")
    configs_before = _inode(bundle / "configs")
    new = _content(2, secret_data="new", config_data="same")

    assert write_bundle_sync(tmp_path, BUNDLE_ID, new) is True

    assert (bundle / "secrets" / "s1").read_bytes() == b"new"
    assert _inode(bundle / "secrets") != secrets_before
    assert os.lstat(bundle / "configs").st_ino == configs_before
    assert _tree(bundle) == _expected_tree(new, tmp_path)
    assert _leftovers(tmp_path) == []


class _CrashError(Exception):
    """Stands for the process dying at that point: nothing after it runs."""


def _crash_on_call(monkeypatch: pytest.MonkeyPatch, name: str, number: int) -> None:
    """Make call ``number`` (from 1) of ``fsops.<name>`` raise _CrashError instead of running."""
    real = getattr(fsops, name)
    calls = 0

    def crashing(*args: object) -> object:
        nonlocal calls
        calls += 1
        if calls == number:
            raise _CrashError(name)
        return real(*args)

    monkeypatch.setattr(fsops, name, crashing)


@posix_only
@pytest.mark.parametrize("bundle_id", [BUNDLE_ID, LONGEST_ID], ids=["container id", "longest"])
@pytest.mark.parametrize("repair", ["sweep", "next write"])
async def test_crash_between_swap_and_payload_exchange_is_repaired(
    tmp_path: Path,
    repair: str,
    bundle_id: str,
    monkeypatch: pytest.MonkeyPatch,
    make_writer: WriterFactory,
) -> None:
    """Stopped between the swap and the payload exchange, the bundle is whole, then repaired."""
    # The new version is in place and its secrets/ (a stand-in) leads to the original files; the
    # sweep, or the next write of the bundle, puts the original directory back: same inode, no
    # leftovers.
    _use("exchange", tmp_path, monkeypatch)
    bundle = tmp_path / bundle_id
    write_bundle_sync(tmp_path, bundle_id, _config_only(1))
    secrets_before = _inode(bundle / "secrets")
    with monkeypatch.context() as patched:
        _crash_on_call(patched, "exchange", 2)  # 1: the versions, 2: secrets/
        with pytest.raises(_CrashError):
            write_bundle_sync(tmp_path, bundle_id, _config_only(2))

    assert (bundle / "config.json").read_bytes() == _config_only(2).files["config.json"]
    assert (bundle / "secrets").is_symlink()
    assert _inode(bundle / "secrets") == secrets_before
    assert (bundle / "secrets" / "s1").read_bytes() == b"fixed secret"
    leftovers = _leftovers(tmp_path)
    assert len(leftovers) == 1

    writer = make_writer(tmp_path)
    if repair == "sweep":
        assert await writer.sweep({bundle_id}) == leftovers
    else:
        assert await writer.write(bundle_id, _config_only(2)) is False

    assert not (bundle / "secrets").is_symlink()
    assert _inode(bundle / "secrets") == secrets_before
    assert _tree(bundle) == _expected_tree(_config_only(2), tmp_path)
    assert _leftovers(tmp_path) == []


@posix_only
async def test_crash_after_payload_exchange_leaves_a_leftover_the_sweep_deletes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_writer: WriterFactory
) -> None:
    """Stopped before the old version is deleted, the sweep deletes it without touching payloads."""
    _use("exchange", tmp_path, monkeypatch)
    bundle = tmp_path / BUNDLE_ID
    write_bundle_sync(tmp_path, BUNDLE_ID, _config_only(1))
    secrets_before = _inode(bundle / "secrets")
    with monkeypatch.context() as patched:
        patched.setattr(fsops, "discard", lambda path: None)
        write_bundle_sync(tmp_path, BUNDLE_ID, _config_only(2))
    leftovers = _leftovers(tmp_path)
    assert len(leftovers) == 1  # the old version, its secrets/ the spent stand-in

    assert await make_writer(tmp_path).sweep({BUNDLE_ID}) == leftovers

    assert _inode(bundle / "secrets") == secrets_before
    assert _tree(bundle) == _expected_tree(_config_only(2), tmp_path)
    assert _leftovers(tmp_path) == []


@posix_only
def test_a_stand_in_without_its_original_makes_the_next_write_rewrite(tmp_path: Path) -> None:
    """A stand-in whose original is gone is not trusted: the same content is written afresh."""
    bundle = tmp_path / BUNDLE_ID
    write_bundle_sync(tmp_path, BUNDLE_ID, _config_only(1))
    shutil.rmtree(bundle / "secrets")
    os.symlink(f"../.tmp-{BUNDLE_ID}-gone/secrets", bundle / "secrets")

    assert write_bundle_sync(tmp_path, BUNDLE_ID, _config_only(1)) is True

    assert _tree(bundle) == _expected_tree(_config_only(1), tmp_path)
    assert not (bundle / "secrets").is_symlink()
    assert _leftovers(tmp_path) == []


@posix_only
def test_fallback_in_place_update_caught_halfway_is_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without exchange, a config-only rewrite stopped before its .digest leaves whole files."""
    # The payload directories stay as they were, the bundle has no .digest, and the next write is
    # not skipped, even when it asks for the old content back.
    _use("fallback", tmp_path, monkeypatch)
    bundle = tmp_path / BUNDLE_ID
    write_bundle_sync(tmp_path, BUNDLE_ID, _config_only(1))
    secrets_before = _inode(bundle / "secrets")
    real_replace = os.replace

    def crash_on_digest(src: Path, dst: Path) -> None:
        if Path(dst).name == ".digest":
            raise _CrashError("replace .digest")
        real_replace(src, dst)

    with monkeypatch.context() as patched:
        patched.setattr(os, "replace", crash_on_digest)
        with pytest.raises(_CrashError):
            write_bundle_sync(tmp_path, BUNDLE_ID, _config_only(2))

    assert not (bundle / ".digest").exists()
    assert (bundle / "config.json").read_bytes() == _config_only(2).files["config.json"]
    assert _inode(bundle / "secrets") == secrets_before
    assert write_bundle_sync(tmp_path, BUNDLE_ID, _config_only(1)) is True
    assert _tree(bundle) == _expected_tree(_config_only(1), tmp_path)
    assert _inode(bundle / "secrets") == secrets_before
    assert _leftovers(tmp_path) == []


@posix_only
def test_fallback_swap_that_fails_puts_the_old_bundle_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without exchange, a failed rename-in restores the old bundle with its carried directory."""
    _use("fallback", tmp_path, monkeypatch)
    bundle = tmp_path / BUNDLE_ID
    old = _content(1, secret_data="old", config_data="same")
    write_bundle_sync(tmp_path, BUNDLE_ID, old)
    configs_before = _inode(bundle / "configs")
    real_rename = os.rename
    failed = False

    def fail_rename_in_once(src: Path, dst: Path) -> None:
        nonlocal failed
        if Path(src).name.startswith(".tmp-") and Path(dst) == bundle and not failed:
            failed = True
            raise OSError(errno.EIO, "I/O error", str(dst))
        real_rename(src, dst)

    with monkeypatch.context() as patched:
        patched.setattr(os, "rename", fail_rename_in_once)
        with pytest.raises(OSError, match="I/O error"):
            write_bundle_sync(tmp_path, BUNDLE_ID, _content(2, secret_data="new"))

    assert failed
    assert _tree(bundle) == _expected_tree(old, tmp_path)
    assert _inode(bundle / "configs") == configs_before
    assert _leftovers(tmp_path) == []


def _damage(bundle: Path, how: str) -> None:
    """Damage ``bundle`` on disk as a hand edit, a crash or a stray tool would."""
    if how == "edited":
        (bundle / "config.json").write_bytes(b'{"ociVersion": "1.1.0", "edited": true}')
    elif how == "truncated":
        with open(bundle / "secrets" / "s1", "r+b") as f:
            f.truncate(2)
    elif how == "deleted":
        (bundle / "links.json").unlink()
    elif how == "deleted-payloads":
        shutil.rmtree(bundle / "configs")
    elif how == "added":
        (bundle / "secrets" / "stray").write_bytes(b"not ours")
    elif how == "added-top":
        (bundle / "notes.txt").write_bytes(b"not ours")
    elif how == "replaced-by-link":
        (bundle / "config.json").unlink()
        (bundle / "config.json").symlink_to(bundle / "links.json")
    elif how == "replaced-by-fifo":
        # Its open would wait for a writer if the check did not open without blocking.
        (bundle / "config.json").unlink()
        os.mkfifo(bundle / "config.json")
    elif how == "payloads-linked":
        # The same bytes, but elsewhere: what the directory shows can change behind its back.
        elsewhere = bundle.parent.parent / "elsewhere"
        shutil.copytree(bundle / "secrets", elsewhere)
        shutil.rmtree(bundle / "secrets")
        (bundle / "secrets").symlink_to(elsewhere)


@pytest.mark.parametrize(
    ("how", "kinds"),
    [
        ("edited", {"modified"}),
        ("truncated", {"modified"}),
        ("deleted", {"missing"}),
        ("deleted-payloads", {"missing"}),
        ("added", {"extra"}),
        ("added-top", {"extra"}),
        ("replaced-by-link", {"modified"}),
        ("replaced-by-fifo", {"modified"}),
    ],
)
async def test_drift_under_an_unchanged_digest_is_found_and_repaired(
    tmp_path: Path, make_writer: WriterFactory, how: str, kinds: set[str]
) -> None:
    """Unchanged content over a damaged bundle (its .digest intact) rewrites it whole, says how."""
    writer = make_writer(tmp_path)
    content = _content()
    await writer.write(BUNDLE_ID, content)
    _damage(tmp_path / BUNDLE_ID, how)

    outcome = await writer.write(BUNDLE_ID, content)

    assert outcome == WriteOutcome(changed=True, drift=frozenset(kinds))
    assert _tree(tmp_path / BUNDLE_ID) == _expected_tree(content, tmp_path)
    assert _entries(tmp_path) == [BUNDLE_ID]
    assert await writer.write(BUNDLE_ID, content) is False


@pytest.mark.parametrize("kind", ["fifo", "directory", "link"])
async def test_a_digest_that_is_no_regular_file_is_rewritten_without_blocking(
    tmp_path: Path, make_writer: WriterFactory, kind: str
) -> None:
    """A .digest that is a FIFO, a directory or a link names no content: rewritten, no wait."""
    writer = make_writer(tmp_path)
    await writer.write(BUNDLE_ID, _content())
    digest = tmp_path / BUNDLE_ID / DIGEST_FILE
    kept = digest.read_bytes()
    digest.unlink()
    if kind == "fifo":
        os.mkfifo(digest)
    elif kind == "directory":
        digest.mkdir()
    else:
        (tmp_path / "elsewhere").write_bytes(kept)  # the right digest, but not in the bundle
        digest.symlink_to(tmp_path / "elsewhere")

    assert await asyncio.wait_for(writer.write(BUNDLE_ID, _content()), timeout=10)
    assert _tree(tmp_path / BUNDLE_ID) == _expected_tree(_content(), tmp_path)
    assert await writer.write(BUNDLE_ID, _content()) is False


@pytest.mark.parametrize("where", [DIGEST_FILE, "config.json", "secrets/s1"])
async def test_the_listing_leaves_out_a_bundle_holding_a_fifo_without_waiting_on_it(
    tmp_path: Path, where: str
) -> None:
    """The agent's listing skips a bundle with a FIFO for a file and returns the rest at once."""
    writers = NamespacedBundleWriter(tmp_path, fsync_threads=0)
    await writers.write(f"ns/{BUNDLE_ID}", _content())
    await writers.write(f"ns/{OTHER_ID}", _content(1))
    (tmp_path / "ns" / BUNDLE_ID / where).unlink()
    os.mkfifo(tmp_path / "ns" / BUNDLE_ID / where)

    listed = await asyncio.wait_for(writers.list_digests(), timeout=10)

    assert [key for key, _ in listed] == [f"ns/{OTHER_ID}"]
    kept = writers.kept_digest(f"ns/{BUNDLE_ID}")
    expected = None if where == DIGEST_FILE else kept
    assert await writers.digest_on_disk(f"ns/{BUNDLE_ID}") == expected


async def test_several_kinds_of_drift_are_all_reported(
    tmp_path: Path, make_writer: WriterFactory
) -> None:
    """A bundle edited, missing a file and holding a stray one reports all three kinds."""
    writer = make_writer(tmp_path)
    await writer.write(BUNDLE_ID, _content())
    for how in ("edited", "deleted", "added"):
        _damage(tmp_path / BUNDLE_ID, how)

    outcome = await writer.write(BUNDLE_ID, _content())

    assert drift_of(outcome) == {"modified", "missing", "extra"}
    assert _tree(tmp_path / BUNDLE_ID) == _expected_tree(_content(), tmp_path)


async def test_an_intact_bundle_is_read_back_but_not_touched(
    tmp_path: Path, make_writer: WriterFactory
) -> None:
    """Verification of an intact bundle finds no drift and changes no inode, mtime or ctime."""
    writer = make_writer(tmp_path)
    await writer.write(BUNDLE_ID, _content())
    before = _snapshot(tmp_path / BUNDLE_ID)

    assert find_drift(tmp_path / BUNDLE_ID, _content().files) == frozenset()
    assert await writer.write(BUNDLE_ID, _content()) is False
    assert _snapshot(tmp_path / BUNDLE_ID) == before


@posix_only
def test_reader_never_sees_a_torn_bundle_while_drift_is_repaired(tmp_path: Path) -> None:
    """A reader polling a bundle repaired 200 times sees whole files only, never a missing one."""
    # config.json is edited (atomically, as an editor saves) and repaired each time.
    content = _content()
    intended = content.files["config.json"]
    edit = b'{"edited": true}'
    live = tmp_path / BUNDLE_ID
    write_bundle_sync(tmp_path, BUNDLE_ID, content)
    stop = threading.Event()
    problems: list[str] = []

    def read_until_stopped() -> None:
        while not stop.is_set():
            try:
                data = (live / "config.json").read_bytes()
            except FileNotFoundError:
                problems.append("config.json missing")
                continue
            if data not in (intended, edit):
                problems.append(f"torn config.json: {data[:40]!r}")

    reader = threading.Thread(target=read_until_stopped)
    reader.start()
    try:
        for _ in range(200):
            # The edit itself is atomic (a rename), as an editor saving a file makes it.
            (live / "edit.tmp").write_bytes(edit)
            os.replace(live / "edit.tmp", live / "config.json")
            outcome = local.write_bundle_outcome_sync(tmp_path, BUNDLE_ID, content)
            assert drift_of(outcome) == {"modified"}
    finally:
        stop.set()
        reader.join()
    assert problems == []
    assert _tree(live) == _expected_tree(content, tmp_path)


@pytest.mark.parametrize("how", ["edited", "added-top", "added"])
async def test_drift_is_repaired_without_an_atomic_exchange(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_writer: WriterFactory, how: str
) -> None:
    """Without an exchange a drifted bundle is repaired too, a stray entry included, at once."""
    monkeypatch.setattr(fsops, "exchange", lambda first, second: False)
    writer = make_writer(tmp_path)
    await writer.write(BUNDLE_ID, _content())
    _damage(tmp_path / BUNDLE_ID, how)

    assert drift_of(await writer.write(BUNDLE_ID, _content()))
    assert _tree(tmp_path / BUNDLE_ID) == _expected_tree(_content(), tmp_path)
    assert _entries(tmp_path) == [BUNDLE_ID]
    assert await writer.write(BUNDLE_ID, _content()) is False


async def test_a_linked_payload_directory_is_drift_and_repaired(
    tmp_path: Path, make_writer: WriterFactory
) -> None:
    """A payload directory swapped for a link to the same bytes is drift; a write repairs it."""
    root = tmp_path / "bundles"
    writer = make_writer(root)
    await writer.write(BUNDLE_ID, _content())
    _damage(root / BUNDLE_ID, "payloads-linked")

    assert find_drift(root / BUNDLE_ID, _content().files) == {"modified"}
    assert await writer.write(BUNDLE_ID, _content())
    assert not (root / BUNDLE_ID / "secrets").is_symlink()
    assert _tree(root / BUNDLE_ID) == _expected_tree(_content(), root)
