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

import numpy as np

from matchdb.hashing.decode import Pixels


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

    def array(self, name: str, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buffer = self.buffers.get(name)
        if buffer is None or buffer.size < nbytes:
            buffer = self.buffers[name] = np.empty(nbytes, dtype=np.uint8)
        return buffer[:nbytes].view(dtype).reshape(shape)


_scratch = _Scratch()


def _gather(pixels: Pixels, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Pixels at rows ``ys`` x columns ``xs`` of the oriented image, as ``(len(ys), len(xs) * channels)`` uint8.

    One ``np.take`` on the flat decode buffer, with indices computed from the oriented view's strides, so
    orientation costs nothing and only the needed pixels are read.
    """
    view, base = pixels.array, pixels.buffer
    pixel_bytes = 1 if base.ndim == 2 else base.shape[2]
    flat = base.reshape(-1).view(np.uint8 if pixel_bytes == 1 else np.uint32)
    start = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // pixel_bytes
    row_step, col_step = view.strides[0] // pixel_bytes, view.strides[1] // pixel_bytes
    index = _scratch.array("index", (len(ys), len(xs)), np.int64)
    np.add((ys * row_step + start)[:, None], (xs * col_step)[None, :], out=index)
    out = _scratch.array("gathered", (len(ys), len(xs)), flat.dtype.type)
    np.take(flat, index, out=out)
    return out.view(np.uint8).reshape(len(ys), len(xs) * pixel_bytes)


def resize_grey(pixels: Pixels, size: int) -> np.ndarray:
    """The ``size`` x ``size`` grey image OpenCV's img_hash computes from these pixels (uint8)."""
    y0, y1, wy = _taps(pixels.height, size)
    x0, x1, wx = _taps(pixels.width, size)
    corners = _gather(pixels, np.concatenate((y0, y1)), np.concatenate((x0, x1)))
    channels = corners.shape[1] // (2 * size)
    half = size * channels
    # Channels stay folded into each row so every numpy loop below runs over long contiguous rows.
    wx1 = np.repeat(wx, channels).astype(np.uint16)
    across = _scratch.array("across", (2 * size, half), np.uint16)
    term = _scratch.array("across_term", (2 * size, half), np.uint16)
    np.multiply(256 - wx1, corners[:, :half], out=across)
    np.multiply(wx1, corners[:, half:], out=term)
    across += term  # at most 255 * 256: exact in uint16
    wy1 = wy[:, None].astype(np.uint32)
    blended = _scratch.array("blended", (size, half), np.uint32)
    down = _scratch.array("down_term", (size, half), np.uint32)
    np.multiply(256 - wy1, across[:size], out=blended)
    np.multiply(wy1, across[size:], out=down)
    blended += down
    blended += 32768
    blended >>= 16
    if channels == 1:
        return blended.astype(np.uint8)
    colour = blended.reshape(size, size, channels)
    grey = colour[..., 2] * 3735
    grey += colour[..., 1] * 19235
    grey += colour[..., 0] * 9798
    grey += 16384
    grey >>= 15
    return grey.astype(np.uint8)
