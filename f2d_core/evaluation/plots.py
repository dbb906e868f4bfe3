"""Small PNG charts drawn with Pillow (no plotting library): identity against text fidelity, best-of-N,
same- vs different-identity similarity histograms."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from ..atomic_io import atomic_write

WIDTH, HEIGHT = 560, 400
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 60, 150, 48, 44
COSINE, SHARE = (-1.0, 1.0), (0.0, 1.0)  # what a cosine similarity and a share of pairs can be
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


def _tick(value: float, span: float) -> str:
    """A tick label with as many decimals as the axis span needs (0.5499 and 0.5501 stay apart)."""
    decimals = max(0, 1 - math.floor(math.log10(span / 4))) if span > 0 else 2
    return f"{value:.{min(decimals, 6)}f}"


def axis_range(values: Sequence[float], bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """Axis limits with a little room around the data, kept within `bounds` (what the quantity can be:
    (-1, 1) for a cosine, (0, 1) for a share), so no tick names an impossible value."""
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or max(abs(high) * 0.1, 0.01)
    low, high = low - pad, high + pad
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return low, high


_range = axis_range


class _Chart:
    """Axes with ticks, a title and a legend on a white canvas."""

    def __init__(
        self,
        title: str,
        note: str,
        x_label: str,
        y_label: str,
        xs: Sequence[float],
        ys: Sequence[float],
        x_bounds: tuple[float, float] | None = None,
        y_bounds: tuple[float, float] | None = None,
    ):
        self.image = Image.new("RGB", (WIDTH, HEIGHT), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.x_range, self.y_range = axis_range(xs, x_bounds), axis_range(ys, y_bounds)
        self.left, self.top = MARGIN_LEFT, MARGIN_TOP
        self.right, self.bottom = WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM
        d = self.draw
        d.text((self.left, 8), title, fill="black")
        d.text((self.left, 24), note, fill=(170, 0, 0))
        d.rectangle((self.left, self.top, self.right, self.bottom), outline="black")
        for k in range(5):
            fx = self.x_range[0] + (self.x_range[1] - self.x_range[0]) * k / 4
            fy = self.y_range[0] + (self.y_range[1] - self.y_range[0]) * k / 4
            px, py = self.px(fx, fy)
            d.line((px, self.bottom, px, self.bottom + 4), fill="black")
            d.text((px - 14, self.bottom + 6), _tick(fx, self.x_range[1] - self.x_range[0]), fill="black")
            d.line((self.left - 4, py, self.left, py), fill="black")
            d.text((4, py - 6), _tick(fy, self.y_range[1] - self.y_range[0]), fill="black")
        d.text(((self.left + self.right) // 2 - 30, HEIGHT - 16), x_label, fill="black")
        d.text((4, self.top - 14), y_label, fill="black")
        self.legend_row = 0

    def px(self, x: float, y: float) -> tuple[float, float]:
        """Data coordinates -> pixels."""
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        return (
            self.left + (x - x0) / (x1 - x0) * (self.right - self.left),
            self.bottom - (y - y0) / (y1 - y0) * (self.bottom - self.top),
        )

    def legend(self, label: str, colour: tuple[int, int, int]) -> None:
        y = self.top + 6 + 16 * self.legend_row
        self.draw.rectangle((self.right + 10, y, self.right + 20, y + 10), fill=colour)
        self.draw.text((self.right + 26, y - 1), label[:20], fill="black")
        self.legend_row += 1

    def save(self, path: Path) -> Path:
        return atomic_write(Path(path), lambda tmp: self.image.save(tmp, format="PNG", optimize=True))


def identity_vs_text_plot(points: Mapping[str, tuple[float, float]], path: Path, note: str = "") -> Path:
    """Scatter of (identity, CLIP score) per setting -> PNG at `path`."""
    chart = _Chart(
        "identity vs. prompt fidelity", note, "identity (cosine)", "CLIP score",
        [p[0] for p in points.values()], [p[1] for p in points.values()],
    )  # fmt: skip
    for k, (setting, (x, y)) in enumerate(points.items()):
        colour = COLOURS[k % len(COLOURS)]
        cx, cy = chart.px(x, y)
        chart.draw.ellipse((cx - 5, cy - 5, cx + 5, cy + 5), fill=colour)
        chart.legend(setting, colour)
    return chart.save(path)


def best_of_n_plot(curves: Mapping[str, Mapping[int, float]], path: Path, note: str = "") -> Path:
    """Best-of-N hMean against N (log2 axis) per setting -> PNG at `path`."""
    xs = [math.log2(n) for curve in curves.values() for n in curve] or [0.0, 1.0]
    ys = [v for curve in curves.values() for v in curve.values()] or [0.0, 1.0]
    chart = _Chart("best of N (kept by hMean)", note, "log2(N)", "hMean", xs, ys)
    for k, (setting, curve) in enumerate(curves.items()):
        colour = COLOURS[k % len(COLOURS)]
        pts = [chart.px(math.log2(n), v) for n, v in sorted(curve.items())]
        if len(pts) > 1:
            chart.draw.line(pts, fill=colour, width=2)
        for cx, cy in pts:
            chart.draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=colour)
        chart.legend(setting, colour)
    return chart.save(path)


def similarity_histogram_plot(
    same: Sequence[float],
    different: Sequence[float],
    path: Path,
    title: str,
    note: str = "",
    threshold: float | None = None,
    bins: int = 40,
) -> Path:
    """Histograms of same-identity and different-identity pair cosines (as the paper's Fig. 4) -> PNG.

    Each kind is normalised to fractions of its own pairs, so the two shapes compare at any pair counts;
    `threshold` (a cosine) is drawn as a grey vertical line.
    """
    values = [*same, *different]
    low, high = axis_range(values, COSINE)
    width = (high - low) / bins

    def fractions(scores: Sequence[float]) -> list[float]:
        counts = [0] * bins
        for s in scores:
            counts[min(bins - 1, max(0, int((s - low) / width)))] += 1
        return [c / max(1, len(scores)) for c in counts]

    curves = {"same identity": fractions(same), "different identities": fractions(different)}
    peak = max(max(f) for f in curves.values())
    chart = _Chart(
        title, note, "cosine similarity of the pair", "share of pairs", [low, high], [0.0, peak], COSINE, SHARE
    )
    for k, (label, fraction) in enumerate(curves.items()):
        colour = COLOURS[k]
        points = []
        for b, f in enumerate(fraction):  # a step outline: across each bin at its height
            points += [chart.px(low + b * width, f), chart.px(low + (b + 1) * width, f)]
        chart.draw.line([chart.px(low, 0.0), *points, chart.px(high, 0.0)], fill=colour, width=2)
        chart.legend(label, colour)
    if threshold is not None and low < threshold < high:
        x, _ = chart.px(threshold, 0.0)
        chart.draw.line((x, chart.top, x, chart.bottom), fill=(150, 150, 150), width=1)
        chart.legend("best threshold", (150, 150, 150))
    return chart.save(path)


def contact_sheet(panels: Sequence[Image.Image], columns: int = 3) -> Image.Image:
    """Equal-sized chart images on a grid of `columns` (fewer when there are fewer panels), row by row, on
    white: one readable page instead of a strip as wide as all of them."""
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    width, height = max(p.width for p in panels), max(p.height for p in panels)
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for k, panel in enumerate(panels):
        sheet.paste(panel, ((k % columns) * width, (k // columns) * height))
    return sheet
