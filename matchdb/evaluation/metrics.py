"""From distances to answers: thresholds at fixed false-match rates, recall with intervals, the recommended range.

Definitions (docs/accuracy.md explains them for users):

* a *true pair* is an original and one of its copies; a *distinct pair* is an original or a copy against the
  original of another source (pairs inside a known duplicate group are neither);
* two hashes *match* at threshold ``t`` bits when their Hamming distance is ``<= t``; the false-match rate (FMR)
  is the share of distinct pairs that match, recall the share of true pairs that match;
* the threshold at rate ``r`` is the largest ``t`` whose FMR is ``<= r``. It is only reported when the distinct
  pairs could show that rate (at least :data:`MIN_FALSE_MATCHES` expected false matches), otherwise a small
  folder would "prove" a rate it cannot see. Rate 0 ("no false match at all in this folder") is always reported;
* thresholds are also given in API.md's unit, the ``range`` a user passes: percent of the hash's bits, one
  decimal, matching when the shown distance is ``<= range``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from matchdb.evaluation.distances import Distinct

#: The false-match rates reported; 0 is added as "none at all".
RATES: tuple[float, ...] = (1e-3, 1e-4, 1e-5)
#: The rate the recommended ``range`` is chosen at.
RECOMMEND_RATE = 1e-4
#: A rate is reported only if the distinct pairs would hold at least this many false matches at it.
MIN_FALSE_MATCHES = 10
#: Pairs of different images a range is recommended from: the copies of one image make correlated distinct
#: pairs, so only pairs of images can show a rate of 1e-4 (1 in 10,000), and only if there are 10,000 of them.
MIN_IMAGE_PAIRS = round(1 / RECOMMEND_RATE)
#: Worst misses kept per hash type (one per transform at most).
WORST_MISSES = 12
#: Closest pairs of different images kept per hash type.
LOOKALIKES = 10

_Z95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default): unlike the normal approximation it stays inside
    [0, 1] and is not degenerate at 0% or 100%, which is where recall usually sits."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def meaningful(rate: float, pairs: int) -> bool:
    """Whether ``pairs`` distinct pairs can show a false-match rate of ``rate``."""
    return rate == 0 or pairs * rate >= MIN_FALSE_MATCHES * (1 - 1e-9)


def images_for_pairs(pairs: int) -> int:
    """The fewest distinct images that make ``pairs`` pairs of different images (n (n - 1) / 2 >= pairs)."""
    n = math.ceil((1 + math.sqrt(1 + 8 * pairs)) / 2)
    return n - 1 if (n - 1) * (n - 2) // 2 >= pairs else n


def threshold_at(histogram: np.ndarray, rate: float) -> int | None:
    """The largest distance ``t`` (bits) with ``#(distinct <= t) <= rate * #distinct``; None if even ``t = 0``
    matches too many (identical hashes of distinct images) or there are no pairs."""
    total = int(histogram.sum())
    if total == 0:
        return None
    allowed = math.floor(rate * total + 1e-9)
    within = np.nonzero(np.cumsum(histogram) <= allowed)[0]
    return int(within[-1]) if len(within) else None


def shown(bits: int, nbits: int) -> float:
    """A bit count as the API shows a distance: percent of the hash length, one decimal."""
    return round(100 * bits / nbits, 1)


def range_upto(bits: int, nbits: int) -> float:
    """The largest ``range`` (0.1 steps) that still matches exactly the distances ``<= bits``."""
    if bits >= nbits:
        return 100.0
    return max(shown(bits, nbits), round(shown(bits + 1, nbits) - 0.1, 1))


def percentile(histogram: np.ndarray, fraction: float) -> int | None:
    """The smallest distance at or below which ``fraction`` of the histogram lies."""
    total = int(histogram.sum())
    if total == 0:
        return None
    return int(np.searchsorted(np.cumsum(histogram), max(1.0, fraction * total)))


@dataclass(frozen=True)
class Threshold:
    """The operating point at one false-match rate. ``bits``/``range`` are None when not ``meaningful`` or when
    no threshold reaches the rate."""

    rate: float
    meaningful: bool
    bits: int | None
    range: float | None
    range_upto: float | None
    false_matches: int
    fmr: float
    #: Pairs of different images behind the false matches: copies of one image make correlated pairs, so a
    #: handful of look-alike images can account for every false match.
    source_pairs: int


@dataclass(frozen=True)
class Recall:
    rate: float
    matched: int
    pairs: int
    recall: float
    low: float
    high: float


@dataclass(frozen=True)
class DistanceStats:
    """True-pair distances of one transform (or a pool of them), in bits, and recall at each threshold
    (None where the threshold is not available)."""

    name: str
    category: str
    pairs: int
    failed: int
    median: float | None
    p95: float | None
    max: int | None
    histogram: list[tuple[int, int]]
    recall: list[Recall | None]


@dataclass(frozen=True)
class Miss:
    source: str
    transform: str
    bits: int
    distance: float


@dataclass(frozen=True)
class Lookalike:
    """Two different images whose versions come close: either a real look-alike the hash cannot tell apart, or an
    unlisted duplicate (then it belongs in ``--groups``)."""

    a: str
    b: str
    bits: int
    distance: float


@dataclass(frozen=True)
class HashTypeResult:
    name: str
    nbits: int
    distinct_pairs: int
    image_pairs: int  # pairs of different images compared (those inside a --groups group excluded)
    excluded_pairs: int
    distinct_histogram: list[tuple[int, int]]
    distinct_percentiles: dict[str, int | None]
    thresholds: list[Threshold]
    recommended: Threshold | None
    transforms: list[DistanceStats]
    pooled: DistanceStats
    worst_misses: list[Miss]
    lookalikes: list[Lookalike]

    def threshold(self, rate: float) -> Threshold | None:
        return next((t for t in self.thresholds if t.rate == rate), None)


def thresholds(distinct: Distinct, nbits: int, rates: Sequence[float]) -> list[Threshold]:
    """One :class:`Threshold` per rate, then rate 0."""
    histogram = distinct.histogram
    total = int(histogram.sum())
    cumulative = np.cumsum(histogram)
    out = []
    for rate in (*rates, 0.0):
        ok = meaningful(rate, total) and total > 0
        bits = threshold_at(histogram, rate) if ok else None
        matches = int(cumulative[bits]) if bits is not None else 0
        out.append(
            Threshold(
                rate,
                ok,
                bits,
                shown(bits, nbits) if bits is not None else None,
                range_upto(bits, nbits) if bits is not None else None,
                matches,
                matches / total if total else 0.0,
                distinct.source_pairs_within(bits) if bits is not None else 0,
            )
        )
    return out


def recommend(points: Sequence[Threshold], image_pairs: int) -> Threshold | None:
    """The threshold at :data:`RECOMMEND_RATE`, or None when the folder cannot support one: fewer than
    :data:`MIN_IMAGE_PAIRS` pairs of different images. No fallback to a looser rate or to "no false match": on 20
    photos those are set by a handful of image pairs and can be nine times the safe range (issue 26)."""
    if image_pairs < MIN_IMAGE_PAIRS:
        return None
    return next((t for t in points if t.rate == RECOMMEND_RATE and t.meaningful and t.bits is not None), None)


def distance_stats(
    name: str, category: str, distances: np.ndarray, nbits: int, points: Sequence[Threshold]
) -> DistanceStats:
    """Summary of true-pair distances (``-1`` marks a failed copy)."""
    valid = distances[distances >= 0]
    counts = np.bincount(valid, minlength=nbits + 1) if len(valid) else np.zeros(nbits + 1, dtype=np.int64)
    recalls: list[Recall | None] = []
    for point in points:
        if point.bits is None or len(valid) == 0:
            recalls.append(None)
            continue
        matched = int((valid <= point.bits).sum())
        low, high = wilson_interval(matched, len(valid))
        recalls.append(Recall(point.rate, matched, len(valid), matched / len(valid), low, high))
    return DistanceStats(
        name,
        category,
        len(valid),
        int((distances < 0).sum()),
        float(np.median(valid)) if len(valid) else None,
        float(np.percentile(valid, 95)) if len(valid) else None,
        int(valid.max()) if len(valid) else None,
        sparse(counts),
        recalls,
    )


def sparse(histogram: np.ndarray) -> list[tuple[int, int]]:
    """A histogram as ``(distance, count)`` pairs of its non-empty bins."""
    return [(int(d), int(histogram[d])) for d in np.nonzero(histogram)[0]]


def dense(pairs: Sequence[tuple[int, int]], nbits: int) -> np.ndarray:
    out = np.zeros(nbits + 1, dtype=np.int64)
    for distance, count in pairs:
        out[distance] = count
    return out


def worst_misses(
    true: np.ndarray, keys: Sequence[str], transform_names: Sequence[str], nbits: int, limit_bits: int | None
) -> list[Miss]:
    """The farthest copy of each transform that is beyond ``limit_bits``, farthest first."""
    misses = []
    for j, transform in enumerate(transform_names):
        column = true[:, j]
        if not len(column) or column.max() < 0:
            continue
        i = int(np.argmax(column))
        bits = int(column[i])
        if limit_bits is None or bits > limit_bits:
            misses.append(Miss(keys[i], transform, bits, shown(bits, nbits)))
    misses.sort(key=lambda miss: -miss.bits)  # stable: ties keep the transforms' order
    return misses[:WORST_MISSES]


def lookalikes(distinct: Distinct, keys: Sequence[str], nbits: int, limit: int = LOOKALIKES) -> list[Lookalike]:
    """The ``limit`` closest pairs of different images (any version of one against the other's original)."""
    both = np.minimum(distinct.closest, distinct.closest.T)
    rows, cols = np.triu_indices(len(keys), k=1)
    values = both[rows, cols]
    order = np.argsort(values, kind="stable")[:limit]
    return [
        Lookalike(keys[rows[i]], keys[cols[i]], int(values[i]), shown(int(values[i]), nbits))
        for i in order
        if values[i] <= nbits  # nbits + 1 marks pairs excluded by --groups
    ]


def evaluate_hash_type(
    name: str,
    nbits: int,
    true: np.ndarray,
    distinct: Distinct,
    excluded: int,
    keys: Sequence[str],
    transforms: Sequence[tuple[str, str, bool]],
    rates: Sequence[float] = RATES,
) -> HashTypeResult:
    """Everything reported for one hash type. ``true`` is (sources x transforms), ``distinct`` the
    distinct-pair distances, ``transforms`` (name, category, geometric) in ``true``'s column order."""
    points = thresholds(distinct, nbits, rates)
    histogram = distinct.histogram
    image_pairs = distinct.source_pairs_within(nbits)  # excluded pairs sit at nbits + 1
    chosen = recommend(points, image_pairs)
    per_transform = [
        distance_stats(tname, category, true[:, j], nbits, points)
        for j, (tname, category, _geometric) in enumerate(transforms)
    ]
    plain_columns = [j for j, (_n, _c, geometric) in enumerate(transforms) if not geometric]
    pooled = distance_stats("all but geometry", "pooled", true[:, plain_columns].ravel(), nbits, points)
    fractions = {"min": 0.0, "0.001%": 1e-5, "0.01%": 1e-4, "0.1%": 1e-3, "1%": 1e-2, "median": 0.5}
    return HashTypeResult(
        name,
        nbits,
        int(histogram.sum()),
        image_pairs,
        excluded,
        sparse(histogram),
        {label: percentile(histogram, fraction) for label, fraction in fractions.items()},
        points,
        chosen,
        per_transform,
        pooled,
        worst_misses(true, keys, [t[0] for t in transforms], nbits, chosen.bits if chosen else None),
        lookalikes(distinct, keys, nbits),
    )


@dataclass(frozen=True)
class EvalReport:
    """A whole run: what was measured, on what, and the results per hash type."""

    directory: str
    images_found: int
    sources: int
    skipped: list[dict[str, str]]
    copy_failures: list[dict[str, str]]
    transforms: list[dict[str, str]]
    dihedral: bool
    seed: int
    groups_file: str | None
    grouped_images: int
    rates: list[float]
    hashing_seconds: float
    results: list[HashTypeResult]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def result(self, name: str) -> HashTypeResult:
        return next(r for r in self.results if r.name == name)


def rate_label(rate: float) -> str:
    """``1e-4`` style; rate 0 is "no false match" in this folder."""
    return "none" if rate == 0 else f"{rate:.0e}".replace("e-0", "e-")
