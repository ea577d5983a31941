"""The stateless Ximilar methods on loaded records: visual_hash, remove_duplicates, rank_images.

Distances are compared the way API.md section 4 fixes: ordering by the exact bit count, thresholds (``range``,
``radius``) against the percentage the user sees, rounded to one decimal, inclusive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from matchdb.hashing import NBITS, VisualHash, percent
from matchdb.service.records import LoadedRecord


def shown_distance(hamming: int, kind: str) -> float:
    """The distance as reported: percent of differing bits, one decimal."""
    return round(percent(hamming, NBITS[kind]), 1)


def within(hamming: int, kind: str, limit: float) -> bool:
    return shown_distance(hamming, kind) <= limit


def visual_hash(loaded: Sequence[LoadedRecord], kinds: Sequence[str]) -> list[dict[str, Any]]:
    """Each record with one string field per requested hash type."""
    out = []
    for item in loaded:
        record = dict(item.record)
        if item.image is not None:
            for kind in kinds:
                record[kind] = item.image.hashes[kind].to_string()
        out.append(record)
    return out


def remove_duplicates(loaded: Sequence[LoadedRecord], kind: str, limit: float) -> list[dict[str, Any]]:
    """Greedy clustering in request order: the first record not yet taken keeps its place and takes every later
    record within ``limit`` into its ``removed_records``. Failed records stay in place with their ``_status``."""
    taken = [False] * len(loaded)
    out: list[dict[str, Any]] = []
    for i, item in enumerate(loaded):
        if taken[i]:
            continue
        record = dict(item.record)
        if item.image is not None:
            mine = item.image.hashes[kind]
            removed = []
            for j in range(i + 1, len(loaded)):
                other = loaded[j].image
                if not taken[j] and other is not None and within(mine.hamming(other.hashes[kind]), kind, limit):
                    taken[j] = True
                    removed.append(dict(loaded[j].record))
            if removed:
                record["removed_records"] = removed
        out.append(record)
    return out


@dataclass(frozen=True)
class Ranking:
    answer_records: list[dict[str, Any]]
    answer_distances: list[float]
    answer_hamming: list[int]


def rank(
    queries: Sequence[VisualHash], candidates: Sequence[LoadedRecord], k: int | None, radius: float | None
) -> Ranking:
    """Candidates best first (ties in request order), cut at ``radius`` (inclusive, as shown) and then ``k``.

    ``queries`` is the query's hash, or its orientations' hashes (``dihedral``): a candidate's distance is then the
    smallest over them, so a mirrored or turned copy ranks as the copy it is.
    """
    kind = queries[0].kind
    scored = [
        (min(query.hamming(item.image.hashes[kind]) for query in queries), index, item)
        for index, item in enumerate(candidates)
        if item.image is not None
    ]
    scored.sort(key=lambda entry: (entry[0], entry[1]))
    if radius is not None:
        scored = [entry for entry in scored if within(entry[0], kind, radius)]
    if k is not None:
        scored = scored[:k]
    return Ranking(
        [dict(item.record) for _, _, item in scored],
        [shown_distance(bits, kind) for bits, _, _ in scored],
        [bits for bits, _, _ in scored],
    )
