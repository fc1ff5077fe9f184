"""Readers of bundles on disk, for tests that check no reader ever sees a partial bundle.

:class:`BundleWatch` reads one bundle (``<root>/<namespace>/<name>``, its key in
``<root>/<namespace>/.digest-key``) over and over in a thread; :class:`TreeWatch` does it for
every bundle that appears below a root (the agent's layout). A read that saw one version whole
and found it incomplete or not matching its ``.digest`` is kept as torn.

Each also keeps the versions of a bundle it read: every write puts a new ``.digest`` file in
place (in a new directory swapped in, or replacing the old file in an update in place), so that
file's inode and modification time (:func:`version_of`) name the version. Reads every few
milliseconds can miss a version replaced again before the next read; :meth:`TreeWatch.snapshot`
compares two moments exactly (a bundle written in between is at another version, whatever the
reads missed).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from adapters.bundles.local import DIGEST_FILE, KEY_FILE, TEMP_PREFIX
from controller.bundle import CONFIG_FILE, CONFIGS_DIR, LINKS_FILE, SECRETS_DIR, BundleContent

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)

#: Which version of a bundle is in place: its ``.digest`` file's inode and modification time.
Version = tuple[int, int]


def version_of(bundle: Path, *, dir_fd: int | None = None) -> Version | None:
    """The version of ``bundle`` in place now (None: no bundle, or one without ``.digest``);
    with ``dir_fd``, of the bundle directory open there (``bundle`` is then ignored)."""
    try:
        if dir_fd is None:
            st = os.stat(bundle / DIGEST_FILE)
        else:
            st = os.stat(DIGEST_FILE, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_ino, st.st_mtime_ns)


class _Repeated:
    """Calls :meth:`check` over and over in a thread while the ``with`` block runs."""

    interval = 0.002
    _halt: threading.Event
    _thread: threading.Thread

    def check(self) -> object:
        """One round of reading."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._halt.is_set():
            self.check()
            self._halt.wait(self.interval)


@dataclass
class BundleWatch(_Repeated):
    """A thread reading one bundle over and over; every read that saw one version whole and
    found it incomplete or not matching its ``.digest`` is kept in :attr:`torn`."""

    bundle: Path
    whole: int = 0
    torn: list[str] = field(default_factory=list)
    #: The versions read whole, in the order read, each once.
    versions: list[Version] = field(default_factory=list)

    def check(self) -> str:
        """Read the bundle once; count it as whole, or keep what is wrong with it. The outcome:
        ``whole``, ``torn``, ``absent``, or ``moved`` (replaced while read: proves nothing)."""
        try:
            fd = os.open(self.bundle, _DIR_FLAGS)
        except FileNotFoundError:
            return "absent"  # allowed: never partial is what counts
        try:
            inode = os.fstat(fd).st_ino
            files, digest, extra = _read_version(fd)
            key = (self.bundle.parent / KEY_FILE).read_bytes()
            version = version_of(self.bundle, dir_fd=fd)
        except OSError:
            return "moved"  # this version was swapped out (and deleted) while being read
        finally:
            os.close(fd)
        try:
            if os.stat(self.bundle).st_ino != inode:
                return "moved"  # swapped during the read: files of two versions, not one
        except FileNotFoundError:
            return "moved"
        if extra or CONFIG_FILE not in files or digest is None:
            self.torn.append(f"incomplete: files {sorted(files)}, extra {extra}, .digest {digest}")
            return "torn"
        if BundleContent(files=files).keyed_digest(key) != digest:
            self.torn.append(f"files {sorted(files)} do not match their .digest")
            return "torn"
        self.whole += 1
        if version is not None and version not in self.versions[-1:]:
            self.versions.append(version)
        return "whole"


def _read_at(name: str, fd: int) -> bytes:
    file = os.open(name, os.O_RDONLY, dir_fd=fd)
    try:
        with os.fdopen(file, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(file)


def _read_version(fd: int) -> tuple[dict[str, bytes], str | None, list[str]]:
    """The files of the bundle open at ``fd`` (payload directories followed, stand-ins too),
    its ``.digest``, and any entry a bundle does not have."""
    files: dict[str, bytes] = {}
    digest: str | None = None
    extra: list[str] = []
    for name in os.listdir(fd):
        if name == DIGEST_FILE:
            digest = _read_at(name, fd).decode().strip()
        elif name in (CONFIG_FILE, LINKS_FILE):
            files[name] = _read_at(name, fd)
        elif name in (SECRETS_DIR, CONFIGS_DIR):
            sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                for leaf in os.listdir(sub):
                    files[f"{name}/{leaf}"] = _read_at(leaf, sub)
            finally:
                os.close(sub)
        else:
            extra.append(name)
    return files, digest, extra


@dataclass
class TreeWatch(_Repeated):
    """A thread reading every bundle below ``root`` (``<root>/<namespace>/<name>``) over and
    over, each with its own :class:`BundleWatch`."""

    interval = 0.01
    root: Path
    watches: dict[Path, BundleWatch] = field(default_factory=dict)

    def check(self) -> None:
        """Read every bundle there is once (temporary and hidden entries are not bundles)."""
        for bundle in _bundles(self.root):
            watch = self.watches.setdefault(bundle, BundleWatch(bundle))
            watch.check()

    @property
    def torn(self) -> list[str]:
        """What was wrong with each torn read, naming the bundle."""
        return [f"{path}: {why}" for path, w in self.watches.items() for why in w.torn]

    def whole(self, bundle: Path) -> int:
        """How many whole reads of ``bundle`` there were."""
        watch = self.watches.get(bundle)
        return 0 if watch is None else watch.whole

    def versions(self, bundle: Path) -> list[Version]:
        """The versions of ``bundle`` read whole so far, in the order read."""
        watch = self.watches.get(bundle)
        return [] if watch is None else list(watch.versions)

    def snapshot(self) -> dict[Path, Version]:
        """The version of every bundle below the root now (read directly, not by the thread)."""
        found = {bundle: version_of(bundle) for bundle in _bundles(self.root)}
        return {bundle: version for bundle, version in found.items() if version is not None}


def _bundles(root: Path) -> list[Path]:
    found: list[Path] = []
    try:
        namespaces = [e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
        for ns in namespaces:
            found.extend(
                Path(e.path)
                for e in os.scandir(ns.path)
                if e.is_dir() and not e.name.startswith((".", TEMP_PREFIX))
            )
    except OSError:
        pass  # the root or a namespace directory not there (yet, or any more)
    return found
