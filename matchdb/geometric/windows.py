"""The windows of a geometric signature and the DCT-sign hash of one window.

Why windows: a perceptual hash sees the whole frame, so a crop or a small turn moves every coefficient. A hash of
the *same region* of both images does not move. Each stored image keeps the hashes of 38 regions (the whole frame,
centred inner crops, one-sided crops from each side, corner crops, each at a few scales); a query compares the
region of itself that should correspond (see :mod:`matchdb.geometric.query`). The hash is pHash's construction on
a window: grey, resized to 32 x 32, 2-D DCT, the 8 x 8 lowest frequencies, each bit whether a coefficient is above
their median. Low frequencies tolerate the few percent of scale and offset left between a crop and the nearest
stored window.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

#: A window as fractions of the frame: (left, top, right, bottom).
Box = tuple[float, float, float, float]

_SIDE = 32  # pixels of the resized window
_LOW = 8  # low frequencies kept per axis: 64 bits
WORKING_SIDE = 256  # the grey image is first reduced to this long side: windows then cost the same at any size


def centred(keep: float) -> Box:
    margin = (1.0 - keep) / 2
    return (margin, margin, 1.0 - margin, 1.0 - margin)


def _sides(keep: float) -> list[Box]:
    cut = 1.0 - keep
    return [(cut, 0.0, 1.0, 1.0), (0.0, 0.0, keep, 1.0), (0.0, cut, 1.0, 1.0), (0.0, 0.0, 1.0, keep)]


def corners(keep: float) -> list[Box]:
    cut = 1.0 - keep
    return [(0.0, 0.0, keep, keep), (cut, 0.0, 1.0, keep), (0.0, cut, keep, 1.0), (cut, cut, 1.0, 1.0)]


#: Scales of the centred windows: inner crops, and the regions a turned-back query still covers (see query.py).
CENTRED_SCALES = (0.95, 0.90, 0.85, 0.80, 0.75, 0.70, 0.65, 0.60)
_SIDE_KEEPS = (0.92, 0.86, 0.80)  # one-sided crops of 1-20% land within 3% of one of these
_CORNER_KEEPS = (0.93, 0.89, 0.85, 0.80)  # a corner crop is off in both axes: a finer step (within 2%)

#: The stored windows, in signature order: index 0 is the whole frame.
STORED: tuple[Box, ...] = tuple(
    [(0.0, 0.0, 1.0, 1.0)]
    + [centred(s) for s in CENTRED_SCALES]
    + [box for keep in _SIDE_KEEPS for box in _sides(keep)]
    + [box for keep in _CORNER_KEEPS for box in corners(keep)]
    + [(0.10, 0.0, 0.90, 1.0)]  # both sides trimmed: a landscape photo cut towards square
)
NWINDOWS = len(STORED)
SIGNATURE_BYTES = NWINDOWS * 8
WHOLE = 0
CENTRED_INDEX = {scale: 1 + i for i, scale in enumerate(CENTRED_SCALES)}
assert NWINDOWS == 38


def _dct_matrix() -> npt.NDArray[np.float64]:
    k = np.arange(_LOW)[:, None]
    n = np.arange(_SIDE)[None, :]
    return np.cos(np.pi * (2 * n + 1) * k / (2 * _SIDE))


_DCT = _dct_matrix()  # (8, 32): only the low rows of the DCT-II are ever needed
_WEIGHTS = np.uint64(1) << np.arange(64, dtype=np.uint64)


def working_grey(rgb_or_grey: npt.NDArray[np.uint8]) -> Image.Image:
    """The image as a float grey Pillow image ('F'), reduced (box filter) to at most ``WORKING_SIDE`` on its long
    side: windows and turns are then cut from a small image, so a signature costs the same for any upload."""
    if rgb_or_grey.ndim == 3:
        grey = rgb_or_grey[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    else:
        grey = rgb_or_grey.astype(np.float32)
    image = Image.fromarray(np.ascontiguousarray(grey, np.float32), mode="F")
    long_side = max(image.size)
    if long_side > WORKING_SIDE:
        scale = WORKING_SIDE / long_side
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BOX)
    return image


def window_hashes(image: Image.Image, boxes: list[Box] | tuple[Box, ...]) -> npt.NDArray[np.uint64]:
    """The 64-bit DCT-sign hash of each window (fractions of ``image``), bit i = coefficient i (row-major) above
    the median of the 64."""
    width, height = image.size
    blocks = np.empty((len(boxes), _SIDE, _SIDE), np.float64)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        box = (x0 * width, y0 * height, max(x1 * width, x0 * width + 1), max(y1 * height, y0 * height + 1))
        blocks[i] = np.asarray(image.resize((_SIDE, _SIDE), Image.Resampling.BILINEAR, box=box, reducing_gap=None))
    coefficients = np.einsum("ka,wab,lb->wkl", _DCT, blocks, _DCT).reshape(len(boxes), 64)
    bits = coefficients > np.median(coefficients, axis=1, keepdims=True)
    return np.asarray((bits.astype(np.uint64) * _WEIGHTS).sum(axis=1, dtype=np.uint64), np.uint64)
