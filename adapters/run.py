"""``winspec run``: the controller, wired from settings (filled in by the Docker mode)."""

from __future__ import annotations

import argparse
from typing import Any


def add_run_parser(sub: Any) -> None:
    """Register the ``run`` sub-command."""
    sub.add_parser("run", help="run the controller (Docker mode)")


def run_command(args: argparse.Namespace) -> int:
    """Run the controller until stopped."""
    raise SystemExit("winspec run: not available yet")
