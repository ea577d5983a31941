"""ROC curves as inline SVG: the HTML report stays one self-contained file that needs no script or library."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


@dataclass(frozen=True)
class Curve:
    label: str
    points: list[tuple[float, float]]  # (false-match rate, recall), threshold increasing


def roc_points(distinct: np.ndarray, true: np.ndarray) -> list[tuple[float, float]]:
    """(FMR, recall) at every threshold from 0 to the hash length, from the two distance histograms."""
    pairs, copies = int(distinct.sum()), int(true.sum())
    if pairs == 0 or copies == 0:
        return []
    fmr = np.cumsum(distinct) / pairs
    recall = np.cumsum(true) / copies
    points: list[tuple[float, float]] = []
    for x, y in zip(fmr.tolist(), recall.tolist(), strict=True):
        if not points or (x, y) != points[-1]:
            points.append((x, y))
    return points


def roc_svg(title: str, curves: Sequence[Curve], min_rate: float, marks: Sequence[float] = ()) -> str:
    """A recall-vs-FMR plot, FMR on a log axis from ``min_rate`` to 1 (lower rates, including 0, sit on the left
    edge); dashed verticals at ``marks``."""
    width, height, left, right, top, bottom = 560, 340, 56, 150, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    low = math.floor(math.log10(min_rate))

    def x_of(rate: float) -> float:
        position = (max(math.log10(rate), low) if rate > 0 else low) - low
        return left + plot_w * position / -low

    def y_of(recall: float) -> float:
        return top + plot_h * (1 - recall)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
    ]
    for exponent in range(low, 1):
        x = x_of(10.0**exponent)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#eee"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="middle">1e{exponent}</text>'
        )
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y_of(tick)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 3:.1f}" font-size="10" text-anchor="end">{tick:.0%}</text>')
    for mark in marks:
        x = x_of(mark)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#555" stroke-dasharray="3,3"/>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" font-size="11" text-anchor="middle">'
        "false-match rate (log)</text>"
    )
    parts.append(
        f'<text x="14" y="{top + plot_h / 2:.0f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.0f})">recall</text>'
    )
    for number, curve in enumerate(curves):
        colour = PALETTE[number % len(PALETTE)]
        coords = " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in curve.points)
        parts.append(
            f'<polyline class="curve" fill="none" stroke="{colour}" stroke-width="1.8" points="{coords}">'
            f"<title>{escape(curve.label)}</title></polyline>"
        )
        legend_y = top + 6 + 16 * number
        legend_x = left + plot_w + 10
        parts.append(
            f'<line x1="{legend_x}" y1="{legend_y}" x2="{legend_x + 18}" y2="{legend_y}" stroke="{colour}" '
            'stroke-width="2"/>'
        )
        parts.append(f'<text x="{legend_x + 22}" y="{legend_y + 4}" font-size="11">{escape(curve.label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
