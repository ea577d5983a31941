"""The index interface every implementation follows (pybktree first; a faster numpy tree may replace it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt


class Hit(NamedTuple):
    """One answer: differing bits, then the key (the record's row id, which is also its insertion order)."""

    bits: int
    key: int


class HammingIndex(Protocol):
    """Keys (row ids) with a hash each (an int of ``nbits`` bits). Answers are sorted by (bits, key): exact."""

    nbits: int

    def add(self, key: int, value: int) -> None:
        """Insert or replace the hash of ``key``."""

    def remove(self, key: int) -> None:
        """Forget ``key`` (no error if absent)."""

    def search(self, query: int, max_bits: int, accept: Callable[[int], bool] | None = None) -> list[Hit]:
        """Every key within ``max_bits`` differing bits (inclusive), best first."""

    def nearest(
        self, query: int, k: int, max_bits: int | None = None, accept: Callable[[int], bool] | None = None
    ) -> list[Hit]:
        """The ``k`` nearest keys (within ``max_bits`` if given), ties broken by key."""

    def rebuild(self) -> None:
        """Compact (drop tombstones); queries keep being answered meanwhile."""

    def bulk_load(self, items: Iterable[tuple[int, int]]) -> None:
        """Add many (key, value) pairs at once."""

    def bulk_load_packed(self, keys: npt.ArrayLike, packed: npt.NDArray[np.uint8]) -> None:
        """Add many hashes given as an ``(n, nbytes)`` array of packed LSB-first bytes (how they are stored)."""

    def __len__(self) -> int:
        """Number of live keys."""
