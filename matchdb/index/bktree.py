"""A Hamming index on pybktree (the design card's BK-tree).

Identical hashes share one tree node (a value -> keys map beside the tree). pybktree has no delete, so removing the
last key of a value leaves a tombstone; once tombstones pass a quarter of the tree it is rebuilt and swapped in
atomically, while queries keep reading the old one. A single lock guards mutations; reads take a snapshot.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt
import pybktree

from matchdb.index.base import Hit

_REBUILD_SHARE = 0.25
_REBUILD_MIN = 64


def _hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class BKTreeIndex:
    def __init__(self, nbits: int) -> None:
        self.nbits = nbits
        self._lock = threading.RLock()
        self._tree = pybktree.BKTree(_hamming)
        self._in_tree: set[int] = set()
        self._keys: dict[int, list[int]] = {}  # value -> sorted keys
        self._value_of: dict[int, int] = {}  # key -> value

    def __len__(self) -> int:
        return len(self._value_of)

    @property
    def tombstones(self) -> int:
        return len(self._in_tree) - len(self._keys)

    def add(self, key: int, value: int) -> None:
        with self._lock:
            if self._value_of.get(key) == value:
                return
            self._remove(key)
            self._value_of[key] = value
            keys = self._keys.setdefault(value, [])
            bisect.insort(keys, key)
            if value not in self._in_tree:
                self._tree.add(value)
                self._in_tree.add(value)

    def bulk_load(self, items: Iterable[tuple[int, int]]) -> None:
        for key, value in items:
            self.add(key, value)

    def bulk_load_packed(self, keys: npt.ArrayLike, packed: npt.NDArray[np.uint8]) -> None:
        for key, row in zip(np.asarray(keys).tolist(), packed, strict=True):
            self.add(int(key), int.from_bytes(row.tobytes(), "little"))

    def remove(self, key: int) -> None:
        with self._lock:
            self._remove(key)
            if self.tombstones > max(_REBUILD_MIN, _REBUILD_SHARE * len(self._in_tree)):
                self.rebuild()

    def _remove(self, key: int) -> None:
        value = self._value_of.pop(key, None)
        if value is None:
            return
        keys = self._keys[value]
        keys.remove(key)
        if not keys:
            del self._keys[value]

    def rebuild(self) -> None:
        with self._lock:
            values = list(self._keys)
        tree = pybktree.BKTree(_hamming, values)
        with self._lock:
            # Values added meanwhile went into the old tree; carry them over before swapping.
            for value in self._keys:
                if value not in values:
                    tree.add(value)
            self._tree = tree
            self._in_tree = set(self._keys)

    def search(self, query: int, max_bits: int, accept: Callable[[int], bool] | None = None) -> list[Hit]:
        with self._lock:  # pybktree's nodes are dicts: a concurrent add would break its iteration
            found = self._tree.find(query, max_bits)
            hits: list[Hit] = []
            for bits, value in found:
                for key in self._keys.get(value, ()):
                    if accept is None or accept(key):
                        hits.append(Hit(bits, key))
        hits.sort()
        return hits

    def nearest(
        self, query: int, k: int, max_bits: int | None = None, accept: Callable[[int], bool] | None = None
    ) -> list[Hit]:
        """Search with a growing radius until k answers are inside it: those are then exactly the k nearest."""
        limit = self.nbits if max_bits is None else min(max_bits, self.nbits)
        radius = min(4, limit)
        while True:
            hits = self.search(query, radius, accept)
            if len(hits) >= k or radius >= limit:
                return hits[:k]
            radius = min(limit, radius * 2)
