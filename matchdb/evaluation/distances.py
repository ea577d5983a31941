"""Hamming distances in bulk: hashes packed into uint64 words, XOR, popcount, summed per pair.

A run on 421 originals with 30 transforms has ~5.8 million distinct pairs per hash type, so pairs are never
Python objects: the distinct pairs are only ever seen as a histogram (computed chunk by chunk, so memory stays
bounded whatever the folder's size), and the true pairs as one (sources x transforms) matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from matchdb.evaluation.runner import RunResult

_CHUNK_WORDS = 1 << 22  # uint64 words of XOR per chunk (32 MB)

if hasattr(np, "bitwise_count"):  # numpy >= 2.0

    def _popcount(words: np.ndarray) -> np.ndarray:
        return np.asarray(np.bitwise_count(words))

else:  # pragma: no cover - numpy 1.26
    _BYTE_COUNTS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

    def _popcount(words: np.ndarray) -> np.ndarray:
        counts = _BYTE_COUNTS[words.view(np.uint8)].reshape(*words.shape, 8)
        return np.asarray(counts.sum(axis=-1, dtype=np.uint8))


def pack(hashes: Sequence[bytes], nbytes: int) -> np.ndarray:
    """Packed hashes as an (N, W) uint64 array, each zero-padded to whole words (zeros never differ)."""
    words = (nbytes + 7) // 8
    out = np.zeros((len(hashes), words * 8), dtype=np.uint8)
    for row, data in enumerate(hashes):
        if len(data) != nbytes:
            raise ValueError(f"hash of {len(data)} bytes where {nbytes} were expected")
        out[row, :nbytes] = np.frombuffer(data, dtype=np.uint8)
    return out.view("<u8")


def hamming(queries: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """(Q, K, W) query variants against (R, W) references -> (Q, R) smallest distance over the K variants."""
    best: np.ndarray | None = None
    for k in range(queries.shape[1]):
        counts = _popcount(queries[:, k, None, :] ^ refs[None, :, :]).sum(axis=-1, dtype=np.int32)
        best = counts if best is None else np.minimum(best, counts)
    assert best is not None
    return best


@dataclass(frozen=True)
class HashMatrix:
    """One hash type's hashes, shaped for distance work. ``K`` is 1, or 8 in dihedral mode (variant 0 = plain)."""

    name: str
    nbits: int
    originals: np.ndarray  # (n, K, W) uint64
    copies: np.ndarray  # (n, T, K, W) uint64; rows of failed copies are zeros
    copy_valid: np.ndarray  # (n, T) bool


def build_matrix(result: RunResult, name: str, nbits: int) -> HashMatrix:
    """Gather one hash type's hashes from a run into arrays."""
    nbytes = (nbits + 7) // 8
    transforms = result.plan.transforms
    n, t = len(result.sources), len(transforms)
    k = 8 if result.plan.dihedral else 1
    words = (nbytes + 7) // 8
    originals = np.zeros((n, k, words), dtype="<u8")
    copies = np.zeros((n, t, k, words), dtype="<u8")
    valid = np.zeros((n, t), dtype=bool)
    for i, source in enumerate(result.sources):
        originals[i] = pack(source.original[name], nbytes)
        for j, transform in enumerate(transforms):
            copy = source.copies.get(transform)
            if copy is not None:
                copies[i, j] = pack(copy[name], nbytes)
                valid[i, j] = True
    return HashMatrix(name, nbits, originals, copies, valid)


def true_distances(matrix: HashMatrix) -> np.ndarray:
    """(n, T) distance of each copy to its own original (smallest over its variants); -1 where the copy failed."""
    refs = matrix.originals[:, 0, :]
    diff = _popcount(matrix.copies ^ refs[:, None, None, :]).sum(axis=-1, dtype=np.int32)
    best = diff.min(axis=2)
    return np.where(matrix.copy_valid, best, -1)


@dataclass(frozen=True)
class Distinct:
    """Distinct-pair distances: their ``histogram`` (index = bits), and ``closest[s, r]``, the smallest distance
    of the original or any copy of source ``s`` to the original of source ``r`` (``nbits + 1`` where the pair is
    excluded), which tells how many pairs of *images* the false matches at a threshold come from."""

    histogram: np.ndarray
    closest: np.ndarray

    def source_pairs_within(self, bits: int) -> int:
        """Unordered pairs of sources with some version of one within ``bits`` of the other."""
        both = np.minimum(self.closest, self.closest.T)
        return int(np.count_nonzero(np.triu(both <= bits, k=1)))


def distinct_distances(matrix: HashMatrix, groups: np.ndarray) -> Distinct:
    """The distance of every original and every copy to every original of another group (sources of one known
    duplicate group are excluded, as is a source with itself), as a histogram and per pair of sources."""
    n, t, k, w = matrix.copies.shape
    queries = np.concatenate([matrix.originals, matrix.copies.reshape(n * t, k, w)])
    query_source = np.concatenate([np.arange(n), np.repeat(np.arange(n), t)])
    query_valid = np.concatenate([np.ones(n, dtype=bool), matrix.copy_valid.ravel()])
    refs = matrix.originals[:, 0, :]
    hist = np.zeros(matrix.nbits + 1, dtype=np.int64)
    closest = np.full((n, n), matrix.nbits + 1, dtype=np.int16)  # 961 bits fit; n = 10,000 is 200 MB
    step = max(1, _CHUNK_WORDS // max(1, n * w))
    for start in range(0, len(queries), step):
        rows = slice(start, start + step)
        dist = hamming(queries[rows], refs)
        keep = (groups[query_source[rows], None] != groups[None, :]) & query_valid[rows, None]
        hist += np.bincount(dist[keep], minlength=matrix.nbits + 1)
        np.minimum.at(closest, query_source[rows], np.where(keep, dist, matrix.nbits + 1).astype(np.int16))
    return Distinct(hist, closest)
