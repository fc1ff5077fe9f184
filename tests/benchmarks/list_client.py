"""A bare paginated list of a namespace's WindowsContainers: the floor of a restart.

Run by :mod:`tests.benchmarks.bench_kubernetes` in its own warm process, and as a process of
its own (``python -m tests.benchmarks.list_client URL TOKEN CA NAMESPACE [--from-cache]``, timed
from its start, as a restarted controller is): raw aiohttp, pages of 500, from a new connection;
what any client pays at least to know every resource. With ``--from-cache`` the first page asks
for ``resourceVersion=0``, as winspec's first list does (and client-go's): an API server with
its watch cache answers every resource at once, from memory. The process prints the count it
listed.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

import aiohttp

PAGE = 500


async def bare_list(
    url: str, token: str, ca_file: str, namespace: str, *, from_cache: bool = False
) -> int:
    """List every WindowsContainer of ``namespace`` page by page (the first page from the watch
    cache with ``from_cache``); how many there were."""
    context = ssl.create_default_context(cafile=ca_file)
    collection = f"{url}/apis/winspec.io/v1alpha1/namespaces/{namespace}/windowscontainers"
    count, cont = 0, ""
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {token}"},
        connector=aiohttp.TCPConnector(ssl=context),
    ) as http:
        while True:
            query = f"?limit={PAGE}"
            if cont:
                query += f"&continue={cont}"
            elif from_cache:
                query += "&resourceVersion=0"
            async with http.get(collection + query) as response:
                response.raise_for_status()
                page = await response.json()
            count += len(page["items"])
            cont = page["metadata"].get("continue", "")
            if not cont:
                return count


if __name__ == "__main__":
    print(asyncio.run(bare_list(*sys.argv[1:5], from_cache="--from-cache" in sys.argv[5:])))
