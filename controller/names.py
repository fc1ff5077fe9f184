"""Kubernetes name rules winspec checks before a name becomes a path or a setting (pure)."""

from __future__ import annotations

import re

# RFC 1123 label, as Kubernetes checks a namespace name: at most 63 lower-case alphanumerics
# and '-', starting and ending with an alphanumeric.
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def is_dns1123_label(value: str) -> bool:
    """Whether ``value`` is a DNS-1123 label (a Kubernetes namespace name)."""
    return bool(_DNS1123_LABEL.match(value))
