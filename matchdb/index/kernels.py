"""Array kernels shared by building and searching the numpy tree: hashes as uint64 words, vectorised Hamming
distances, and two index helpers (first occurrences, concatenated ranges)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from matchdb.index import tuning

Words = npt.NDArray[np.uint64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
Counts = npt.NDArray[Any]  # distances: uint8, uint16 or uint64 depending on the hash length

_LANES = np.uint64(0x00FF00FF00FF00FF)
_SUM_LANES = np.uint64(0x0001000100010001)


def words_of_packed(packed: npt.NDArray[np.uint8], nwords: int) -> Words:
    """(n, nbytes) little-endian packed hashes -> C-contiguous (n, nwords) uint64 (zero padded)."""
    n, nbytes = packed.shape
    if nbytes == nwords * 8:
        return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False).reshape(n, nwords)
    padded = np.zeros((n, nwords * 8), np.uint8)
    padded[:, :nbytes] = packed
    return padded.view("<u8").astype(np.uint64, copy=False).reshape(n, nwords)


class Distance:
    """Hamming distances from one query to many rows, vectorised and in cache-sized chunks.

    ``rows ^ q`` with ``q`` broadcast along a short last axis runs numpy's inner loop 16 words at a time; XOR
    against a tiled copy of ``q`` on the flattened rows is several times faster. Per-row sums of the byte counts
    are done with SWAR on uint64 lanes when ``nwords`` is a multiple of 8 (bmh1: 16 words), again to avoid a
    reduction along a short axis.
    """

    def __init__(self, query: Words) -> None:
        self.query = query
        self.nwords = len(query)
        self.scalar = query[0]
        self._tiled: Words | None = None  # made on first use: most queries of the block tables never need it

    @property
    def tiled(self) -> Words:
        if self._tiled is None:
            self._tiled = np.tile(self.query, tuning.CHUNK_ROWS)
        return self._tiled

    def __call__(self, rows: Words) -> Counts:
        """Distances of each row of ``rows`` ((m, nwords) C-contiguous) as an unsigned int array of length m."""
        m = len(rows)
        if self.nwords == 1:
            column = rows[:, 0]
            if m <= tuning.WORD_CHUNK_ROWS:
                counted: Counts = np.bitwise_count(column ^ self.scalar)
                return counted
            counts = np.empty(m, np.uint8)
            buffer = np.empty(tuning.WORD_CHUNK_ROWS, np.uint64)
            for start in range(0, m, tuning.WORD_CHUNK_ROWS):
                part = buffer[: min(tuning.WORD_CHUNK_ROWS, m - start)]
                np.bitwise_xor(column[start : start + len(part)], self.scalar, out=part)
                np.bitwise_count(part, out=counts[start : start + len(part)])
            return counts
        if m <= 64:  # a few rows (the block tables' candidates): the plain form costs less than its setup
            few: Counts = np.bitwise_count(rows ^ self.query).sum(axis=1, dtype=np.uint16)
            return few
        out = np.empty(m, np.uint16)
        for start in range(0, m, tuning.CHUNK_ROWS):
            block = rows[start : start + tuning.CHUNK_ROWS]
            out[start : start + len(block)] = self._block(block)
        return out

    def _block(self, block: Words) -> Counts:
        return row_counts(block.reshape(-1) ^ self.tiled[: len(block) * self.nwords], self.nwords)


def row_counts(flat: Words, nwords: int) -> Counts:
    """Set bits of each row of ``nwords`` words in ``flat`` (rows one after the other): the byte counts are added
    with SWAR on uint64 lanes when ``nwords`` is a multiple of 8, not by a reduction along a short axis."""
    count = len(flat) // nwords
    bytes_ = np.bitwise_count(flat).astype(np.uint8, copy=False)
    if nwords % 8:
        summed: Counts = bytes_.reshape(count, nwords).sum(axis=1, dtype=np.uint16)
        return summed
    lanes = bytes_.view(np.uint64)
    pairs = (lanes & _LANES) + ((lanes >> np.uint64(8)) & _LANES)  # four 16-bit lanes per word
    per_row = pairs.reshape(count, nwords // 8).sum(axis=1, dtype=np.uint64)
    added: Counts = (per_row * _SUM_LANES) >> np.uint64(48)  # add the four lanes
    return added


def stable_order(values: npt.NDArray[Any]) -> Ints:
    """``np.argsort(values, kind="stable")`` for integer arrays: when every value fits in 31 bits, one plain sort
    of ``value << 32 | index`` (several times faster on millions of records than a stable argsort, measured)."""
    n = len(values)
    if n and n < 2**32 and int(values.min()) >= 0 and int(values.max()) < 2**31:
        packed = (values.astype(np.uint64) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
        packed.sort()
        order: Ints = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
        return order
    stable: Ints = np.argsort(values, kind="stable")
    return stable


def first_of_each(values: Ints) -> Ints:
    """Index of the first occurrence of each distinct value, in increasing order of the values.

    Sort-based: ``np.unique(..., return_index=True)`` is several times slower on these arrays with numpy 2.
    """
    order = stable_order(values)
    ordered = values[order]
    fresh = np.empty(len(ordered), np.bool_)
    fresh[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=fresh[1:])
    first: Ints = order[fresh]
    return first


def runs(starts: Ints, ends: Ints) -> Ints:
    """Concatenate ``arange(starts[i], ends[i])`` for every i, without a Python loop."""
    counts = ends - starts
    if not len(counts):
        return np.empty(0, np.int64)
    total = np.cumsum(counts)
    out: Ints = np.arange(int(total[-1]), dtype=np.int64) + np.repeat(starts - total + counts, counts)
    return out
