"""Cluster mode against a real kube-apiserver: N resources that already exist → all reconciled,
beside the floor, a client-go controller and a minimal kopf operator doing the same work, in the
same run; then winspec restarted on its finished resources, beside a bare list of them.

Run: ``python -m tests.benchmarks.bench_kubernetes [--resources N] [--skip-kopf]
[--skip-controller-floor] [--watch-cache both|on|off]`` (needs the binaries of
.ci/install-kube-apiserver.sh; the client-go controller is built only by
``.ci/install-kube-apiserver.sh --bench``, and its phase is skipped without it; kopf, for the
comparison, is not a dependency of winspec: ``pip install kopf``). It starts its own etcd +
kube-apiserver (tests/kube.py), once per server configuration: by default both, one after the
other, each with its own table — the watch cache on (the API server's default, as clusters run
it) and ``--watch-cache=false``.

Each phase gets its own namespace holding N WindowsContainers, each referring to one key of
one Secret (shared), created before the phase starts. Per resource, every phase does the same
API calls and disk work:

1. **floor**: a raw aiohttp client (this process), 16 resources in flight: list the resources
   (pages of 500), then per resource GET the Secret, PATCH the finalizer on, write a file of the
   size of winspec's bundle and fsync it, PATCH the status. What any controller must do at least.
   **controller floor** (``floor+w``): the floor plus what any controller of this resource asks
   of the server beyond those calls: a watch of the collection open throughout (every patch
   comes back as an event, decoded) and a status with winspec's three conditions instead of
   two fields (larger writes, larger ``managedFields``).
2. **client-go**: a controller written the usual Go way (.ci/informer/main.go: client-go's
   dynamic shared informer, a rate-limited work queue, 16 workers) doing the same calls and
   writing winspec's status (the three conditions), built from the Kubernetes 1.20 tree. Its
   cache can be a step behind its own patches: a patch from a stale resourceVersion gets 409
   Conflict and is retried through the queue, as in any such controller (the few writes above
   two per resource).
3. **winspec**: ``winspec run --source kubernetes`` as a child process (default settings apart
   from paths, no leader election, ``--workers 16``): list+watch, resolve (GET the Secret, the
   Node once), generate, finalizer, bundle (atomic, fsynced), status.
4. **restart**: winspec stopped (SIGTERM) and started again on the same bundle root and
   namespace: every resource is up to date, so it must write nothing (no status, no bundle, no
   event). Done when its /metrics count N successful reconciles (each one read the resource,
   checked its bundle against the digest the status names and found nothing to write); the
   API writes (POST, PUT, PATCH, DELETE the server counted, but for its own housekeeping) are
   counted until 2 s after that. **list**: beside it, a bare paginated list (pages of 500) of
   the same N resources by a raw aiohttp client (:mod:`tests.benchmarks.list_client`): what
   knowing the resources costs at least; in this warm process, and again as a process of its
   own timed from its start (**list proc**), as the restart is. Beside the two, the CPU each
   used with the server's (cores kept busy on average): on a small machine, what bounds the
   restart. **cache list**: the list process again, its first page asking for
   ``resourceVersion=0`` as the restart's first list does: on a server with its watch cache,
   every resource in one response from memory, so what the restart takes beyond it is its own
   work (start-up, decoding, the checks).
5. **kopf**: a minimal kopf operator as a child process (``tests/benchmarks/kopf_operator.py``),
   the same calls: GET the Secret, PATCH the finalizer (kopf's own), write + fsync, status.

Measured: time from the child's start (or the floor's first call) until every resource is done
(its status written), reconciles per second, and the child's peak RSS (``VmHWM``, sampled every
0.1 s). Where the time goes is printed too, per resource: the CPU the client used (the floor's
from this process's own usage, the children's from /proc), the CPU etcd and the API server used
in the same phase, and the API requests the server counted (``apiserver_request_total``), so a
difference to the floor shows whether it is the client's work or extra work it asks of the
server. winspec's completion is read from its bundles on disk, then its /metrics (successful
reconciles, each ending with its status write); client-go's and kopf's from their files, then
one list of the statuses. Child start-up (Python imports, about a second) counts against
winspec and kopf, not the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import resource
import signal
import ssl
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from controller.cluster import FINALIZER
from tests.benchmarks.list_client import bare_list
from tests.clustermode import ensure_node, windows_container
from tests.kube import KubeCluster, kube_bin_dir, process_cpu_seconds, stat_cpu_seconds
from tests.processes import REPO, clean_env, free_port, winspec_run_command

IN_FLIGHT = 16
#: Resources the API server reads and writes for itself (not the phases' requests).
_HOUSEKEEPING = frozenset({"namespaces", "services", "endpoints", "leases"})
#: The verbs that write (``apiserver_request_total``'s ``verb`` label).
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION"})
#: The client-go controller (.ci/informer/main.go), built by install-kube-apiserver.sh --bench.
INFORMER = "winspec-informer"
POLL = 0.1  # seconds between two looks at a child's progress
BUNDLE_BYTES = 4200  # winspec's bundle: config.json, links.json and one secret (bench_bundle_write)


@dataclass
class Figures:
    """One phase's results."""

    name: str
    seconds: float
    resources: int
    peak_rss_mb: float | None
    #: CPU seconds of the client (the floor: this process) and of etcd + the API server.
    client_cpu: float | None = None
    server_cpu: float | None = None
    #: API requests the server counted during the phase, and how many of them wrote.
    requests: int | None = None
    writes: int | None = None
    #: Seconds from the child's start until its progress could first be read (winspec: its
    #: /metrics answered): interpreter start-up and imports.
    up_seconds: float | None = None
    #: CPU seconds of the child's threads other than its main thread (winspec: the bundle
    #: files and their syncs, which run in worker threads; the event loop is the main thread).
    thread_cpu: float | None = None
    #: The warnings and errors the child logged (winspec): each message and how often.
    problems: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Resources reconciled per second."""
        return self.resources / self.seconds if self.seconds else 0.0


def populate(
    kube: KubeCluster,
    ns: str,
    count: int,
    *,
    first: int = 0,
    labels: Callable[[int], dict[str, str]] | None = None,
) -> None:
    """A namespace with one Secret and ``count`` WindowsContainers referring to it (with
    ``first``, resources ``first`` … ``first + count - 1`` added to the existing namespace;
    ``labels`` gives the labels of resource ``i``)."""
    if first == 0:
        kube.create_namespace(ns)
        kube.api(
            "POST",
            f"/api/v1/namespaces/{ns}/secrets",
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
             "data": {"password": base64.b64encode(b"s3cr3t").decode()}},
        )  # fmt: skip
    path = f"/apis/winspec.io/v1alpha1/namespaces/{ns}/windowscontainers"
    ref = [{"secretName": "db", "key": "password", "target": "db-password"}]

    def create(i: int) -> None:
        body = windows_container(f"r{i:05d}", secrets=ref)
        if labels is not None:
            body["metadata"]["labels"] = labels(i)
        kube.api("POST", path, body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(first, first + count)))


def done_count(kube: KubeCluster, ns: str, is_done: Callable[[dict[str, Any]], bool]) -> int:
    """How many resources of the namespace a phase has finished (one paginated list)."""
    path = f"/apis/winspec.io/v1alpha1/namespaces/{ns}/windowscontainers"
    done, token = 0, ""
    while True:
        page = kube.api("GET", f"{path}?limit=500" + (f"&continue={token}" if token else ""))
        done += sum(1 for item in page["items"] if is_done(item))
        token = page["metadata"].get("continue", "")
        if not token:
            return done


def peak_rss_mb(pid: int) -> float | None:
    """The peak resident set size of a live process, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def logged_problems(log: Path) -> dict[str, int]:
    """The warnings and errors in a winspec log (JSON lines): each message, how often."""
    problems: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") in ("warning", "error", "critical"):
            event = f"{record['level']}: {record.get('event')}"
            problems[event] = problems.get(event, 0) + 1
    return problems


def _log_file(log: Path | None) -> BinaryIO:
    """``log`` opened for a child's standard error (nowhere when None)."""
    return open(log or os.devnull, "wb")  # closed by the caller


async def run_child(
    argv: list[str],
    finished: Callable[[], int],
    count: int,
    name: str,
    env: dict[str, str] | None = None,
    linger: float = 0.0,
    log: Path | None = None,
) -> Figures:
    """Start a child, poll ``finished()`` (in a thread) until it reaches ``count``; figures.
    ``finished()`` is negative while the child cannot tell yet. The child is stopped
    ``linger`` seconds after that (outside the time measured). Its standard error goes to
    ``log`` when given (a winspec log: its warnings and errors are in the figures)."""
    started = time.monotonic()
    err = _log_file(log)
    try:
        child = await asyncio.create_subprocess_exec(
            *argv, env=env or clean_env(), stdout=asyncio.subprocess.DEVNULL, stderr=err
        )
    finally:
        err.close()  # the child has its own descriptor
    figures = await _follow(child, started, finished, count, name, linger)
    if log is not None:
        figures.problems = logged_problems(log)
    return figures


async def _follow(
    child: asyncio.subprocess.Process,
    started: float,
    finished: Callable[[], int],
    count: int,
    name: str,
    linger: float,
) -> Figures:
    """Poll ``finished()`` until ``count``; the figures of ``child``, started at ``started``."""
    peak: float | None = None
    up: float | None = None
    try:
        while True:
            await asyncio.sleep(POLL)
            peak = max(peak or 0.0, peak_rss_mb(child.pid) or 0.0)
            if child.returncode is not None:
                raise RuntimeError(f"{name} exited with {child.returncode}")
            done = await asyncio.to_thread(finished)
            if up is None and done >= 0:
                up = time.monotonic() - started
            if done >= count:
                seconds = time.monotonic() - started
                cpu = process_cpu_seconds(child.pid)
                threads = cpu - stat_cpu_seconds(Path(f"/proc/{child.pid}/task/{child.pid}/stat"))
                await asyncio.sleep(linger)
                return Figures(name, seconds, count, peak, cpu, up_seconds=up, thread_cpu=threads)
    finally:
        if child.returncode is None:
            child.terminate()
            await child.wait()


def winspec_finished(port: int, bundles: Path, count: int) -> int:
    """winspec's finished resources: its bundles first (counted on disk: scraping /metrics
    costs winspec CPU), then its successful reconciles (each ends with the status write)."""
    try:
        written = len(os.listdir(bundles))
    except OSError:
        return 0
    return winspec_successes(port) if written >= count else 0


def winspec_successes(port: int) -> int:
    """Successful reconciles so far (the status write is part of one), from winspec's /metrics:
    cheap to poll, unlike listing every resource. -1 while /metrics does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith("controller_runtime_reconcile_total{") and 'result="success"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def files_then_statuses(kube: KubeCluster, ns: str, out: Path, count: int) -> int:
    """kopf's or client-go's finished resources: their files first (cheap), then one list for
    the statuses."""
    try:
        written = len(os.listdir(out))
    except OSError:
        return 0
    if written < count:
        return 0
    return done_count(kube, ns, _status_done)


def _status_done(item: dict[str, Any]) -> bool:
    return bool((item.get("status") or {}).get("digest"))


#: The status winspec writes for a Ready resource (the controller floor's status).
CONDITIONS = [
    {"type": kind, "status": "True", "reason": reason, "message": message,
     "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}
    for kind, reason, message in (
        ("SpecGenerated", "Generated", "the spec was generated"),
        ("BundleWritten", "Written", "bundle 0123456789ab is on disk"),
        ("Ready", "BundleReady", "the bundle is current"),
    )
]  # fmt: skip


def used_cpu(who: int) -> float:
    """CPU seconds (user + system) that ``getrusage(who)`` reports so far."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def run_floor(
    kube: KubeCluster, ns: str, count: int, out: Path, *, controller: bool = False
) -> Figures:
    """The floor: the same calls, nothing else, 16 in flight; with ``controller``, also a
    watch of the collection and winspec's conditions in each status."""
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    context = ssl.create_default_context(cafile=str(kube.ca))
    headers = {"Authorization": f"Bearer {kube.admin_token}"}
    base = kube.url
    wc = f"/apis/winspec.io/v1alpha1/namespaces/{ns}/windowscontainers"
    payload = b"x" * BUNDLE_BYTES
    merge = {"Content-Type": "application/merge-patch+json"}

    def write(name: str) -> None:
        fd = os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)

    started = time.monotonic()
    used = used_cpu(resource.RUSAGE_SELF)
    async with aiohttp.ClientSession(
        headers=headers, connector=aiohttp.TCPConnector(ssl=context, limit=IN_FLIGHT)
    ) as http:
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            url = f"{base}{wc}?limit=500" + (f"&continue={token}" if token else "")
            async with http.get(url) as r:
                page = await r.json()
            items += page["items"]
            token = page["metadata"].get("continue", "")
            if not token:
                break
        watching: asyncio.Task[None] | None = None
        if controller:
            version = page["metadata"]["resourceVersion"]

            async def watch() -> None:
                url = f"{base}{wc}?watch=true&resourceVersion={version}"
                no_limit = aiohttp.ClientTimeout(total=None)
                async with http.get(url, timeout=no_limit) as r:
                    async for line in r.content:
                        json.loads(line)

            watching = asyncio.create_task(watch())
        extra = {"conditions": CONDITIONS} if controller else {}
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(item: dict[str, Any]) -> None:
            name = item["metadata"]["name"]
            async with gate:
                async with http.get(f"{base}/api/v1/namespaces/{ns}/secrets/db") as r:
                    await r.read()
                version = item["metadata"]["resourceVersion"]
                body = {"metadata": {"finalizers": [FINALIZER], "resourceVersion": version}}
                async with http.patch(
                    f"{base}{wc}/{name}", data=json.dumps(body), headers=merge
                ) as r:
                    patched = await r.json()
                await asyncio.to_thread(write, name)
                status = {
                    "metadata": {"resourceVersion": patched["metadata"]["resourceVersion"]},
                    "status": {"digest": "0" * 64, "observedGeneration": 1, **extra},
                }
                async with http.patch(
                    f"{base}{wc}/{name}/status", data=json.dumps(status), headers=merge
                ) as r:
                    await r.read()

        await asyncio.gather(*(one(item) for item in items))
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
    seconds = time.monotonic() - started
    cpu = used_cpu(resource.RUSAGE_SELF) - used
    return Figures("floor+w" if controller else "floor", seconds, len(items), None, cpu)


def api_requests(kube: KubeCluster) -> Counter[str]:
    """Every request the API server has counted so far (``apiserver_request_total``) by verb,
    but for the server's own housekeeping (namespaces, services, endpoints, leases)."""
    context = ssl.create_default_context(cafile=str(kube.ca))
    request = urllib.request.Request(
        f"{kube.url}/metrics", headers={"Authorization": f"Bearer {kube.admin_token}"}
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as answer:
        text = answer.read().decode()
    verbs: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            if (
                sample.name == "apiserver_request_total"
                and sample.labels.get("resource") not in _HOUSEKEEPING
            ):
                verbs[sample.labels.get("verb", "")] += int(sample.value)
    return verbs


async def measured(kube: KubeCluster, phase: Any) -> Figures:
    """Run one phase (an awaitable giving its Figures) with the server's CPU and requests."""
    cpu, calls = kube.cpu_seconds(), await asyncio.to_thread(api_requests, kube)
    figures: Figures = await phase
    server_cpu = kube.cpu_seconds() - cpu
    made = await asyncio.to_thread(api_requests, kube)
    made.subtract(calls)
    return dataclasses.replace(
        figures,
        server_cpu=server_cpu,
        requests=sum(made.values()),
        writes=sum(n for verb, n in made.items() if verb in WRITES),
    )


async def run_list(kube: KubeCluster, ns: str) -> Figures:
    """A bare paginated list of a namespace's resources (:mod:`tests.benchmarks.list_client`)
    in this warm process, from a new connection: what any client pays at least to know them."""
    started = time.monotonic()
    used = used_cpu(resource.RUSAGE_SELF)
    count = await bare_list(kube.url, kube.admin_token, str(kube.ca), ns)
    seconds = time.monotonic() - started
    cpu = used_cpu(resource.RUSAGE_SELF) - used
    return Figures("list", seconds, count, None, cpu)


async def run_list_process(kube: KubeCluster, ns: str, *, from_cache: bool = False) -> Figures:
    """The same list as a process of its own, timed from its start (interpreter start-up and
    aiohttp's import included, as they are in a restart's time); with ``from_cache``, asked of
    the watch cache (``resourceVersion=0``), as the restart's first list is."""
    argv = [sys.executable, "-m", "tests.benchmarks.list_client"]
    argv += [kube.url, kube.admin_token, str(kube.ca), ns]
    argv += ["--from-cache"] if from_cache else []
    started = time.monotonic()
    used = used_cpu(resource.RUSAGE_CHILDREN)
    child = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, env=clean_env(), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await child.communicate()
    seconds = time.monotonic() - started
    if child.returncode != 0:
        raise RuntimeError(f"the list process failed ({child.returncode})")
    cpu = used_cpu(resource.RUSAGE_CHILDREN) - used
    return Figures("cache list" if from_cache else "list proc", seconds, int(out), None, cpu)


@dataclass(frozen=True)
class Options:
    """What to run (the command line)."""

    count: int
    skip_kopf: bool
    skip_controller_floor: bool


def informer_binary() -> Path | None:
    """The client-go controller, when .ci/install-kube-apiserver.sh --bench has built it."""
    path = kube_bin_dir() / INFORMER
    return path if os.access(path, os.X_OK) else None


def winspec_argv(kube: KubeCluster, ns: str, bundles: Path, port: int) -> list[str]:
    """``winspec run`` on one namespace, default settings apart from paths and workers."""
    return winspec_run_command(
        "--source", "kubernetes", "--kubeconfig", str(kube.admin_kubeconfig),
        "--bundle-root", str(bundles), "--listen", f"127.0.0.1:{port}",
        "--namespace", ns, "--no-leader-elect", "--workers", str(IN_FLIGHT),
        "--log-level", "warning",
    )  # fmt: skip


async def run_all(kube: KubeCluster, options: Options, scratch: Path) -> list[Figures]:
    """The phases, one after the other, each on its own namespace (restart and list: on
    winspec's)."""
    count = options.count
    results: list[Figures] = []
    informer = informer_binary()
    namespaces = ["bench-floor", "bench-winspec"]
    namespaces += [] if options.skip_controller_floor else ["bench-floor-w"]
    namespaces += [] if informer is None else ["bench-client-go"]
    namespaces += [] if options.skip_kopf else ["bench-kopf"]
    for ns in namespaces:
        print(f"creating {count} resources in {ns} ...", file=sys.stderr)
        await asyncio.to_thread(populate, kube, ns, count)
    print("floor ...", file=sys.stderr)
    results.append(await measured(kube, run_floor(kube, "bench-floor", count, scratch / "floor")))
    if not options.skip_controller_floor:
        print("controller floor ...", file=sys.stderr)
        phase = run_floor(kube, "bench-floor-w", count, scratch / "floor-w", controller=True)
        results.append(await measured(kube, phase))
    if informer is not None:
        print("client-go ...", file=sys.stderr)
        out = scratch / "client-go"
        argv = [
            str(informer), "--kubeconfig", str(kube.admin_kubeconfig),
            "--namespace", "bench-client-go", "--out", str(out), "--workers", str(IN_FLIGHT),
        ]  # fmt: skip
        finished = functools.partial(files_then_statuses, kube, "bench-client-go", out, count)
        results.append(await measured(kube, run_child(argv, finished, count, "client-go")))
    print("winspec ...", file=sys.stderr)
    bundles = scratch / "winspec"
    port = free_port()
    argv = winspec_argv(kube, "bench-winspec", bundles, port)
    finished = functools.partial(winspec_finished, port, bundles / "bench-winspec", count)
    phase = run_child(argv, finished, count, "winspec", log=scratch / "winspec.log")
    results.append(await measured(kube, phase))
    print("restart ...", file=sys.stderr)
    port = free_port()
    argv = winspec_argv(kube, "bench-winspec", bundles, port)
    finished = functools.partial(winspec_successes, port)
    phase = run_child(argv, finished, count, "restart", linger=2.0, log=scratch / "restart.log")
    results.append(await measured(kube, phase))
    print("list ...", file=sys.stderr)
    results.append(await measured(kube, run_list(kube, "bench-winspec")))
    results.append(await measured(kube, run_list_process(kube, "bench-winspec")))
    results.append(await measured(kube, run_list_process(kube, "bench-winspec", from_cache=True)))
    if not options.skip_kopf:
        print("kopf ...", file=sys.stderr)
        env = clean_env() | {
            "KUBECONFIG": str(kube.admin_kubeconfig),
            "BENCH_OUT": str(scratch / "kopf"),
        }
        argv = [
            sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", "bench-kopf",
            "--quiet", str(REPO / "tests" / "benchmarks" / "kopf_operator.py"),
        ]  # fmt: skip
        finished = functools.partial(
            files_then_statuses, kube, "bench-kopf", scratch / "kopf", count
        )
        results.append(await measured(kube, run_child(argv, finished, count, "kopf", env)))
    return results


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "-"


def _cores(phase: Figures) -> str:
    """The CPU a phase's client and server used, and how many cores that kept busy on average."""
    used = (phase.client_cpu or 0.0) + (phase.server_cpu or 0.0)
    return (f"{phase.client_cpu or 0:.2f} s client + {phase.server_cpu or 0:.2f} s server in "
            f"{phase.seconds:.2f} s ({used / phase.seconds:.2f} cores busy)")  # fmt: skip


def report(title: str, results: list[Figures]) -> None:
    """Print one server configuration's figures side by side: time, rate and peak RSS, ratios
    to the floor and to the client-go controller; where the time went (CPU per resource of the
    client and of the server side, its ratio to the floor's, requests and writes per resource);
    then the comparisons the targets are stated in."""
    by_name = {r.name: r for r in results}
    floor, winspec, go = by_name["floor"], by_name["winspec"], by_name.get("client-go")
    print(f"API server: {title}")
    print(
        f"{'phase':9} {'resources':>9} {'seconds':>8} {'per s':>7} {'peak RSS':>9} {'× floor':>8}"
        f" {'× go':>6} {'client CPU':>11} {'× floor':>8} {'server CPU':>11} {'requests':>9}"
        f" {'writes':>7}"
    )

    def per(value: float | None, r: Figures, unit: str, scale: float = 1000.0) -> str:
        return "-" if value is None else f"{value / r.resources * scale:.2f} {unit}".rstrip()

    def cpu(r: Figures) -> float | None:
        return None if r.client_cpu is None else r.client_cpu / r.resources

    go_seconds = go.seconds if go else None
    for r in results:
        rss = f"{r.peak_rss_mb:.0f} MB" if r.peak_rss_mb else "-"
        print(f"{r.name:9} {r.resources:9d} {r.seconds:8.2f} {r.rate:7.0f} {rss:>9} "
              f"{r.seconds / floor.seconds:8.2f} {_ratio(r.seconds, go_seconds):>6} "
              f"{per(r.client_cpu, r, 'ms'):>11} {_ratio(cpu(r), cpu(floor)):>8} "
              f"{per(r.server_cpu, r, 'ms'):>11} {per(r.requests, r, '', 1.0):>9} "
              f"{r.writes if r.writes is not None else '-':>7}")  # fmt: skip
    print("(per resource: CPU and requests; writes: in all. server: etcd + kube-apiserver in the "
          "same phase)")  # fmt: skip
    print(f"winspec: time {_ratio(winspec.seconds, floor.seconds)} the floor, client CPU per "
          f"resource {_ratio(cpu(winspec), cpu(floor))} the floor's")  # fmt: skip
    if winspec.thread_cpu is not None and winspec.client_cpu is not None:
        loop = winspec.client_cpu - winspec.thread_cpu
        print(f"winspec's client CPU per resource: event loop (main thread) "
              f"{per(loop, winspec, 'ms')}, worker threads (bundle files and their syncs) "
              f"{per(winspec.thread_cpu, winspec, 'ms')}")  # fmt: skip
    if controller_floor := by_name.get("floor+w"):
        print(f"winspec / controller floor (floor+w): time "
              f"{winspec.seconds / controller_floor.seconds:.2f}×")  # fmt: skip
    if go is not None:
        print(f"winspec / client-go: time {_ratio(winspec.seconds, go.seconds)}, client CPU "
              f"{_ratio(cpu(winspec), cpu(go))}, peak RSS {winspec.peak_rss_mb or 0:.0f} MB "
              f"beside {go.peak_rss_mb or 0:.0f} MB "
              f"({_ratio(winspec.peak_rss_mb, go.peak_rss_mb)})")  # fmt: skip
    else:
        print(f"client-go: not built ({INFORMER} is not in {kube_bin_dir()}: "
              "bash .ci/install-kube-apiserver.sh --bench builds it)")  # fmt: skip
    restart, listed, process = by_name["restart"], by_name["list"], by_name["list proc"]
    print(f"restart / list: time {_ratio(restart.seconds, listed.seconds)} (of the restart's "
          f"{restart.seconds:.2f} s, {restart.up_seconds or 0:.2f} s until its /metrics answered: "
          f"interpreter start-up and imports); API writes during the restart: "
          f"{restart.writes}")  # fmt: skip
    print(f"restart / list as a process of its own, start-up in both: time "
          f"{_ratio(restart.seconds, process.seconds)} (the list process: "
          f"{process.seconds:.2f} s, {process.seconds - listed.seconds:.2f} s more than the "
          f"list in this process)")  # fmt: skip
    print(f"restart / list process, CPU on the machine's {os.cpu_count()} cores: "
          f"{_cores(restart)} against {_cores(process)}: the restart's checks share the cores "
          f"with the API server serving its list")  # fmt: skip
    if cached := by_name.get("cache list"):
        print(f"restart / the list process asking the watch cache (resourceVersion=0, as the "
              f"restart's first list does): time {_ratio(restart.seconds, cached.seconds)} "
              f"(that list process: {cached.seconds:.2f} s; {_cores(cached)}): what remains is "
              f"the restart's own work, {per(restart.client_cpu, restart, 'ms')} of CPU per "
              f"resource, its start-up {restart.up_seconds or 0:.2f} s")  # fmt: skip
    for phase in (winspec, restart):
        # An outlier explains itself: a retried failure, a stream re-opened after silence.
        logged = ", ".join(f"{event} ({n}×)" for event, n in sorted(phase.problems.items()))
        print(f"{phase.name}'s log: {logged or 'no warning or error'}")
    kopf = by_name.get("kopf")
    if kopf and kopf.peak_rss_mb and winspec.peak_rss_mb:
        print(f"winspec / kopf: time {winspec.seconds / kopf.seconds:.2f}×, "
              f"peak RSS {winspec.peak_rss_mb / kopf.peak_rss_mb:.2f}×")  # fmt: skip


#: The server configurations: the API server's default (watch cache on), and without the cache.
CONFIGURATIONS = {"on": "watch cache on (default settings)", "off": "--watch-cache=false"}


@contextlib.contextmanager
def bench_cluster(*, watch_cache: bool) -> Iterator[tuple[KubeCluster, Path]]:
    """A started etcd + kube-apiserver with the CRDs and the Node, and a scratch directory;
    both gone when the block ends."""
    kube = KubeCluster(watch_cache=watch_cache)
    try:
        kube.start()
        kube.apply_crd()
        kube.apply_gmsa_crd()
        ensure_node(kube)
        with tempfile.TemporaryDirectory(prefix="winspec-bench-") as scratch:
            yield kube, Path(scratch)
    finally:
        kube.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=5000)
    parser.add_argument("--skip-kopf", action="store_true")
    parser.add_argument("--skip-controller-floor", action="store_true")
    parser.add_argument(
        "--watch-cache",
        choices=("both", "on", "off"),
        default="both",
        help="the API server configurations to run (default: both, one after the other)",
    )
    args = parser.parse_args(argv)
    if not args.skip_kopf and importlib.util.find_spec("kopf") is None:
        print("kopf is not installed (pip install kopf): its phase is skipped", file=sys.stderr)
        args.skip_kopf = True
    options = Options(args.resources, args.skip_kopf, args.skip_controller_floor)
    # SIGTERM too stops the API server and etcd this started (through the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    configurations = ("on", "off") if args.watch_cache == "both" else (args.watch_cache,)
    for n, configuration in enumerate(configurations):
        if n:
            print(flush=True)
        print(f"API server: {CONFIGURATIONS[configuration]} ...", file=sys.stderr)
        with bench_cluster(watch_cache=configuration == "on") as (kube, scratch):
            results = asyncio.run(run_all(kube, options, scratch))
        report(CONFIGURATIONS[configuration], results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
