"""The terminal report of ``matchdb eval``: plain fixed-width tables, readable in a log or a ticket."""

from __future__ import annotations

from collections.abc import Sequence

from matchdb.dedupe import DEFAULT_RANGE
from matchdb.evaluation.metrics import (
    MIN_IMAGE_PAIRS,
    RECOMMEND_RATE,
    DistanceStats,
    EvalReport,
    HashTypeResult,
    Recall,
    Threshold,
    images_for_pairs,
    rate_label,
)


def threshold_cell(point: Threshold | None) -> str:
    if point is None or not point.meaningful:
        return "n/a"
    if point.bits is None:
        return "none"
    return f"{point.bits} b = {point.range:.1f}"


def false_match_cell(point: Threshold | None) -> str:
    if point is None or not point.meaningful or point.bits is None:
        return "n/a"
    return f"{point.false_matches:,} / {point.source_pairs:,}"


def recall_cell(recall: Recall | None, interval: bool = True) -> str:
    if recall is None:
        return "n/a"
    text = f"{100 * recall.recall:.1f}"
    return f"{text} ({100 * recall.low:.1f}-{100 * recall.high:.1f})" if interval else text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


def shown_rates(report: EvalReport) -> list[float]:
    """The rates worth a recall table: those some hash type can show; rate 0 only if no other is shown."""
    rates = [r for r in report.rates if any(t.meaningful for res in report.results if (t := res.threshold(r)))]
    return rates or [0.0]


def _recall_rows(report: EvalReport, position: int) -> list[list[str]]:
    rows = []
    names = [t["name"] for t in report.transforms]
    for j, name in enumerate(names):
        rows.append([name] + [recall_cell(res.transforms[j].recall[position]) for res in report.results])
    rows.append(["all but geometry"] + [recall_cell(res.pooled.recall[position]) for res in report.results])
    return rows


def distance_cell(stats: DistanceStats) -> str:
    """Median / 95th percentile / max of the true-pair distances, in bits."""
    if stats.median is None or stats.p95 is None:
        return "n/a"
    return f"{round(stats.median, 1):g} / {round(stats.p95, 1):g} / {stats.max}"


def recommended_text(result: HashTypeResult) -> str:
    point = result.recommended
    if point is None or point.range is None:
        return "none (too few images)" if result.image_pairs < MIN_IMAGE_PAIRS else "none"
    return f"{point.range:.1f} (FMR <= {rate_label(point.rate)})"


def no_recommendation(report: EvalReport) -> list[str]:
    """Why there is no recommended range, in plain words, and what to do instead; empty when there is one."""
    small = [res for res in report.results if res.recommended is None and res.image_pairs < MIN_IMAGE_PAIRS]
    if not small:
        return []
    pairs = min(res.image_pairs for res in small)
    defaults = ", ".join(f"{name} {value}" for name, value in DEFAULT_RANGE.items())
    return [
        f"No range is recommended: {report.sources} images make {pairs:,} pairs of different images, too few to show",
        f"a false-match rate of {rate_label(RECOMMEND_RATE)} (that needs {MIN_IMAGE_PAIRS:,} pairs: at least "
        f"{images_for_pairs(MIN_IMAGE_PAIRS)} distinct images).",
        "The thresholds above describe this folder only; a range taken from them can group unrelated images.",
        f"Meanwhile keep the defaults ({defaults}: FMR 1e-4 on 421 photos, docs/accuracy.md).",
    ]


def render(report: EvalReport) -> str:
    """The whole terminal report."""
    names = [res.name for res in report.results]
    out = [
        f"matchdb eval: {report.sources} of {report.images_found} images in {report.directory}, "
        f"{len(report.transforms)} transforms, seed {report.seed}, dihedral {'on' if report.dihedral else 'off'}",
    ]
    if report.groups_file:
        excluded = ", ".join(f"{res.name} {res.excluded_pairs:,}" for res in report.results)
        out.append(
            f"groups: {report.groups_file} ({report.grouped_images} images in known groups; pairs excluded: {excluded})"
        )
    if report.skipped:
        out.append(f"skipped {len(report.skipped)} unreadable files (listed on stderr and in --json)")
    if report.copy_failures:
        out.append(f"{len(report.copy_failures)} copies could not be made (see --json)")

    out += ["", "Thresholds: largest distance whose false-match rate (FMR) on distinct pairs is within the rate,"]
    out.append("in bits (b) and as the API's range (percent of the hash's bits). n/a: too few pairs to show the rate.")
    header = ["hash type", "bits", "distinct pairs"] + [f"FMR<={rate_label(r)}" for r in report.rates]
    header += ["no false match", "recommended range"]
    rows = []
    for res in report.results:
        cells = [res.name, str(res.nbits), f"{res.distinct_pairs:,}"]
        cells += [threshold_cell(res.threshold(r)) for r in (*report.rates, 0.0)]
        rows.append([*cells, recommended_text(res)])
    out += _table(header, rows)
    out += ["", "False matches at those thresholds: distinct pairs / pairs of different images they come from"]
    rows = [[res.name] + [false_match_cell(res.threshold(r)) for r in report.rates] for res in report.results]
    out += _table(["hash type"] + [f"FMR<={rate_label(r)}" for r in report.rates], rows)

    for rate in shown_rates(report):
        position = [*report.rates, 0.0].index(rate)
        label = "with no false match" if rate == 0 else f"at FMR <= {rate_label(rate)}"
        out += ["", f"Recall {label} (% of copies matched, 95% interval)"]
        out += _table(["transform", *names], _recall_rows(report, position))

    out += ["", "True-pair distance in bits: median / 95th percentile / max"]
    rows = [
        [t["name"]] + [distance_cell(res.transforms[j]) for res in report.results]
        for j, t in enumerate(report.transforms)
    ]
    out += _table(["transform", *names], rows)
    out += ["", "Closest pairs of different images (if some are duplicates, list them in a --groups file)"]
    for res in report.results:
        pairs = ", ".join(f"{p.a} ~ {p.b} ({p.bits} b)" for p in res.lookalikes[:3]) or "none"
        out.append(f"{res.name}: {pairs}")
    out += ["", "recommended range: " + "; ".join(f"{res.name} {recommended_text(res)}" for res in report.results)]
    out += no_recommendation(report)
    out.append(f"hashing took {report.hashing_seconds:.1f} s")
    return "\n".join(out) + "\n"
