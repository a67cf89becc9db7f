"""Figures: SVG line charts (gaps for missing points, thinning, ticks) and the attention PNG grid."""

from __future__ import annotations

import io
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from skinflow.report.figures import (
    GridCell, GridRow, attention_grid_png, heat_colours, nice_ticks, svg_line_chart,
)

SVG = "{http://www.w3.org/2000/svg}"


def test_nice_ticks_cover_range_with_round_steps():
    ticks = nice_ticks(0.03, 0.97)
    assert ticks[0] >= 0.03 and ticks[-1] <= 0.97 and len(ticks) >= 3
    steps = np.diff(ticks)
    assert np.allclose(steps, steps[0]) and any(math.isclose(steps[0], s) for s in (0.1, 0.2, 0.25))
    assert nice_ticks(5, 5) == [5] and nice_ticks(float("nan"), 1) == []


def test_svg_chart_is_valid_xml_with_gaps_and_legend():
    svg = svg_line_chart({"loss": ([1, 2, 3, 4, 5], [3.0, 2.0, None, 1.5, 1.0]),
                          "kl": ([1, 2, 3], [0.0, 0.1, 0.2])}, "A & B", y_label="value")
    root = ET.fromstring(svg)
    lines = root.findall(f".//{SVG}polyline")
    assert len(lines) == 3                    # loss split in two runs by the missing point, plus kl
    assert [len(l.get("points").split()) for l in lines] == [2, 2, 3]
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "A & B" in texts and "loss" in texts and "kl" in texts


def test_svg_chart_thins_long_series_and_handles_no_data():
    x = np.arange(5000)
    svg = svg_line_chart({"r": (x, np.sin(x / 100))}, "long", max_points=200)
    points = ET.fromstring(svg).find(f".//{SVG}polyline").get("points").split()
    assert len(points) <= 200
    empty = svg_line_chart({"r": ([1, 2], [None, None])}, "nothing")
    assert "no data" in empty and ET.fromstring(empty) is not None
    flat = svg_line_chart({"r": ([1], [2.0])}, "one point")          # single point: a dot, no crash
    assert ET.fromstring(flat).find(f".//{SVG}circle") is not None


def test_heat_colours_endpoints_and_order():
    colours = heat_colours(np.array([0.0, 0.5, 1.0, -3.0, 7.0, np.nan]))
    assert colours.dtype == np.uint8 and tuple(colours[0]) == (0, 0, 4) and tuple(colours[2]) == (252, 255, 164)
    assert tuple(colours[3]) == tuple(colours[0]) and tuple(colours[4]) == tuple(colours[2])
    assert colours[:3].sum(axis=1).tolist() == sorted(colours[:3].sum(axis=1).tolist())


def test_attention_grid_png_layout():
    image = Image.new("RGB", (64, 64), (180, 140, 120))
    density = np.zeros((64, 64))
    density[:32, 32:] = 1.0
    rows = [GridRow("img1\nmelanoma", image, [GridCell(density, "H 0.50\n-> melanoma", (40.0, 16.0, 8.0)),
                                              GridCell(None, "")]),
            GridRow("img2", image, [GridCell(np.ones((64, 64)), "H 1.00"), GridCell(None, "")])]
    png = attention_grid_png(rows, ["warmup", "stage2"], cell_px=80, footer="H: entropy. " * 30)
    out = Image.open(io.BytesIO(png))
    assert out.format == "PNG" and out.width == 8 + 3 * (80 + 6)
    assert out.height > 22 + 2 * (80 + 30 + 6) + 14                 # the long footer wraps to lines
    pixels = np.asarray(out.convert("RGB")).astype(int)
    cell = pixels[22 + 5:22 + 35, 8 + 86 + 45:8 + 86 + 75]             # warmup cell, hot top-right corner
    cold = pixels[22 + 45:22 + 75, 8 + 86 + 5:8 + 86 + 35]             # bottom-left, zero density
    assert cell.mean() > cold.mean() + 30


@pytest.mark.parametrize("cells", [[], [GridCell(None, "")]])
def test_attention_grid_png_degenerate(cells):
    png = attention_grid_png([GridRow("x", Image.new("RGB", (10, 20)), cells)], ["v"] * len(cells), cell_px=48)
    assert Image.open(io.BytesIO(png)).size[0] == 8 + (len(cells) + 1) * 54
