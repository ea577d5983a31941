"""OpenCV's ``resize(..., INTER_LINEAR_EXACT)`` followed by ``cvtColor(BGR2GRAY)``, bit for bit, in numpy.

Every output pixel blends 2x2 source pixels with 8-bit fixed-point weights, so we gather just those pixels from
the (possibly strided) decoded array instead of touching the whole image. The arithmetic is the one
``../shared/API.md`` section 4 spells out:

- source position ``f = (i + 0.5) * src / dst - 0.5``, ``i0 = floor(f)``, ``w1 = round_half_even((f - i0) * 256)``;
  positions before the first pixel or at/after the last one take that edge pixel alone;
- ``h = w0 * p[i0] + w1 * p[i0 + 1]`` across, the same down, then one rounding ``(v + 32768) >> 16``;
- grey ``Y = (B * 3735 + G * 19235 + R * 9798 + 16384) >> 15``.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

import numpy as np

from matchdb.hashing import kernels
from matchdb.hashing.decode import Pixels, _orient


@lru_cache(maxsize=256)
def _taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (first, second) and the second one's weight out of 256, for each output position."""
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    first = np.floor(pos)
    weight = np.rint((pos - first) * 256.0)
    edge = (first < 0) | (first >= src - 1)
    weight[edge] = 0
    first = np.clip(first, 0, src - 1).astype(np.intp)
    second = np.minimum(first + 1, src - 1)
    for arr in (first, second, weight):
        arr.setflags(write=False)
    return first, second, weight.astype(np.int32)


class _Scratch(threading.local):
    """Per-thread reusable buffers: fresh multi-megabyte temporaries per image cost more in page faults than the
    arithmetic itself (measured 3x slower), so each thread keeps and regrows its own."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buffer = self.buffers.get(name)
        if buffer is None or buffer.size < nbytes:
            buffer = self.buffers[name] = np.empty(nbytes, dtype=np.uint8)
        return buffer[:nbytes].view(dtype).reshape(shape)


_scratch = _Scratch()


def _gather(pixels: Pixels, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Pixels at rows ``ys`` x columns ``xs`` of the oriented image, as ``(len(ys), len(xs) * channels)`` uint8.

    Two ``np.take`` calls on the oriented view (whole pixels moved as one opaque item), in the order that copies
    less; only the needed pixels are read and orientation costs nothing.
    """
    view = pixels.array
    if not pixels.is_grey:
        view = view.view(np.dtype((np.void, view.shape[2])))[..., 0]
    height, width = view.shape
    out = _scratch.array("gathered", (len(ys), len(xs)), view.dtype)
    if len(ys) * width <= height * len(xs):
        rows = _scratch.array("gather_step", (len(ys), width), view.dtype)
        np.take(view, ys, axis=0, out=rows)
        np.take(rows, xs, axis=1, out=out)
    else:
        cols = _scratch.array("gather_step", (height, len(xs)), view.dtype)
        np.take(view, xs, axis=1, out=cols)
        np.take(cols, ys, axis=0, out=out)
    return out.view(np.uint8).reshape(len(ys), -1)


def resize_grey(pixels: Pixels, size: int) -> np.ndarray:
    """The ``size`` x ``size`` grey image OpenCV's img_hash computes from these pixels (uint8)."""
    y0, y1, wy = _taps(pixels.height, size)
    x0, x1, wx = _taps(pixels.width, size)
    corners = _gather(pixels, np.concatenate((y0, y1)), np.concatenate((x0, x1)))
    channels = corners.shape[1] // (2 * size)
    half = size * channels
    # Channels stay folded into each row so every numpy loop below runs over long contiguous rows.
    # Across: w0 * a + w1 * b + 128 <= 65408 fits uint16; the 128 is OpenCV's final rounding term (32768) divided
    # by the vertical weights, which sum to 256.
    wx1 = np.repeat(wx, channels).astype(np.uint16)
    across = _scratch.array("across", (2 * size, half), np.dtype(np.uint16))
    term = _scratch.array("across_term", (2 * size, half), np.dtype(np.uint16))
    np.multiply(256 - wx1, corners[:, :half], out=across)
    np.multiply(wx1, corners[:, half:], out=term)
    across += term
    across += 128
    # Down: (top << 8) + w1 * (bottom - top), then >> 16, read as the high half of each uint32 (little-endian).
    top, bottom = across[:size], across[size:]
    blended = _scratch.array("blended", (size, half), np.dtype(np.int32))
    step = _scratch.array("down_term", (size, half), np.dtype(np.int32))
    np.subtract(bottom, top, out=step, dtype=np.int32)
    step *= wy[:, None]
    np.left_shift(top, 8, out=blended, dtype=np.int32)
    blended += step
    value = blended.view(np.uint16)[:, 1::2] if _LITTLE_ENDIAN else (blended >> 16)
    if channels == 1:
        return value.astype(np.uint8)
    colour = value.reshape(size, size, channels).astype(np.uint32)
    grey = colour[..., 2] * 3735
    grey += colour[..., 1] * 19235
    grey += colour[..., 0] * 9798
    grey += 16384
    grey >>= 15
    return grey.astype(np.uint8)


_LITTLE_ENDIAN = np.little_endian


def grey_image(pixels: Pixels, size: int) -> np.ndarray:
    """:func:`resize_grey`'s result, from the compiled kernel when numba is there (same bits, several times faster)."""
    compiled = kernels.compiled()
    if compiled is None:
        return resize_grey(pixels, size)
    rows, cols = _sample_plan(pixels.buffer.shape, pixels.orientation, size)
    channels = 1 if pixels.is_grey else pixels.buffer.shape[2]
    return kernels.grey_thumbnail(compiled, pixels.buffer.reshape(-1), channels, rows, cols, size)


_Taps = tuple[np.ndarray, np.ndarray, np.ndarray]


@lru_cache(maxsize=256)
def _sample_plan(shape: tuple[int, ...], orientation: int, size: int) -> tuple[_Taps, _Taps]:
    """Where the kernel reads: for each output row and column, the flat byte offsets of its two taps in the decode
    buffer (of ``shape``), and the second tap's weight.

    The orientation is folded in through numpy's own view of it: the oriented view of a buffer is the buffer
    with a start offset and two (possibly negative or swapped) strides, so offset(y, x) = start + y * sy + x * sx.
    """
    pixel = shape[2] if len(shape) == 3 else 1
    probe = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape[:2], (shape[1] * pixel, pixel))
    view = _orient(probe, orientation)
    start = view.__array_interface__["data"][0] - probe.__array_interface__["data"][0]
    step_y, step_x = view.strides
    y0, y1, wy = _taps(view.shape[0], size)
    x0, x1, wx = _taps(view.shape[1], size)
    rows = ((start + y0 * step_y).astype(np.int64), (start + y1 * step_y).astype(np.int64), wy)
    cols = ((x0 * step_x).astype(np.int64), (x1 * step_x).astype(np.int64), wx)
    for arr in (*rows, *cols):
        arr.setflags(write=False)
    return rows, cols
