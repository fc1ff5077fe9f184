"""Cluster mode instances sharing one bundle root, against the real kube-apiserver: each removes
only what its scope (--namespace, --selector) owns; a restart over unchanged resources writes no
status; the longest namespace and name get their bundle.

winspec runs in-process (ClusterMode), several instances at once over one ``--bundle-root``,
with the defaults but for the scope flags each test names.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.bundles.local import DIGEST_FILE
from controller.cluster import FINALIZER
from tests.clustermode import (
    api,
    eventually,
    ready_object,
    running,
    secret,
    server_requests,
    settled,
    wc_path,
    windows_container,
)
from tests.kube import KubeCluster
from tests.processes import clean_env, free_port, winspec_run_command

pytestmark = pytest.mark.kube

#: Resources per namespace: enough that a wrong sweep shows, few enough to be quick.
PER_NAMESPACE = 4


def _labelled(name: str, **labels: str) -> dict[str, Any]:
    body = windows_container(name)
    body["metadata"] = {"name": name, "labels": labels}
    return body


def _tree(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry below ``directory``: inode, and the bytes of files (a rewrite shows)."""
    found: dict[str, tuple[int, bytes]] = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        found[path.relative_to(directory).as_posix()] = (st.st_ino, data)
    return found


async def _namespaces(kube: KubeCluster, *suffixes: str) -> list[str]:
    base = f"s-{secrets.token_hex(3)}"
    names = [f"{base}-{suffix}" for suffix in suffixes]
    for name in names:
        await api(kube, "POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    return names


async def _ready_all(kube: KubeCluster, ns: str, names: list[str]) -> list[dict[str, Any]]:
    return [await eventually(ready_object(kube, ns, n), what=f"{ns}/{n} Ready") for n in names]


def _plant_orphan(root: Path, ns: str, name: str, like: Path) -> Path:
    """A whole bundle of a resource that does not exist (its finalizer was taken off by hand)."""
    orphan = root / ns / name
    shutil.copytree(like, orphan, symlinks=True)
    return orphan


async def test_differently_scoped_instances_keep_each_others_bundles(
    kube: KubeCluster, node: str, tmp_path: Path
) -> None:
    """An instance started beside another's bundles removes only its own namespaces' orphans."""
    # "b" sorts before "x": a start-up that queued their keys would handle them before its own.
    theirs, ours = await _namespaces(kube, "b", "x")
    names = [f"web-{i}" for i in range(PER_NAMESPACE)]
    for ns in (theirs, ours):
        for name in names:
            await api(kube, "POST", wc_path(ns), windows_container(name))
    root = tmp_path / "shared"

    async with running(
        kube.admin_kubeconfig, tmp_path / "b", namespace=[theirs], bundle_root=str(root)
    ):
        await _ready_all(kube, theirs, names)
        # What another instance cannot tell from its own: a write in progress of theirs, and a
        # bundle of theirs whose resource is gone (theirs to judge, not ours).
        in_flight = root / theirs / ".tmp-web-0-abcd1234"
        (in_flight / "secrets").mkdir(parents=True)
        _plant_orphan(root, theirs, "gone", root / theirs / "web-0")
        mine = _plant_orphan(root, ours, "gone", root / theirs / "web-0")
        before = _tree(root / theirs)

        async with running(
            kube.admin_kubeconfig, tmp_path / "x", namespace=[ours], bundle_root=str(root)
        ) as instance:
            await _ready_all(kube, ours, names)
            await eventually(lambda: not mine.exists(), what="its own orphan removed")
            await settled(instance)
            assert _tree(root / theirs) == before
        for obj in await _ready_all(kube, theirs, names):
            assert FINALIZER in obj["metadata"]["finalizers"]
        assert sorted(os.listdir(root / ours)) == sorted([".digest-key", *names])


async def test_selector_instance_restarted_beside_a_namespaced_one_keeps_its_bundles(
    kube: KubeCluster, node: str, tmp_path: Path
) -> None:
    """An instance of all namespaces and one selector, restarted, removes nothing it cannot see."""
    theirs, ours = await _namespaces(kube, "b", "x")
    names = [f"web-{i}" for i in range(PER_NAMESPACE)]
    for name in names:
        await api(kube, "POST", wc_path(theirs), windows_container(name))
        await api(kube, "POST", wc_path(ours), _labelled(name, team="x"))
    # In its namespaces, not its selector: another selector's (or nobody's) to remove.
    await api(kube, "POST", wc_path(ours), _labelled("other", team="y"))
    root = tmp_path / "shared"
    scoped: dict[str, Any] = {"bundle_root": str(root), "selector": "team=x"}

    async with running(
        kube.admin_kubeconfig, tmp_path / "b", namespace=[theirs], bundle_root=str(root)
    ):
        await _ready_all(kube, theirs, names)
        before = {theirs: _tree(root / theirs)}
        async with running(kube.admin_kubeconfig, tmp_path / "x", **scoped) as instance:
            await _ready_all(kube, ours, names)
            await settled(instance)
        assert _tree(root / theirs) == before[theirs]
        unseen = _plant_orphan(root, ours, "other", root / ours / "web-0")
        (root / ours / ".tmp-other-abcd1234").mkdir()
        before[ours] = _tree(root / ours)

        async with running(kube.admin_kubeconfig, tmp_path / "x", **scoped) as instance:
            await eventually(lambda: instance.health.is_ready(), what="ready")  # listed
            await settled(instance)
            assert {ns: _tree(root / ns) for ns in (theirs, ours)} == before
        assert unseen.is_dir()

        # Scoped to nothing but namespaces, an instance restarted over the other's resources
        # (it watches them too) loses nothing of them either.
        async with running(kube.admin_kubeconfig, tmp_path / "all", bundle_root=str(root)) as every:
            await eventually(lambda: every.health.is_ready(), what="ready")
            await settled(every)
            for ns in (theirs, ours):
                for name in names:
                    assert (root / ns / name / "config.json").is_file()


@asynccontextmanager
async def _child(kube: KubeCluster, root: Path, *args: str) -> AsyncIterator[str]:
    """``winspec run --source kubernetes`` as a child process (a process of its own, as after a
    restart); the base URL of its /metrics."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *winspec_run_command(
            "--source", "kubernetes", "--kubeconfig", str(kube.admin_kubeconfig),
            "--bundle-root", str(root), "--listen", f"127.0.0.1:{port}", "--no-leader-elect",
            "--log-level", "warning", *args,
        ),
        env=clean_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
    """Every sample of a child's /metrics (None while it does not answer)."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize("resources", [12])
async def test_restart_over_unchanged_resources_writes_no_status(
    kube: KubeCluster, kube_namespace: str, node: str, tmp_path: Path, resources: int
) -> None:
    """A restart over up-to-date resources writes no status: status.digest is the kept .digest."""
    ns = kube_namespace
    names = [f"web-{i}" for i in range(resources)]
    await api(kube, "POST", f"/api/v1/namespaces/{ns}/secrets", secret("db", {"password": b"pw"}))
    uses = [{"secretName": "db", "key": "password", "target": "db-password"}]
    for i, name in enumerate(names):
        body = windows_container(name, secrets=uses) if i % 2 else windows_container(name)
        await api(kube, "POST", wc_path(ns), body)
    async with running(kube.admin_kubeconfig, tmp_path, namespace=[ns]) as first:
        objs = await _ready_all(kube, ns, names)
        await settled(first)
    digests = {o["metadata"]["name"]: o["status"]["digest"] for o in objs}

    writes = server_requests(kube, verb="PATCH", resource="windowscontainers", subresource="status")
    name = "windowscontainer-bundles"
    unchanged = ("winspec_bundles_written_total", frozenset({("result", "unchanged")}))
    busy = [
        ("workqueue_depth", frozenset({("name", name)})),
        ("controller_runtime_active_workers", frozenset({("controller", name)})),
    ]

    def done(url: str) -> bool:
        samples = _samples(url)
        return bool(
            samples
            and samples.get(unchanged, 0) >= resources
            and not any(samples.get(key, 1) for key in busy)
        )

    async with _child(kube, tmp_path / "bundles", "--namespace", ns) as url:
        await eventually(lambda: done(url), within=60, what="every bundle found up to date")
        await asyncio.sleep(1)  # a status write would follow its reconcile at once
        assert done(url)
        after = server_requests(
            kube, verb="PATCH", resource="windowscontainers", subresource="status"
        )
    assert after - writes == 0
    for obj in await _ready_all(kube, ns, names):
        name = obj["metadata"]["name"]
        kept = (tmp_path / "bundles" / ns / name / DIGEST_FILE).read_text().strip()
        assert obj["status"]["digest"] == digests[name] == kept


async def test_the_longest_namespace_and_name_get_a_bundle(
    kube: KubeCluster, node: str, tmp_path: Path
) -> None:
    """A 63-character namespace and a 253-character name: Ready, bundle written, then removed."""
    ns = f"n{secrets.token_hex(31)}"[:63]
    name = ".".join(["a" * 63] * 3 + [f"{secrets.token_hex(30)}b"])
    assert (len(ns), len(name)) == (63, 253)
    await api(kube, "POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    await api(kube, "POST", wc_path(ns), windows_container(name))
    async with running(kube.admin_kubeconfig, tmp_path):
        obj = await eventually(ready_object(kube, ns, name), what="Ready")
        kept = (tmp_path / "bundles" / ns / name / DIGEST_FILE).read_text().strip()
        assert obj["status"]["digest"] == kept
        await api(kube, "DELETE", wc_path(ns, name))
        await eventually(lambda: kube.status_of("GET", wc_path(ns, name)) == 404, what="deleted")
        assert os.listdir(tmp_path / "bundles" / ns) == [".digest-key"]
