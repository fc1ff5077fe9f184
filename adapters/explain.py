"""``winspec explain`` and ``winspec diff``: the command-line side of ``controller/explain.py``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from adapters.credspecs import NodeCredentialSpecReader
from controller.errors import NotFoundError, PermanentError, WinspecError
from controller.explain import (
    diff,
    explain,
    render_annotations,
    render_differences,
    select,
)
from controller.generate import encode_spec, generate
from controller.models import MAX_REQUEST_BYTES, NodeSettings, Request, decode_request
from controller.provenance import Provenance
from controller.settings import Settings
from controller.winpath import host_join

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


def _read(path: str) -> bytes:
    if path == "-":
        data = sys.stdin.buffer.read(MAX_REQUEST_BYTES + 1)
    else:
        with open(path, "rb") as f:
            data = f.read(MAX_REQUEST_BYTES + 1)
    if len(data) > MAX_REQUEST_BYTES:
        raise OSError(f"larger than {MAX_REQUEST_BYTES} bytes")
    return data


def _fail(message: str, code: int) -> int:
    print(f"winspec: {message}", file=sys.stderr)
    return code


def explain_command(args: argparse.Namespace) -> int:
    """``winspec explain REQUEST.json``."""
    try:
        if args.docker_host and args.kubeconfig:
            return _fail("give --docker-host or --kubeconfig, not both", EXIT_BAD_INPUT)
        if args.docker_host:
            request = asyncio.run(_docker_request(args))
        elif args.kubeconfig:
            request = asyncio.run(_cluster_request(args))
        else:
            request = decode_request(_read(args.request))
        generated, annotations = explain(request, reader=NodeCredentialSpecReader())
    except OSError as exc:
        return _fail(f"cannot read {args.request}: {exc.strerror or exc}", EXIT_BAD_INPUT)
    except PermanentError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except WinspecError as exc:
        return _fail(str(exc), EXIT_FAILURE)
    for warning in generated.warnings:
        print(f"winspec: warning: {warning}", file=sys.stderr)
    if args.field:
        annotations = select(annotations, args.field)
        if not annotations:
            return _fail(f"the spec has no field {args.field}", EXIT_BAD_INPUT)
    if args.format == "json":
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(annotations)) + b"\n")
    else:
        sys.stdout.write(render_annotations(annotations))
    return EXIT_OK


async def _docker_request(args: argparse.Namespace) -> Request:
    """The request Docker mode would build for container ``args.request`` of the engine."""
    from adapters.docker.client import DockerClient
    from adapters.docker.resolver import DockerRequestResolver, node_facts_from_info
    from adapters.docker.types import Info, decode

    async with DockerClient(args.docker_host) as client:
        await client.negotiate()
        info = decode(await client.get_raw("/info", api="info"), Info, "/info")
        resolver = DockerRequestResolver(
            client,
            node=node_facts_from_info(info, NodeSettings()),
            bundle_root=args.bundle_root,
            secrets_dir=Path(args.secrets_dir),
            swarm_worker=info.swarm_worker,
        )
        request = await resolver.resolve(args.request)
    if request is None:
        raise PermanentError(f"no container {args.request} on {args.docker_host}")
    # Docker mode names a bundle by the container's full id, whatever name was given here.
    return msgspec.structs.replace(
        request, bundle_dir=host_join(args.bundle_root, request.container.id)
    )


async def _cluster_request(args: argparse.Namespace) -> Request:
    """The request cluster mode would build for the WindowsContainer ``args.request``."""
    from urllib.parse import quote

    from adapters.kubernetes.client import KubeClient, load_api_client
    from adapters.kubernetes.resolver import KubernetesResolver
    from controller.cluster import GROUP, PLURAL, VERSION, decode_windows_container

    namespace, _, name = args.request.partition("/")
    if not namespace or not name or "/" in name:
        raise PermanentError(f"{args.request}: a WindowsContainer is named NAMESPACE/NAME")
    ns = quote(namespace, safe="")
    client = KubeClient(await load_api_client(args.kubeconfig))
    try:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}/{quote(name, safe='')}"
        try:
            raw = await client.request("GET", path, api="windowscontainer")
        except NotFoundError as exc:
            raise PermanentError(f"no WindowsContainer {args.request}: {exc}") from exc
        wc = decode_windows_container(raw)
        namespace_object = json.loads(
            await client.request("GET", f"/api/v1/namespaces/{ns}", api="namespace")
        )
        labels: dict[str, str] = namespace_object.get("metadata", {}).get("labels") or {}

        async def bundle_root(node: str) -> str:
            return str(args.bundle_root)

        async def namespace_labels(_: str) -> dict[str, str]:
            return labels

        defaults = Settings()
        resolver = KubernetesResolver(
            client,
            cache={wc.key: wc},
            node_defaults=defaults.node_settings(),
            bundle_root=bundle_root,
            namespaces=namespace_labels,
            pod_security_default=defaults.pod_security_default,
        )
        request = await resolver.resolve(wc.key)
    finally:
        await client.close()
    if request is None:
        raise PermanentError(f"{args.request} is being deleted: no spec to explain")
    return request


def _spec_document(path: str, data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise PermanentError(f"{path}: not a JSON document ({exc})") from exc
    if not isinstance(document, dict):
        raise PermanentError(f"{path}: a spec or request is a JSON object")
    return document


def _ours(path: str, data: bytes) -> tuple[dict[str, Any], Provenance]:
    """winspec's spec for a request document, and its provenance."""
    record = Provenance()
    request = decode_request(data)
    spec = generate(request, reader=NodeCredentialSpecReader(), record=record).spec
    return json.loads(encode_spec(spec)), record


def diff_command(args: argparse.Namespace) -> int:
    """``winspec diff SPEC.json REQUEST.json`` (or two specs)."""
    try:
        theirs = _spec_document(args.spec, _read(args.spec))
        other = _read(args.other)
        record: Provenance | None = None
        if "container" in _spec_document(args.other, other):
            ours, record = _ours(args.other, other)
        else:
            ours = _spec_document(args.other, other)
            if args.request:
                record = _ours(args.request, _read(args.request))[1]
    except OSError as exc:
        return _fail(
            f"cannot read {exc.filename or 'input'}: {exc.strerror or exc}", EXIT_BAD_INPUT
        )
    except PermanentError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except WinspecError as exc:
        return _fail(str(exc), EXIT_FAILURE)
    differences = diff(theirs, ours, record)
    if args.format == "json":
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(differences)) + b"\n")
    else:
        sys.stdout.write(render_differences(differences))
    return EXIT_FAILURE if differences else EXIT_OK
