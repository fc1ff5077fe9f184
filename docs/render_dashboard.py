"""Draw the Grafana dashboard's layout (manifests/monitoring/winspec-dashboard.json) to
docs/dashboard.png: each panel in its grid place with its title, type, unit and queries.

A rendering of the layout, not a screenshot with data (no Grafana or Prometheus runs here).
Needs Pillow, which winspec itself does not: `.venv/bin/pip install Pillow`, then
`.venv/bin/python docs/render_dashboard.py`.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "manifests" / "monitoring" / "winspec-dashboard.json"
OUT = ROOT / "docs" / "dashboard.png"
COL, ROW, PAD, HEADER = 60, 30, 6, 50
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


def _font(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A DejaVu font when installed, else Pillow's built-in font."""
    try:
        return ImageFont.truetype(str(FONT_DIR / name), size)
    except OSError:
        return ImageFont.load_default()


def main() -> None:
    """Render the dashboard layout to docs/dashboard.png."""
    board = json.loads(DASHBOARD.read_text())
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    image = Image.new("RGB", (24 * COL + 2 * PAD, HEADER + rows * ROW + PAD), "#111217")
    draw = ImageDraw.Draw(image)
    title = _font("DejaVuSans-Bold.ttf", 20)
    small = _font("DejaVuSans-Bold.ttf", 13)
    mono = _font("DejaVuSansMono.ttf", 11)
    variables = ", ".join(f"${v['name']}" for v in board["templating"]["list"])
    draw.text((PAD + 4, 14), f"{board['title']}   (variables: {variables})", "#e0e0e0", title)
    for panel in board["panels"]:
        grid = panel["gridPos"]
        x0 = PAD + grid["x"] * COL
        y0 = HEADER + grid["y"] * ROW
        x1, y1 = x0 + grid["w"] * COL - PAD, y0 + grid["h"] * ROW - PAD
        draw.rectangle((x0, y0, x1, y1), fill="#181b1f", outline="#2c3235")
        draw.text((x0 + 8, y0 + 6), panel["title"], "#d8d9da", small)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        draw.text((x1 - 8, y0 + 8), f"{panel['type']} · {unit}", "#8e8e8e", mono, anchor="ra")
        y = y0 + 30
        width = max(20, int(grid["w"] * COL / 7.4))
        for target in panel["targets"]:
            for line in textwrap.wrap(target["expr"], width):
                if y > y1 - 14:
                    break
                draw.text((x0 + 8, y), line, "#73bf69", mono)
                y += 14
            y += 4
    image.save(OUT, optimize=True)


if __name__ == "__main__":
    main()
