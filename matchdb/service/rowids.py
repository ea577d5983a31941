"""The live row ids of one collection, ascending (= insertion order), kept in memory next to its hash indexes.

allRecords pages and random samples pick their row ids here (a slice, or uniform positions) instead of asking
the database to count, skip with OFFSET or sort at random, which costs a scan of the collection per request
(hundreds of milliseconds at a million records). 4 bytes per record (8 past two billion row ids). Changes are
O(1) and folded into the sorted array lazily, at the next read.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

Ids = npt.NDArray[np.signedinteger]


class RowIds:
    """A set of row ids that reads as a sorted, read-only array. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base: Ids = np.empty(0, np.int32)
        self._base.flags.writeable = False
        self._added: set[int] = set()  # not in _base
        self._removed: set[int] = set()  # in _base

    def load(self, keys: npt.ArrayLike) -> None:
        """Replace the whole set (a fresh load of the collection)."""
        base = _compact(np.unique(np.asarray(keys, np.int64)))
        base.flags.writeable = False
        with self._lock:
            self._base, self._added, self._removed = base, set(), set()

    def load_sorted(self, ids: Ids) -> None:
        """Replace the whole set by ids already ascending and distinct, used as they are (a segment's mapped
        array: not copied)."""
        with self._lock:
            self._base, self._added, self._removed = ids, set(), set()

    def _in_base(self, key: int) -> bool:
        position = int(np.searchsorted(self._base, key))
        return position < len(self._base) and int(self._base[position]) == key

    def add(self, key: int) -> None:
        with self._lock:
            if self._in_base(key):
                self._removed.discard(key)
            else:
                self._added.add(key)

    def remove(self, key: int) -> None:
        with self._lock:
            if self._in_base(key):
                self._removed.add(key)
            else:
                self._added.discard(key)

    def snapshot(self) -> Ids:
        """The ids now, ascending. The array is never changed afterwards: read it without any lock."""
        with self._lock:
            if self._added or self._removed:
                self._base = _merged(self._base, self._added, self._removed)
                self._added, self._removed = set(), set()
            return self._base

    def __len__(self) -> int:
        with self._lock:
            return len(self._base) + len(self._added) - len(self._removed)


def _merged(base: Ids, added: set[int], removed: set[int]) -> Ids:
    if removed:
        base = np.delete(base, np.searchsorted(base, np.fromiter(removed, np.int64, len(removed))))
    if added:
        extra = np.sort(np.fromiter(added, np.int64, len(added)))
        if len(base) and extra[0] < base[-1]:  # rare: new row ids are larger than every existing one
            base = np.sort(np.concatenate([base, extra]))
        else:
            base = np.concatenate([base, extra])
    base = _compact(base)
    base.flags.writeable = False
    return base


def _compact(ids: Ids) -> Ids:
    """``ids`` (ascending) as int32 when they fit: row ids stay far below two billion in practice."""
    if len(ids) and int(ids[0]) >= -(2**31) and int(ids[-1]) < 2**31:
        return ids.astype(np.int32, copy=False)
    return ids
