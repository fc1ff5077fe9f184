"""A child process writing bundles until killed, for the NTFS crash test
(``tests/integration/test_ntfs_bundles.py``).

``python -m tests.ntfs_writer ROOT churn ID...`` sweeps ``ROOT`` as a start-up does (every
leftover of a killed predecessor goes, the bundles of ``ID...`` stay), prints ``ready``, then
rewrites those bundles over and over: most versions change ``config.json`` and ``links.json``
only (the update in place), every third changes the payloads too (renamed aside, then in).
``... settle ID...`` sweeps, writes :func:`content` of :data:`FINAL` for each id and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from adapters.bundles.local import LocalBundleWriter
from controller.bundle import BundleContent

FINAL = 1_000_000


def content(bundle_id: str, version: int) -> BundleContent:
    """Version ``version`` of a bundle; its payloads change with every third version."""
    payloads = version // 3
    spec = {"ociVersion": "1.1.0", "id": bundle_id, "version": version, "pad": "x" * 2000}
    return BundleContent(
        files={
            "config.json": json.dumps(spec).encode(),
            "links.json": json.dumps({"links": [{"version": version}]}).encode(),
            "secrets/app-secret": f"secret {bundle_id} {payloads}".encode() * 50,
            "secrets/db.password": f"password {payloads}".encode(),
            "configs/app.conf": f"conf {payloads}\n".encode() * 20,
        }
    )


async def main(root: Path, mode: str, ids: list[str]) -> None:
    """Sweep, then churn forever or write the final versions."""
    writer = LocalBundleWriter(root)
    try:
        await writer.sweep(ids)
        if mode == "settle":
            for bundle_id in ids:
                await writer.write(bundle_id, content(bundle_id, FINAL))
            return
        print("ready", flush=True)
        version = 0
        while True:
            version += 1
            for bundle_id in ids:
                await writer.write(bundle_id, content(bundle_id, version))
    finally:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:]))
