"""Tests of LocalBundleWriter: layout, modes, skipping unchanged content, atomic replacement,
removal, listing, the start-up sweep and the refusal of bad ids and file names."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from adapters.bundles import local
from adapters.bundles.local import (
    BundleMetricsHook,
    LocalBundleWriter,
    atomic_replace_supported,
    remove_bundle_sync,
    write_bundle_sync,
)
from controller.bundle import BundleContent
from controller.errors import PermanentError, TransientError

BUNDLE_ID = "3f" * 32
OTHER_ID = "web-1"

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX modes and directory handles")


WriterFactory = Callable[..., LocalBundleWriter]


@pytest.fixture
def make_writer() -> Iterator[WriterFactory]:
    """Builds writers and closes them (their fsync threads) after the test."""
    writers: list[LocalBundleWriter] = []

    def make(root: Path, *, metrics_hook: BundleMetricsHook | None = None) -> LocalBundleWriter:
        writers.append(LocalBundleWriter(root, metrics_hook=metrics_hook))
        return writers[-1]

    yield make
    for writer in writers:
        writer.close()


def _content(version: int = 0, *, secret: str = "s1", config: str | None = "c1") -> BundleContent:
    spec = {"ociVersion": "1.1.0", "version": version, "padding": "x" * 3000}
    files = {
        "config.json": json.dumps(spec).encode(),
        "links.json": json.dumps({"links": [{"version": version}]}).encode(),
        f"secrets/{secret}": f"secret {version}".encode(),
    }
    if config is not None:
        files[f"configs/{config}"] = f"config {version}".encode()
    return BundleContent(files=files)


def _tree(bundle: Path) -> dict[str, bytes]:
    return {
        path.relative_to(bundle).as_posix(): path.read_bytes()
        for path in bundle.rglob("*")
        if path.is_file()
    }


def _expected_tree(content: BundleContent) -> dict[str, bytes]:
    return {**content.files, ".digest": f"{content.digest}\n".encode()}


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

    assert _tree(root / BUNDLE_ID) == _expected_tree(content)
    assert os.listdir(root) == [BUNDLE_ID]


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


async def test_changed_content_replaces_the_whole_bundle(
    tmp_path: Path, make_writer: WriterFactory
) -> None:
    """New content replaces the bundle: files it no longer has disappear, nothing is left over."""
    writer = make_writer(tmp_path)
    await writer.write(BUNDLE_ID, _content(1, secret="old", config="gone"))
    new = _content(2, secret="new", config=None)

    assert await writer.write(BUNDLE_ID, new) is True

    assert _tree(tmp_path / BUNDLE_ID) == _expected_tree(new)
    assert os.listdir(tmp_path) == [BUNDLE_ID]


async def test_rename_aside_fallback_replaces_the_bundle(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_writer: WriterFactory,
) -> None:
    """Without an atomic exchange the old bundle is renamed aside, replaced, then deleted."""
    monkeypatch.setattr(local, "_exchange", lambda first, second: False)
    writer = make_writer(tmp_path)
    await writer.write(BUNDLE_ID, _content(1))

    assert await writer.write(BUNDLE_ID, _content(2)) is True

    assert _tree(tmp_path / BUNDLE_ID) == _expected_tree(_content(2))
    assert os.listdir(tmp_path) == [BUNDLE_ID]


def _pair_key(config: bytes, links: bytes) -> str:
    return hashlib.sha256(len(config).to_bytes(8, "big") + config + links).hexdigest()


def _read_at(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    with open(fd, "rb") as f:
        return f.read()


@posix_only
def test_concurrent_reader_never_sees_a_missing_or_mixed_bundle(tmp_path: Path) -> None:
    """A reader polling config.json and links.json through 200 rewrites sees whole versions only.

    By path, config.json is always there and complete. Read through one directory handle (the
    documented way to read several files of one version), the pair always matches one written
    version, and versions never go backwards.
    """
    if not atomic_replace_supported(tmp_path):
        pytest.skip("this file system cannot swap directories atomically")
    contents = [_content(n) for n in range(201)]
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
                pair = _pair_key(_read_at(dir_fd, "config.json"), _read_at(dir_fd, "links.json"))
            except FileNotFoundError:
                # Only acceptable when this version has been replaced and is being deleted.
                if os.fstat(dir_fd).st_ino == os.stat(live).st_ino:
                    problems.append("file missing from the live bundle")
                else:
                    superseded += 1
                continue
            finally:
                os.close(dir_fd)
            if pair in version_of:
                seen.append(version_of[pair])
            else:
                problems.append("mixed or partial bundle")

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
    assert os.listdir(tmp_path) == []
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
    assert sorted(os.listdir(tmp_path)) == sorted(["README", BUNDLE_ID])
    assert _tree(tmp_path / BUNDLE_ID) == _expected_tree(_content())
    assert await writer.sweep({BUNDLE_ID}) == []


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
    assert os.listdir(tmp_path) == []


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
    assert os.listdir(tmp_path) == []


async def test_file_system_failures_are_transient(
    tmp_path: Path, make_writer: WriterFactory
) -> None:
    """A root that cannot be a directory makes write raise TransientError from the OSError."""
    root = tmp_path / "bundles"
    root.write_bytes(b"a file where the root should be")

    with pytest.raises(TransientError) as caught:
        await make_writer(root).write(BUNDLE_ID, _content())
    assert isinstance(caught.value.__cause__, OSError)


async def test_metrics_hook_sees_every_outcome(tmp_path: Path, make_writer: WriterFactory) -> None:
    """The hook is called with written, unchanged, removed, absent and failed, and a duration."""
    calls: list[tuple[str, float]] = []
    writer = make_writer(tmp_path, metrics_hook=lambda outcome, s: calls.append((outcome, s)))

    await writer.write(BUNDLE_ID, _content())
    await writer.write(BUNDLE_ID, _content())
    await writer.remove(BUNDLE_ID)
    await writer.remove(BUNDLE_ID)
    with pytest.raises(PermanentError):
        await writer.write("../x", _content())

    assert [outcome for outcome, _ in calls] == [
        "written",
        "unchanged",
        "removed",
        "absent",
        "failed",
    ]
    assert all(seconds >= 0 for _, seconds in calls)


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

    monkeypatch.setattr(local, "write_bundle_sync", slow_write)
    writer = make_writer(tmp_path)
    first = asyncio.create_task(writer.write(BUNDLE_ID, _content()))
    await asyncio.to_thread(started.wait, 10)
    first.cancel()
    second = asyncio.create_task(writer.write(BUNDLE_ID, _content()))
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
    assert _tree(tmp_path / BUNDLE_ID) == _expected_tree(_content())


async def test_failed_write_keeps_the_old_bundle_and_no_leftovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_writer: WriterFactory
) -> None:
    """When an fsync fails the old bundle stays whole, the write is transient, nothing is left."""
    writer = make_writer(tmp_path)
    await writer.write(BUNDLE_ID, _content(1))

    def failing_fsync(path: Path) -> None:
        raise OSError(5, "I/O error", str(path))

    monkeypatch.setattr(local, "_fsync_file", failing_fsync)
    with pytest.raises(TransientError):
        await writer.write(BUNDLE_ID, _content(2))

    assert _tree(tmp_path / BUNDLE_ID) == _expected_tree(_content(1))
    assert os.listdir(tmp_path) == [BUNDLE_ID]
