"""The stateless methods with ``"geometric": true``: ranking and duplicate removal by the geometric score.

The score of a candidate is the smallest Hamming distance over the query's window pairs against the candidate's
signature (bits of 64, :mod:`matchdb.geometric`), shown like a hash distance: percent of 64 bits, one decimal;
``range``/``radius`` compare against that, inclusive. Answers have the same shape as without the flag.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from matchdb.geometric import NBITS, GeometricIndex
from matchdb.hashing import percent
from matchdb.service.records import LoadedRecord
from matchdb.service.stateless import Ranking


def shown(bits: int) -> float:
    return round(percent(bits, NBITS), 1)


def _index(items: Sequence[LoadedRecord]) -> GeometricIndex:
    index = GeometricIndex()
    rows = [i for i, item in enumerate(items) if item.geometric is not None]
    if rows:
        words = np.stack([items[i].geometric.words for i in rows])  # type: ignore[union-attr]
        index.add_many(np.asarray(rows, np.int64), words)
    return index


def rank(query: LoadedRecord, candidates: Sequence[LoadedRecord], k: int | None, radius: float | None) -> Ranking:
    """Candidates best first by geometric score (ties in request order), cut at ``radius`` and then ``k``."""
    assert query.geometric is not None
    found = _index(candidates).search(query.geometric.query, NBITS)
    if radius is not None:
        found = [(row, bits) for row, bits in found if shown(bits) <= radius]
    if k is not None:
        found = found[:k]
    return Ranking(
        [dict(candidates[row].record) for row, _ in found], [shown(bits) for _, bits in found], [b for _, b in found]
    )


def remove_duplicates(loaded: Sequence[LoadedRecord], limit: float) -> list[dict[str, Any]]:
    """As the hash version: in request order, the first record not yet taken takes every later record within
    ``limit``. The score is made symmetric (the smaller of each record's query against the other's signature), so
    a crop is grouped with its full image whichever of the two comes first."""
    n = len(loaded)
    index = _index(loaded)
    scores = np.full((n, n), NBITS + 1, np.int64)
    for i, item in enumerate(loaded):
        if item.geometric is not None:
            for row, bits in index.search(item.geometric.query, NBITS):
                scores[i, row] = bits
    scores = np.minimum(scores, scores.T)
    taken = [False] * n
    out: list[dict[str, Any]] = []
    for i, item in enumerate(loaded):
        if taken[i]:
            continue
        record = dict(item.record)
        if item.geometric is not None:
            near = [
                j for j in range(i + 1, n) if not taken[j] and scores[i, j] <= NBITS and shown(scores[i, j]) <= limit
            ]
            for j in near:
                taken[j] = True
            if near:
                record["removed_records"] = [dict(loaded[j].record) for j in near]
        out.append(record)
    return out
