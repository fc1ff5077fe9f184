"""The environment the kubelet gives a pod's containers: the Docker-link variables of the
Services in the pod's namespace (unless the pod says ``enableServiceLinks: false``) and those of
the API server's own Service ``default/kubernetes`` (always), as Kubernetes 1.20's kubelet
builds them (``pkg/kubelet/envvars``), plus the container's own ``env`` (which wins)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _variable_name(service_name: str) -> str:
    return service_name.upper().replace("-", "_")


def service_link_variables(service: Mapping[str, Any]) -> dict[str, str]:
    """The variables one Service gives every pod of its namespace (none without a cluster IP)."""
    spec = service["spec"]
    ip = spec.get("clusterIP") or "None"
    if ip == "None":
        return {}
    prefix = _variable_name(service["metadata"]["name"])
    ports = spec["ports"]
    out = {f"{prefix}_SERVICE_HOST": ip, f"{prefix}_SERVICE_PORT": str(ports[0]["port"])}
    for port in ports:
        if port.get("name"):
            out[f"{prefix}_SERVICE_PORT_{_variable_name(port['name'])}"] = str(port["port"])
    host = f"[{ip}]" if ":" in ip else ip
    for index, port in enumerate(ports):
        protocol = port.get("protocol") or "TCP"
        address = f"{protocol.lower()}://{host}:{port['port']}"
        if index == 0:
            out[f"{prefix}_PORT"] = address  # Docker special-cases the first port
        each = f"{prefix}_PORT_{port['port']}_{protocol.upper()}"
        out[each] = address
        out[f"{each}_PROTO"] = protocol.lower()
        out[f"{each}_PORT"] = str(port["port"])
        out[f"{each}_ADDR"] = ip
    return out


def pod_environment(
    pod_spec: Mapping[str, Any],
    container: Mapping[str, Any],
    namespace_services: Iterable[Mapping[str, Any]],
    api_service: Mapping[str, Any],
    field_values: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """What ``container`` of a pod with ``pod_spec`` sees in its environment from Kubernetes.

    ``namespace_services``: the Services of the pod's namespace (as the API server returns
    them, cluster IPs allocated); ``api_service``: ``default/kubernetes``; ``field_values``:
    the values of ``fieldRef`` paths (e.g. ``spec.nodeName``).
    """
    env: dict[str, str] = {}
    if pod_spec.get("enableServiceLinks", True):
        for service in namespace_services:
            env.update(service_link_variables(service))
    env.update(service_link_variables(api_service))
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            env[var["name"]] = (field_values or {})[path]
    return env


def expand(arg: str, env: Mapping[str, str]) -> str:
    """``$(NAME)`` references in a container argument, as the kubelet expands them."""
    for name, value in env.items():
        arg = arg.replace(f"$({name})", value)
    return arg
