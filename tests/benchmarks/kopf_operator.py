"""A minimal kopf operator doing per WindowsContainer what winspec does at the API and on disk,
for bench_kubernetes.py: GET the referenced Secret, a finalizer (kopf adds its own, because of
the delete handler), write a file of the bundle's size and fsync it (in a thread), write the
status. Run by the benchmark with ``kopf run``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import kopf
import kubernetes_asyncio

OUT = Path(os.environ.get("BENCH_OUT", "/tmp/kopf-bench"))
PAYLOAD = b"x" * 4200
_api: Any = None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf's defaults otherwise. (Its worker_limit is not "in flight": a worker per object
    lingers idle for batching.idle_timeout, 5 s, so a limit of 16 serialises in 5 s steps.)"""
    global _api
    await asyncio.to_thread(OUT.mkdir, parents=True, exist_ok=True)
    await kubernetes_asyncio.config.load_kube_config()
    _api = kubernetes_asyncio.client.CoreV1Api()


@kopf.on.resume("winspec.io", "v1alpha1", "windowscontainers")
@kopf.on.create("winspec.io", "v1alpha1", "windowscontainers")
async def reconcile(spec: Any, name: str, namespace: str, patch: kopf.Patch, **_: Any) -> None:
    """Fetch the Secret, write + fsync the bundle-sized file, set the status digest."""
    for ref in spec.get("secrets", []):
        await _api.read_namespaced_secret(ref["secretName"], namespace)
    await asyncio.to_thread(_write, name)
    patch.status["digest"] = "0" * 64
    patch.status["observedGeneration"] = 1


@kopf.on.delete("winspec.io", "v1alpha1", "windowscontainers")
async def remove(name: str, **_: Any) -> None:
    """Remove the file (this handler is what makes kopf keep a finalizer, as winspec does)."""
    await asyncio.to_thread((OUT / name).unlink, missing_ok=True)


def _write(name: str) -> None:
    fd = os.open(OUT / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, PAYLOAD)
        os.fsync(fd)
    finally:
        os.close(fd)
