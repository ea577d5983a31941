"""Compiled (numba) kernels: decoded pixels -> ``size`` x ``size`` grey in one pass, and the bmh1 / phash bits.

For each output pixel the grey kernel reads its 2 x 2 source pixels straight from the decoder's buffer and applies
OpenCV's ``INTER_LINEAR_EXACT`` fixed point and ``BGR2GRAY`` weights (the arithmetic :mod:`.resize` spells out),
so no full-size or even row-size temporary exists. The blend is exact integer arithmetic with one rounding at the
end, so computing it in one step gives the same value as OpenCV's across-then-down passes. The bit kernels follow
:mod:`.algorithms`' numpy definitions operation for operation.

numba is imported and the kernels compiled on first use (a process that never hashes never pays for it), without
the GIL (hash threads run in parallel), and cached on disk: in ``NUMBA_CACHE_DIR`` if set, else next to this file
(``__pycache__``) if writable, else in the user's cache directory (``~/.cache/numba``); with none writable they are
compiled in memory at each start. Without numba, or with ``NUMBA_DISABLE_JIT`` set, :func:`compiled` is None and
the callers take the numpy path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np


class Kernels(NamedTuple):
    """The compiled kernels (numba dispatchers)."""

    grey_image: Callable[..., None]
    bmh1_bits: Callable[..., None]
    phash_bits: Callable[..., None]


@functools.cache
def compiled() -> Kernels | None:
    """The kernels, compiled or loaded from the cache on the first call; None when numba is missing or its JIT is
    disabled.

    Each has one explicit signature whose inputs are read-only arrays: writable ones convert to it, so a buffer
    that happens to be read-only (numpy's view of a Pillow image) does not cost a second compilation.
    """
    try:
        import numba
        from numba import types
    except ImportError:  # pragma: no cover - numba is a dependency; this keeps a platform without its wheels working
        return None
    if getattr(numba.config, "DISABLE_JIT", False):
        return None

    def array(dtype: Any, ndim: int, readonly: bool = True) -> Any:
        return types.Array(dtype, ndim, "C", readonly=readonly)

    def jit(signature: Any, function: Callable[..., None]) -> Callable[..., None]:
        try:
            kernel: Callable[..., None] = numba.njit(signature, cache=True, nogil=True)(function)
        except RuntimeError:  # no writable cache location at all
            kernel = numba.njit(signature, nogil=True)(function)
        return kernel

    offsets, weights, out = array(types.int64, 1), array(types.int32, 1), array(types.uint8, 2, readonly=False)
    grey = types.void(array(types.uint8, 1), types.int64, offsets, offsets, weights, offsets, offsets, weights, out)
    bits = array(types.uint8, 1, readonly=False)
    return Kernels(
        jit(grey, _grey_image),
        jit(types.void(array(types.uint8, 2), bits), _bmh1_bits),
        jit(types.void(array(types.uint8, 2), array(types.float64, 2), bits), _phash_bits),
    )


def _grey_image(
    pixels: np.ndarray,
    channels: int,
    rows0: np.ndarray,
    rows1: np.ndarray,
    wy: np.ndarray,
    cols0: np.ndarray,
    cols1: np.ndarray,
    wx: np.ndarray,
    out: np.ndarray,
) -> None:
    """``pixels``: the decode buffer as flat bytes, ``channels`` a pixel (1: grey, 3: RGB, 4: RGB and one ignored).

    ``rows*`` and ``cols*`` are the byte offsets of the first and second tap of each output row and column, the
    orientation folded in; ``wy``/``wx`` the second tap's weight out of 256. A grey source is OpenCV's three equal
    channels, whose grey value is the channel itself.
    """
    size_y, size_x = out.shape
    for i in range(size_y):
        top, bottom = rows0[i], rows1[i]
        b = np.int32(wy[i])
        a = 256 - b
        for j in range(size_x):
            k00, k01 = top + cols0[j], top + cols1[j]
            k10, k11 = bottom + cols0[j], bottom + cols1[j]
            q = np.int32(wx[j])
            p = 256 - q
            if channels == 1:
                upper = p * np.int32(pixels[k00]) + q * np.int32(pixels[k01])
                lower = p * np.int32(pixels[k10]) + q * np.int32(pixels[k11])
                out[i, j] = (a * upper + b * lower + 32768) >> 16
                continue
            value = np.int32(16384)
            for channel, weight in ((0, 9798), (1, 19235), (2, 3735)):  # R, G, B
                upper = p * np.int32(pixels[k00 + channel]) + q * np.int32(pixels[k01 + channel])
                lower = p * np.int32(pixels[k10 + channel]) + q * np.int32(pixels[k11 + channel])
                value += weight * ((a * upper + b * lower + 32768) >> 16)
            out[i, j] = value >> 15


def _bmh1_bits(grey: np.ndarray, out: np.ndarray) -> None:
    """bmh1 of a 256 x 256 grey image into ``out`` (121 bytes, zeroed): :func:`.algorithms.bmh1`'s rule, packed."""
    cells = np.zeros((32, 32), dtype=np.int64)
    for y in range(256):
        for x in range(256):
            cells[y >> 3, x >> 3] += grey[y, x]
    total = cells.sum()
    bit = 0
    for i in range(31):
        for j in range(31):
            block = cells[i, j] + cells[i, j + 1] + cells[i + 1, j] + cells[i + 1, j + 1]
            if block * 256 >= total:
                out[bit >> 3] |= np.uint8(1 << (bit & 7))
            bit += 1


def _phash_bits(grey: np.ndarray, basis: np.ndarray, out: np.ndarray) -> None:
    """phash of a 32 x 32 grey image into ``out`` (8 bytes, zeroed): :func:`.algorithms.phash`'s arithmetic
    (float64 DCT passes with the DC term from the exact sum and the AC terms from values minus the first one, float32
    coefficients, float32 mean of the 64 as threshold), looped instead of matrix products."""
    rows = np.empty((32, 8))
    for y in range(32):
        first = np.float64(grey[y, 0])
        total = 0.0
        for x in range(32):
            total += grey[y, x]
        rows[y, 0] = total * basis[0, 0]
        for u in range(1, 8):
            acc = 0.0
            for x in range(32):
                acc += (grey[y, x] - first) * basis[u, x]
            rows[y, u] = acc
    coeffs = np.empty((8, 8), dtype=np.float32)
    for u in range(8):
        first = rows[0, u]
        total = 0.0
        for y in range(32):
            total += rows[y, u]
        coeffs[0, u] = total * basis[0, 0]
        for v in range(1, 8):
            acc = 0.0
            for y in range(32):
                acc += (rows[y, u] - first) * basis[v, y]
            coeffs[v, u] = acc
    coeffs[0, 0] = 0.0
    mean = 0.0
    for v in range(8):
        for u in range(8):
            mean += np.float64(coeffs[v, u])
    threshold = np.float32(mean / 64.0)
    for v in range(8):
        for u in range(8):
            if coeffs[v, u] > threshold:
                out[v] |= np.uint8(1 << u)


def bmh1_bytes(kernels: Kernels, grey: np.ndarray) -> bytes:
    """Packed bmh1 of a 256 x 256 grey image (uint8, C-contiguous)."""
    out = np.zeros(121, dtype=np.uint8)
    kernels.bmh1_bits(grey, out)
    return out.tobytes()


def phash_bytes(kernels: Kernels, grey: np.ndarray, basis: np.ndarray) -> bytes:
    """Packed phash of a 32 x 32 grey image (uint8, C-contiguous), with the first 8 rows of the DCT-II basis."""
    out = np.zeros(8, dtype=np.uint8)
    kernels.phash_bits(grey, basis, out)
    return out.tobytes()


def grey_thumbnail(
    kernels: Kernels,
    flat: np.ndarray,
    channels: int,
    rows: tuple[np.ndarray, np.ndarray, np.ndarray],
    cols: tuple[np.ndarray, np.ndarray, np.ndarray],
    size: int,
) -> np.ndarray:
    """Run the grey kernel for one output size on the decode buffer ``flat`` (bytes, ``channels`` a pixel)."""
    out = np.empty((size, size), dtype=np.uint8)
    kernels.grey_image(flat, channels, rows[0], rows[1], rows[2], cols[0], cols[1], cols[2], out)
    return out
