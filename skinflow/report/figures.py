"""Figures without a plotting library: inline SVG line and interval charts and the attention-map PNG grid.

SVG is text, so a chart embeds in the HTML report as is, diffs in review and needs no matplotlib
(not a dependency of this project). The attention grid is a PNG drawn with Pillow.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from html import escape
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
# Dark-to-bright anchors (inferno-like): perceptually ordered, readable over skin tones.
_HEAT = np.array([(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66),
                  (245, 125, 21), (250, 193, 39), (252, 255, 164)], dtype=float)


# ---- SVG line charts --------------------------------------------------------------------------------


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1-2-5 steps)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        return [low]
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = start
    while value <= high + 1e-9 * step:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.3g}"


def _downsample(xs: np.ndarray, ys: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    if len(xs) <= max_points:
        return xs, ys
    keep = np.unique(np.linspace(0, len(xs) - 1, max_points).round().astype(int))
    return xs[keep], ys[keep]


def svg_line_chart(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str,
                   x_label: str = "step", y_label: str = "", width: int = 560, height: int = 260,
                   max_points: int = 400) -> str:
    """An inline ``<svg>`` with one polyline per series; NaN/None points are gaps, not zeros."""
    left, right, top, bottom = 56, 12, 28, 40
    clean: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (xs, ys) in series.items():
        x = np.asarray(xs, dtype=float)
        y = np.asarray([np.nan if v is None else v for v in ys], dtype=float)
        clean[name] = _downsample(x, y, max_points)
    finite_x = np.concatenate([x[np.isfinite(x) & np.isfinite(y)] for x, y in clean.values()] or [np.array([])])
    finite_y = np.concatenate([y[np.isfinite(x) & np.isfinite(y)] for x, y in clean.values()] or [np.array([])])
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
            f'<rect width="{width}" height="{height}" fill="white"/>'
            f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-family="sans-serif">'
            f'{escape(title)}</text>')
    if finite_y.size == 0:
        return head + (f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12" '
                       f'font-family="sans-serif" fill="#666">no data</text></svg>')
    x0, x1 = float(finite_x.min()), float(finite_x.max())
    y0, y1 = float(finite_y.min()), float(finite_y.max())
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) or 1) * 0.05, y1 + (abs(y1) or 1) * 0.05
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    parts = [head, f'<g font-size="10" font-family="sans-serif" fill="#333">']
    for t in nice_ticks(y0, y1):
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{py(t) + 3:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in nice_ticks(x0, x1):
        parts.append(f'<text x="{px(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{_fmt(t)}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>'
                 f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>'
                 f'<text x="12" y="{top + ph / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + ph / 2})">{escape(y_label)}</text></g>')
    for i, (name, (x, y)) in enumerate(clean.items()):
        colour = PALETTE[i % len(PALETTE)]
        runs, run = [], []
        for xv, yv in zip(x, y):
            if math.isfinite(xv) and math.isfinite(yv):
                run.append(f"{px(xv):.1f},{py(yv):.1f}")
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
        for r in runs:
            if len(r) == 1:
                cx, cy = r[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>')
            else:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(r)}"/>')
        ly = top + 12 + 13 * i
        parts.append(f'<g font-size="10" font-family="sans-serif"><line x1="{left + pw - 150}" '
                     f'x2="{left + pw - 136}" y1="{ly - 3}" y2="{ly - 3}" stroke="{colour}" stroke-width="2"/>'
                     f'<text x="{left + pw - 132}" y="{ly}">{escape(name)}</text></g>')
    return "".join(parts) + "</svg>"


def svg_interval_chart(rows: Sequence[tuple[str, float | None, float | None, float | None]], title: str,
                       x_label: str = "%", width: int = 560, row_height: int = 22, highlight: str = "") -> str:
    """Horizontal dot-and-whisker chart: one line per ``(label, value, low, high)`` (a CI as the whisker),
    the ``highlight`` row in red; rows without a value say so instead of drawing a zero."""
    left, right, top, bottom = 150, 16, 28, 34
    height = top + bottom + row_height * max(1, len(rows))
    finite = [v for _, *vals in rows for v in vals if v is not None and math.isfinite(v)]
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
            f'<rect width="{width}" height="{height}" fill="white"/>'
            f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-family="sans-serif">'
            f'{escape(title)}</text>')
    if not finite:
        return head + (f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12" '
                       f'font-family="sans-serif" fill="#666">no data</text></svg>')
    ticks = nice_ticks(min(finite), max(finite))
    x0, x1 = min([*finite, *ticks]), max([*finite, *ticks])
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pw = width - left - right

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    parts = [head, '<g font-size="10" font-family="sans-serif" fill="#333">']
    bottom_y = top + row_height * len(rows)
    for t in ticks:
        parts.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top}" y2="{bottom_y}" stroke="#eee"/>'
                     f'<text x="{px(t):.1f}" y="{bottom_y + 14}" text-anchor="middle">{_fmt(t)}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text></g>')
    for i, (label, value, low, high) in enumerate(rows):
        y = top + row_height * i + row_height / 2
        colour = "#d62728" if label == highlight else "#1f77b4"
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                     f'font-family="sans-serif">{escape(label)}</text>')
        if value is None or not math.isfinite(value):
            parts.append(f'<text x="{left + 4}" y="{y + 4:.1f}" font-size="10" font-family="sans-serif" '
                         f'fill="#666">not produced</text>')
            continue
        if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
            parts.append(f'<line x1="{px(low):.1f}" x2="{px(high):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                         f'stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<circle cx="{px(value):.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>'
                     f'<text x="{px(value):.1f}" y="{y - 6:.1f}" text-anchor="middle" font-size="9" '
                     f'font-family="sans-serif" fill="#333">{_fmt(value)}</text>')
    return "".join(parts) + "</svg>"


# ---- attention grid PNG -----------------------------------------------------------------------------


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 along the dark-to-bright palette."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=float)), 0.0, 1.0) * (len(_HEAT) - 1)
    low = np.floor(v).astype(int)
    high = np.minimum(low + 1, len(_HEAT) - 1)
    frac = (v - low)[..., None]
    return (_HEAT[low] * (1 - frac) + _HEAT[high] * frac).round().astype(np.uint8)


@dataclass
class GridCell:
    density: np.ndarray | None        # (H, W) relevance per image pixel; None = not available
    caption: str = ""
    disc: tuple[float, float, float] | None = None   # lesion (cx, cy, radius) in image pixels


@dataclass
class GridRow:
    title: str
    image: Image.Image
    cells: list[GridCell] = field(default_factory=list)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType support: fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font, width: float) -> list[str]:
    """Greedy word wrap to a pixel width (paragraphs split on newlines)."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def overlay(image: Image.Image, density: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Heat overlay of ``density`` (scaled to its own max) on ``image`` (same pixel size)."""
    scaled = density / density.max() if density.max() > 0 else np.zeros_like(density)
    heat = Image.fromarray(heat_colours(scaled), "RGB").resize(image.size, Image.NEAREST)
    return Image.blend(image.convert("RGB"), heat, alpha)


def attention_grid_png(rows: Sequence[GridRow], columns: Sequence[str], cell_px: int = 160,
                       footer: str = "") -> bytes:
    """Rows = images (original first), columns = variants; per cell a heat overlay (scaled to the
    cell's own maximum), the lesion disc when known, and a two-line caption; ``footer`` below."""
    label_w, header_h, caption_h, gap = 8, 22, 30, 6
    n_cols = len(columns) + 1
    width = label_w + n_cols * (cell_px + gap)
    row_h = cell_px + caption_h + gap
    font, small = _font(13), _font(11)
    footer_lines = _wrap(footer, small, width - 2 * label_w) if footer else []
    height = header_h + max(1, len(rows)) * row_h + 14 * len(footer_lines)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(["image", *columns]):
        draw.text((label_w + c * (cell_px + gap) + cell_px / 2, 4), name, fill="black", font=font, anchor="ma")
    for r, row in enumerate(rows):
        y = header_h + r * row_h
        base = row.image.convert("RGB")
        scale = (cell_px / base.width, cell_px / base.height)
        tiles: list[tuple[GridCell | None, str]] = [(None, row.title)] + [(c, c.caption) for c in row.cells]
        for c, (cell, caption) in enumerate(tiles):
            x = label_w + c * (cell_px + gap)
            if cell is None:
                tile = base
            elif cell.density is None:
                tile = Image.new("RGB", base.size, (235, 235, 235))
            else:
                tile = overlay(base, cell.density)
            tile = tile.resize((cell_px, cell_px), Image.BILINEAR)
            canvas.paste(tile, (x, y))
            disc = row.cells[0].disc if cell is None and row.cells else cell.disc if cell else None
            if disc is not None:
                cx, cy, radius = disc
                box = [x + (cx - radius) * scale[0], y + (cy - radius) * scale[1],
                       x + (cx + radius) * scale[0], y + (cy + radius) * scale[1]]
                draw.ellipse(box, outline=(0, 255, 255), width=1)
            if cell is not None and cell.density is None:
                draw.text((x + cell_px / 2, y + cell_px / 2), "not available", fill="#555", font=small, anchor="mm")
            for line_no, line in enumerate(caption.split("\n")[:2]):
                draw.text((x + 2, y + cell_px + 2 + 13 * line_no), line, fill="black", font=small)
    for line_no, line in enumerate(footer_lines):
        draw.text((label_w, header_h + max(1, len(rows)) * row_h + 14 * line_no), line, fill="#333", font=small)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
