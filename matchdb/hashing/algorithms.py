"""bmh1 (OpenCV BlockMeanHash, mode 1) and phash (OpenCV PHash), from the grey images of :mod:`.resize`.

``bmh1_numpy`` and ``phash_numpy`` are the readable definitions (and the path without numba); ``bmh1`` and
``phash`` run the same arithmetic compiled (:mod:`.kernels`) when it is available. Both are tested against OpenCV.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from matchdb.hashing import kernels
from matchdb.hashing.value import VisualHash

BMH1_SIZE = 256
PHASH_SIZE = 32


def bmh1(grey: np.ndarray) -> VisualHash:
    """bmh1 of a 256 x 256 grey image (see :func:`bmh1_numpy`)."""
    compiled = kernels.compiled()
    if compiled is None or grey.dtype != np.uint8:
        return bmh1_numpy(grey)
    _check(grey, BMH1_SIZE, "bmh1")
    return VisualHash("bmh1", kernels.bmh1_bytes(compiled, np.ascontiguousarray(grey)))


def phash(grey: np.ndarray) -> VisualHash:
    """phash of a 32 x 32 grey image (see :func:`phash_numpy`)."""
    compiled = kernels.compiled()
    if compiled is None or grey.dtype != np.uint8:
        return phash_numpy(grey)
    _check(grey, PHASH_SIZE, "phash")
    return VisualHash("phash", kernels.phash_bytes(compiled, np.ascontiguousarray(grey), _dct_matrix()))


def _check(grey: np.ndarray, size: int, kind: str) -> None:
    if grey.shape != (size, size):
        raise ValueError(f"{kind} needs a {size}x{size} grey image")


def bmh1_numpy(grey: np.ndarray) -> VisualHash:
    """31 x 31 overlapping 16 x 16 blocks at step 8; bit = block mean >= mean of the whole image.

    Compared in integers (``block_sum * 256 >= total``), which is what OpenCV's double arithmetic gives exactly.
    The 8 x 8 cell sums come from two float32 products with a vector of ones (BLAS, several times faster than
    ``sum``): exact, since every sum is below 2**24.
    """
    _check(grey, BMH1_SIZE, "bmh1")
    ones = np.ones(8, dtype=np.float32)
    row_cells = grey.astype(np.float32).reshape(256, 32, 8) @ ones  # 256 x 32: sums of 8 pixels across
    cells = (row_cells.reshape(32, 8, 32).transpose(0, 2, 1) @ ones).astype(np.int64)  # 32 x 32 cell sums
    blocks = cells[:-1, :-1] + cells[1:, :-1] + cells[:-1, 1:] + cells[1:, 1:]  # 16 x 16 block sums
    bits = blocks.ravel() * 256 >= cells.sum()
    return VisualHash.from_bits("bmh1", bits)


@lru_cache(maxsize=1)
def _dct_matrix() -> np.ndarray:
    """Orthonormal DCT-II basis, first 8 rows (the only coefficients PHash keeps), float64."""
    n = PHASH_SIZE
    k = np.arange(8)[:, None]
    x = np.arange(n)[None, :]
    basis: np.ndarray = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    basis.setflags(write=False)
    return basis


def phash_numpy(grey: np.ndarray) -> VisualHash:
    """Top-left 8 x 8 of the 2-D DCT, DC set to 0; bit = coefficient > mean of those 64 values.

    Each 1-D pass takes the AC terms of the vector minus its first element (the same coefficients, since every AC
    basis vector sums to zero) and the DC term from the sum: a constant row or column then gives exact zeros, as
    OpenCV's DCT does, so flat images cannot flip bits through float round-off.
    """
    _check(grey, PHASH_SIZE, "phash")
    rows = _dct_first8(grey.astype(np.float64))  # 32 x 8: DCT of each row
    coeffs = _dct_first8(rows.T).T.astype(np.float32)  # 8 x 8
    coeffs[0, 0] = 0.0
    threshold = np.float32(coeffs.astype(np.float64).mean())
    return VisualHash.from_bits("phash", (coeffs > threshold).ravel())


def _dct_first8(values: np.ndarray) -> np.ndarray:
    """First 8 orthonormal DCT-II coefficients of each row of ``values`` (n x 32 -> n x 8)."""
    basis = _dct_matrix()
    out: np.ndarray = (values - values[:, :1]) @ basis.T
    out[:, :1] = values.sum(axis=1, keepdims=True) * basis[0, 0]
    return out
