"""Draw the Grafana dashboard (manifests/monitoring/winspec-dashboard.json) with real data: each
panel in its grid place, drawn from a Prometheus server's answers to the panel's queries over a
time window (time series as lines, stat panels as their last value, the table as its rows).

    .venv/bin/python -m tests.dashboard_picture http://127.0.0.1:9090 docs/dashboard.png

draws the last 10 minutes (``--minutes``) of any Prometheus that scrapes winspec as the shipped
ServiceMonitors do; the dashboard's variables take their current values (``--var name=value``
overrides one). tests/integration/test_cluster_node.py draws it from its own Prometheus during
its scenario run (docs/metrics.md says how to keep that picture).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from tests.manifests import DASHBOARD

#: One panel's answers: per query, the series (``metric`` labels, ``values`` [[t, "v"], ...]).
Answers = list[list[dict[str, Any]]]
#: The most series a legend names.
_LEGEND = 8
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def variables(board: dict[str, Any], overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The dashboard's variables with their current values (``overrides`` win)."""
    values = {
        v["name"]: str(v["current"]["value"])
        for v in board["templating"]["list"]
        if v["type"] == "query" and "current" in v
    }
    return {**values, **(overrides or {})}


def substitute(expr: str, values: dict[str, str]) -> str:
    """A panel query with the dashboard's variables replaced; a variable left unknown fails."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"dashboard variable ${name} has no value")
        return values[name]

    return _VARIABLE.sub(one, expr)


def panel_queries(
    board: dict[str, Any], values: dict[str, str]
) -> list[tuple[dict[str, Any], list[str]]]:
    """Each panel with its queries, the variables substituted."""
    return [
        (panel, [substitute(t["expr"], values) for t in panel.get("targets", [])])
        for panel in board["panels"]
    ]


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    """The series Prometheus at ``url`` answers for ``expr`` over [start, end]."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=30) as answer:
        body = json.loads(answer.read())
    if body["status"] != "success":
        raise RuntimeError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _label(series: dict[str, Any], target: dict[str, Any]) -> str:
    """A series' legend: the target's legendFormat filled in, else its labels."""
    metric = series["metric"]
    legend = target.get("legendFormat")
    if legend and legend != "__auto":
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), legend)
    return ",".join(f"{k}={v}" for k, v in sorted(metric.items())) or target.get("refId", "")


def _number(text: str) -> float:
    """A sample value (Prometheus sends them as strings, NaN included)."""
    return float(text)


def draw(board: dict[str, Any], answers: list[Answers], start: float, out: Path) -> None:
    """Draw every panel of ``board`` from ``answers`` (per panel, per query) to ``out``."""
    panels = board["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    figure = plt.figure(figsize=(24, rows * 0.5), facecolor="#111217")
    grid = figure.add_gridspec(rows, 24, hspace=2.2, wspace=1.5, left=0.03, right=0.99,
                               top=0.97, bottom=0.02)  # fmt: skip
    figure.suptitle(f"{board.get('title', 'dashboard')} (x axis: minutes)", color="white",
                    fontsize=16, x=0.01, y=0.995, ha="left")  # fmt: skip
    for panel, per_query in zip(panels, answers, strict=True):
        pos = panel["gridPos"]
        axes = figure.add_subplot(
            grid[pos["y"] : pos["y"] + pos["h"], pos["x"] : pos["x"] + pos["w"]]
        )
        axes.set_facecolor("#181b1f")
        axes.set_title(panel.get("title", ""), color="white", fontsize=10, loc="left")
        axes.tick_params(colors="#9fa7b3", labelsize=7)
        for spine in axes.spines.values():
            spine.set_color("#2c3235")
        targets = panel.get("targets", [])
        if panel["type"] == "timeseries":
            for target, series_list in zip(targets, per_query, strict=True):
                for series in series_list:
                    times = [(float(t) - start) / 60 for t, _ in series["values"]]
                    values = [_number(v) for _, v in series["values"]]
                    axes.plot(times, values, linewidth=1.2, label=_label(series, target))
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
            if unit:
                axes.set_ylabel(unit, color="#9fa7b3", fontsize=7)
            handles, labels = axes.get_legend_handles_labels()
            if handles:
                axes.legend(handles[:_LEGEND], labels[:_LEGEND], fontsize=5, loc="upper left",
                            facecolor="#181b1f", labelcolor="white", framealpha=0.5)  # fmt: skip
        else:
            axes.set_xticks([])
            axes.set_yticks([])
            lines = []
            for target, series_list in zip(targets, per_query, strict=True):
                # The series at the window's end (pods gone before it are left out).
                end = max((float(s["values"][-1][0]) for s in series_list), default=0.0)
                for series in series_list:
                    if float(series["values"][-1][0]) < end:
                        continue
                    last = _number(series["values"][-1][1])
                    shown = "NaN" if math.isnan(last) else f"{last:g}"
                    lines.append(f"{_label(series, target)}: {shown}")
            short = len(lines) <= 2 and max(map(len, lines), default=0) <= 24
            size = 18 if panel["type"] == "stat" and short else 8
            axes.text(0.03, 0.85, "\n".join(lines) or "no data", color="#73bf69",
                      fontsize=size, va="top", ha="left", transform=axes.transAxes,
                      family="monospace")  # fmt: skip
    figure.savefig(out, dpi=60, facecolor=figure.get_facecolor())
    plt.close(figure)


def picture(url: str, out: Path, start: float, end: float, values: dict[str, str]) -> None:
    """Query every panel of the dashboard from ``url`` over [start, end] and draw it to ``out``."""
    board = json.loads(DASHBOARD.read_text())
    step = max(2.0, (end - start) / 300)
    answers = [
        [query_range(url, expr, start, end, step) for expr in exprs]
        for _, exprs in panel_queries(board, variables(board, values))
    ]
    draw(board, answers, start, out)


def main(args: Sequence[str] | None = None) -> None:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tests.dashboard_picture")
    parser.add_argument("prometheus", help="the Prometheus server's URL")
    parser.add_argument("out", type=Path, help="the PNG file to write")
    parser.add_argument("--minutes", type=float, default=10.0, help="the window drawn")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="a dashboard variable's value")  # fmt: skip
    options = parser.parse_args(args)
    end = time.time()
    overrides = dict(v.split("=", 1) for v in options.var)
    picture(options.prometheus.rstrip("/"), options.out, end - options.minutes * 60, end, overrides)


if __name__ == "__main__":
    main()
