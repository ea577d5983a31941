"""The ``--html`` report: one self-contained file (inline SVG plots and ``data:`` thumbnails, no script), so it
can be mailed or attached to a ticket and opened offline.

The worst misses are shown as pictures because a number does not tell *why* a copy was missed; the copies are
made again from the originals (transforms are deterministic), since the run itself keeps only hashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

import numpy as np

from matchdb.errors import MatchdbError
from matchdb.evaluation.metrics import EvalReport, HashTypeResult, dense, rate_label
from matchdb.evaluation.report_text import (
    distance_cell,
    false_match_cell,
    recall_cell,
    recommended_text,
    shown_rates,
    threshold_cell,
)
from matchdb.evaluation.runner import load_original
from matchdb.evaluation.svg import Curve, roc_points, roc_svg
from matchdb.evaluation.transforms import make_copy
from matchdb.thumbnails import thumbnail_from_bytes

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.miss img { max-width: 160px; max-height: 160px; display: block; }
.miss td { text-align: left; }
.note { color: #666; }
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


LOOKALIKES_SHOWN = 5


class _Thumbnails:
    """Thumbnails of originals and of their copies, each copy made once."""

    def __init__(self, root: Path, seed: int, max_pixels: int) -> None:
        self.root, self.seed, self.max_pixels = root, seed, max_pixels
        self.cache: dict[tuple[str, str | None], str | None] = {}

    def get(self, key: str, transform: str | None) -> str | None:
        if (key, transform) not in self.cache:
            self.cache[(key, transform)] = self._make(key, transform)
        return self.cache[(key, transform)]

    def _make(self, key: str, transform: str | None) -> str | None:
        path = self.root / key
        try:
            if transform is None:
                return thumbnail_from_bytes(path.read_bytes())
            _pixels, image = load_original(path, self.max_pixels)
            return thumbnail_from_bytes(make_copy(image, transform, self.seed, key))
        except (OSError, ValueError, MatchdbError):
            return None


def _img(uri: str | None, alt: str) -> str:
    return f'<img src="{uri}" alt="{escape(alt)}">' if uri else f"<span class='note'>({escape(alt)} unavailable)</span>"


def _misses(result: HashTypeResult, thumbs: _Thumbnails) -> str:
    if not result.worst_misses:
        return "<p>No copy is beyond the recommended range.</p>"
    rows = []
    for miss in result.worst_misses:
        rows.append(
            "<tr class='miss'>"
            f"<td>{_img(thumbs.get(miss.source, None), 'original')}</td>"
            f"<td>{_img(thumbs.get(miss.source, miss.transform), miss.transform)}</td>"
            f"<td>{escape(miss.transform)}</td><td>{miss.bits} bits = {miss.distance:.1f}</td>"
            f"<td>{escape(miss.source)}</td></tr>"
        )
    head = "<tr><th>original</th><th>copy</th><th>transform</th><th>distance</th><th>source</th></tr>"
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _lookalikes(result: HashTypeResult, thumbs: _Thumbnails) -> str:
    if not result.lookalikes:
        return "<p>None.</p>"
    rows = [
        "<tr class='miss'>"
        f"<td>{_img(thumbs.get(pair.a, None), pair.a)}</td><td>{_img(thumbs.get(pair.b, None), pair.b)}</td>"
        f"<td>{pair.bits} bits = {pair.distance:.1f}</td><td>{escape(pair.a)}<br>{escape(pair.b)}</td></tr>"
        for pair in result.lookalikes[:LOOKALIKES_SHOWN]
    ]
    head = "<tr><th>image</th><th>image</th><th>distance</th><th>files</th></tr>"
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _roc_plots(report: EvalReport) -> str:
    categories: dict[str, list[int]] = {}
    for j, transform in enumerate(report.transforms):
        categories.setdefault(transform["category"], []).append(j)
    smallest = min((res.distinct_pairs for res in report.results if res.distinct_pairs), default=10)
    min_rate = min(1e-5, 1 / smallest)
    plots = []
    for res in report.results:
        distinct = dense(res.distinct_histogram, res.nbits)
        curves = [
            Curve(category, roc_points(distinct, _true_histogram(res, columns)))
            for category, columns in categories.items()
        ]
        plots.append(roc_svg(f"{res.name}: ROC by kind of transform", curves, min_rate, report.rates))
    pooled = [
        Curve(res.name, roc_points(dense(res.distinct_histogram, res.nbits), dense(res.pooled.histogram, res.nbits)))
        for res in report.results
    ]
    plots.insert(0, roc_svg("All hash types, all transforms but geometry", pooled, min_rate, report.rates))
    return "<div class='plots'>" + "".join(f"<figure>{plot}</figure>" for plot in plots) + "</div>"


def _true_histogram(result: HashTypeResult, columns: Sequence[int]) -> np.ndarray:
    """True-pair distances of several transforms pooled."""
    total = np.zeros(result.nbits + 1, dtype=np.int64)
    for j in columns:
        total += dense(result.transforms[j].histogram, result.nbits)
    return total


def render(report: EvalReport, root: Path, max_pixels: int) -> str:
    """The whole HTML page."""
    names = [res.name for res in report.results]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>matchdb eval: {escape(report.directory)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>matchdb eval: {escape(report.directory)}</h1>",
        f"<p>{report.sources} of {report.images_found} images, {len(report.transforms)} transforms, "
        f"seed {report.seed}, dihedral {'on' if report.dihedral else 'off'}, "
        f"hashing {report.hashing_seconds:.1f} s.",
    ]
    if report.groups_file:
        parts.append(f" Known duplicate groups: {escape(report.groups_file)} ({report.grouped_images} images).")
    parts.append("</p>")
    if report.skipped:
        items = "".join(f"<li>{escape(f['file'])}: {escape(f['error'])}</li>" for f in report.skipped)
        parts.append(f"<p>Skipped (unreadable):</p><ul>{items}</ul>")

    parts.append("<h2>Thresholds</h2><p class='note'>The largest distance whose false-match rate (FMR) on distinct")
    parts.append(" pairs stays within the rate, in bits (b) and as the API's <code>range</code> (percent of the")
    parts.append(" hash's bits). n/a: too few distinct pairs to show that rate.</p>")
    header = ["hash type", "bits", "distinct pairs"] + [f"FMR ≤ {rate_label(r)}" for r in report.rates]
    rows = [
        [res.name, str(res.nbits), f"{res.distinct_pairs:,}"]
        + [threshold_cell(res.threshold(r)) for r in (*report.rates, 0.0)]
        + [recommended_text(res)]
        for res in report.results
    ]
    parts.append(_table([*header, "no false match", "recommended range"], rows))
    parts.append("<p class='note'>False matches at those thresholds: distinct pairs / pairs of different images")
    parts.append(" they come from (the copies of one look-alike image make many correlated pairs).</p>")
    rows = [[res.name] + [false_match_cell(res.threshold(r)) for r in report.rates] for res in report.results]
    parts.append(_table(["hash type"] + [f"FMR ≤ {rate_label(r)}" for r in report.rates], rows))

    for rate in shown_rates(report):
        position = [*report.rates, 0.0].index(rate)
        label = "with no false match" if rate == 0 else f"at FMR ≤ {rate_label(rate)}"
        parts.append(f"<h2>Recall {label}</h2><p class='note'>% of copies matched (95% Wilson interval).</p>")
        rows = [
            [t["name"]] + [recall_cell(res.transforms[j].recall[position]) for res in report.results]
            for j, t in enumerate(report.transforms)
        ]
        rows.append(["all but geometry"] + [recall_cell(res.pooled.recall[position]) for res in report.results])
        parts.append(_table(["transform", *names], rows))

    parts.append("<h2>ROC curves</h2>")
    parts.append(
        "<p class='note'>Recall against false-match rate as the threshold grows; dashed lines at the reported "
        "rates; rates below the axis (including 0) are drawn on its left edge.</p>"
    )
    parts.append(_roc_plots(report))

    parts.append("<h2>True-pair distances (bits)</h2><p class='note'>median / 95th percentile / max</p>")
    rows = [
        [t["name"]] + [distance_cell(res.transforms[j]) for res in report.results]
        for j, t in enumerate(report.transforms)
    ]
    parts.append(_table(["transform", *names], rows))

    thumbs = _Thumbnails(root, report.seed, max_pixels)
    parts.append("<h2>Worst misses</h2><p class='note'>For each transform, the copy farthest from its original, ")
    parts.append("if beyond the recommended range.</p>")
    for res in report.results:
        parts.append(f"<h3>{escape(res.name)}</h3>{_misses(res, thumbs)}")
    parts.append("<h2>Closest pairs of different images</h2><p class='note'>The nearest any version of one image ")
    parts.append("comes to the other's original. Look-alikes set the false-match rate; if a pair is in fact a ")
    parts.append("duplicate, list it in a <code>--groups</code> file.</p>")
    for res in report.results:
        parts.append(f"<h3>{escape(res.name)}</h3>{_lookalikes(res, thumbs)}")
    parts.append("</body></html>")
    return "\n".join(parts)
