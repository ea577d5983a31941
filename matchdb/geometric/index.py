"""One collection's geometric signatures in memory, searched by a snapshot so a query never holds the lock.

Why snapshots: a geometric query reads every record (a scan of 304 MB at 1M records). If it held the index lock,
every insert or delete would wait for the scan. Here rows are append-only: a record's row is written once, before
the row count that makes it visible moves past it; removing a record only marks its row dead (its id becomes -1,
which a running scan skips or whose result is then dropped), and a dead row is never reused. A query takes
(arrays, count) under the lock, an O(1) snapshot, and scans outside it. Growth allocates new arrays (a running scan
keeps the old ones) and, when more than a quarter of the rows are dead, compacts into new arrays too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from matchdb.geometric import scan
from matchdb.geometric.query import NBITS, Query
from matchdb.geometric.windows import NWINDOWS

_FIRST_CAPACITY = 1024


@dataclass(frozen=True)
class Snapshot:
    """Rows ``0..count`` of ``sigs``/``ids`` as they were when taken (ids may since have become -1: removed)."""

    sigs: npt.NDArray[np.uint64]
    ids: npt.NDArray[np.int64]
    count: int

    def search(
        self, query: Query, bound: int, k: int | None = None, accept: Callable[[int], bool] | None = None
    ) -> list[tuple[int, int]]:
        """(record id, bits) of the live records within ``bound`` bits (with ``k``: the k nearest, ties at the
        k-th included), nearest first, ties by id; with ``accept``, only the records it accepts (a filter)."""
        found = scan.scores(self.sigs, self.ids, self.count, query)
        if accept is not None:
            rows = np.flatnonzero(found <= min(bound, NBITS))
            order = np.lexsort((self.ids[rows], found[rows]))
            kept = []
            for row in rows[order].tolist():
                record_id = int(self.ids[row])
                if record_id >= 0 and accept(record_id):
                    kept.append((record_id, int(found[row])))
                    if k is not None and len(kept) == k:
                        break
            return kept
        rows = scan.select(found, bound, k)
        ids = self.ids[rows]  # read after the scan: a record removed meanwhile is -1 now and left out
        bits = found[rows].astype(np.int64)
        live = ids >= 0
        ids, bits = ids[live], bits[live]
        order = np.lexsort((ids, bits))
        if k is not None:
            order = order[:k]
        return [(int(ids[i]), int(bits[i])) for i in order]


class GeometricIndex:
    """Record id (the database row id) -> signature, for one collection. Thread-safe; searches are lock-free."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Empty until the first signature: every collection has an index, most keep no signatures.
        self._sigs = np.zeros((0, NWINDOWS), np.uint64)
        self._ids = np.full(0, -1, np.int64)
        self._count = 0
        self._dead = 0
        self._row_of: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, record_id: int) -> bool:
        return record_id in self._row_of

    def add(self, record_id: int, words: npt.NDArray[np.uint64]) -> None:
        """Add or replace one record's signature (38 uint64)."""
        self.add_many(np.array([record_id], np.int64), np.asarray(words, np.uint64).reshape(1, NWINDOWS))

    def add_many(self, record_ids: npt.NDArray[np.int64], words: npt.NDArray[np.uint64]) -> None:
        """Add or replace many (a load): ``words`` is (n, 38) uint64."""
        if len(record_ids) != len(words) or words.shape[1:] != (NWINDOWS,):
            raise ValueError("record ids and (n, 38) signatures must match")
        with self._lock:
            for record_id in record_ids.tolist():
                self._kill(record_id)
            self._reserve(len(record_ids))
            start = self._count
            self._sigs[start : start + len(words)] = words
            self._ids[start : start + len(words)] = record_ids
            for offset, record_id in enumerate(record_ids.tolist()):
                if record_id in self._row_of:  # the same id twice in one call: the last one wins
                    self._ids[self._row_of[record_id]] = -1
                    self._dead += 1
                self._row_of[record_id] = start + offset
            self._count = start + len(words)  # last: rows become visible to new snapshots only now

    def remove(self, record_id: int) -> bool:
        """Forget a record; False if it was not there."""
        with self._lock:
            found = self._kill(record_id)
            if self._dead * 4 > max(self._count, _FIRST_CAPACITY):
                self._compact(0)
            return found

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self._sigs, self._ids, self._count)

    def search(
        self, query: Query, bound: int, k: int | None = None, accept: Callable[[int], bool] | None = None
    ) -> list[tuple[int, int]]:
        """See :meth:`Snapshot.search`; the lock is held only to take the snapshot."""
        return self.snapshot().search(query, bound, k, accept)

    def _kill(self, record_id: int) -> bool:
        row = self._row_of.pop(record_id, None)
        if row is None:
            return False
        self._ids[row] = -1
        self._dead += 1
        return True

    def _reserve(self, extra: int) -> None:
        if self._count + extra > len(self._ids):
            self._compact(extra)

    def _compact(self, extra: int) -> None:
        """New arrays holding only the live rows, with room for ``extra`` more (old snapshots keep the old ones)."""
        live = np.flatnonzero(self._ids[: self._count] >= 0)
        capacity = max(_FIRST_CAPACITY, 2 * (len(live) + extra))
        sigs = np.zeros((capacity, NWINDOWS), np.uint64)
        ids = np.full(capacity, -1, np.int64)
        sigs[: len(live)] = self._sigs[live]
        ids[: len(live)] = self._ids[live]
        self._sigs, self._ids, self._count, self._dead = sigs, ids, len(live), 0
        self._row_of = {int(record_id): row for row, record_id in enumerate(ids[: len(live)].tolist())}
