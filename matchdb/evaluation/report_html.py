"""The ``--html`` report: one self-contained file (inline SVG plots and ``data:`` thumbnails, no script), so it
can be mailed or attached to a ticket and opened offline.

The worst misses are shown as pictures because a number does not tell *why* a copy was missed; the copies are
made again from the originals (transforms are deterministic), since the run itself keeps only hashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup

from matchdb import pages
from matchdb.errors import MatchdbError
from matchdb.evaluation.metrics import EvalReport, HashTypeResult, dense, rate_label
from matchdb.evaluation.report_text import (
    distance_cell,
    false_match_cell,
    no_recommendation,
    recall_cell,
    recommended_text,
    shown_rates,
    threshold_cell,
)
from matchdb.evaluation.runner import load_original
from matchdb.evaluation.svg import Curve, roc_points, roc_svg
from matchdb.evaluation.transforms import make_copy
from matchdb.thumbnails import thumbnail_from_bytes

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


def _misses(result: HashTypeResult, thumbs: _Thumbnails) -> list[dict[str, Any]]:
    return [
        {
            "original": thumbs.get(miss.source, None),
            "copy_thumb": thumbs.get(miss.source, miss.transform),
            "transform": miss.transform,
            "distance": f"{miss.bits} bits = {miss.distance:.1f}",
            "source": miss.source,
        }
        for miss in result.worst_misses
    ]


def _lookalikes(result: HashTypeResult, thumbs: _Thumbnails) -> list[dict[str, Any]]:
    return [
        {
            "a": pair.a,
            "b": pair.b,
            "a_thumb": thumbs.get(pair.a, None),
            "b_thumb": thumbs.get(pair.b, None),
            "distance": f"{pair.bits} bits = {pair.distance:.1f}",
        }
        for pair in result.lookalikes[:LOOKALIKES_SHOWN]
    ]


def _roc_plots(report: EvalReport) -> list[Markup]:
    """The plots as inline SVG (made by :mod:`.svg`, which escapes its own text), marked safe for the template."""
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
    return [Markup(plot) for plot in plots]


def _true_histogram(result: HashTypeResult, columns: Sequence[int]) -> np.ndarray:
    """True-pair distances of several transforms pooled."""
    total = np.zeros(result.nbits + 1, dtype=np.int64)
    for j in columns:
        total += dense(result.transforms[j].histogram, result.nbits)
    return total


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> dict[str, Any]:
    return {"header": list(header), "rows": [list(row) for row in rows]}


def render(report: EvalReport, root: Path, max_pixels: int) -> str:
    """The whole HTML page (``matchdb/templates/eval.html``)."""
    names = [res.name for res in report.results]
    header = ["hash type", "bits", "distinct pairs"] + [f"FMR ≤ {rate_label(r)}" for r in report.rates]
    thresholds = [
        [res.name, str(res.nbits), f"{res.distinct_pairs:,}"]
        + [threshold_cell(res.threshold(r)) for r in (*report.rates, 0.0)]
        + [recommended_text(res)]
        for res in report.results
    ]
    false_matches = [[res.name] + [false_match_cell(res.threshold(r)) for r in report.rates] for res in report.results]
    recalls = []
    for rate in shown_rates(report):
        position = [*report.rates, 0.0].index(rate)
        rows = [
            [t["name"]] + [recall_cell(res.transforms[j].recall[position]) for res in report.results]
            for j, t in enumerate(report.transforms)
        ]
        rows.append(["all but geometry"] + [recall_cell(res.pooled.recall[position]) for res in report.results])
        label = "with no false match" if rate == 0 else f"at FMR ≤ {rate_label(rate)}"
        recalls.append({"label": label, **_table(["transform", *names], rows)})
    distances = [
        [t["name"]] + [distance_cell(res.transforms[j]) for res in report.results]
        for j, t in enumerate(report.transforms)
    ]
    thumbs = _Thumbnails(root, report.seed, max_pixels)
    summary = (
        f"{report.sources} of {report.images_found} images, {len(report.transforms)} transforms, "
        f"seed {report.seed}, dihedral {'on' if report.dihedral else 'off'}, "
        f"hashing {report.hashing_seconds:.1f} s. {' '.join(no_recommendation(report))}"
    ).rstrip()
    return pages.render(
        "eval.html",
        directory=report.directory,
        summary=summary,
        groups_file=report.groups_file,
        grouped_images=report.grouped_images,
        skipped=report.skipped,
        thresholds=_table([*header, "no false match", "recommended range"], thresholds),
        false_matches=_table(["hash type"] + [f"FMR ≤ {rate_label(r)}" for r in report.rates], false_matches),
        recalls=recalls,
        plots=_roc_plots(report),
        distances=_table(["transform", *names], distances),
        results=[
            {"name": res.name, "misses": _misses(res, thumbs), "lookalikes": _lookalikes(res, thumbs)}
            for res in report.results
        ],
    )
