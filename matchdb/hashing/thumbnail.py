"""A record's stored thumbnail, made from the pixels already decoded for hashing (no second decode).

WebP at most 160 px on the long side: a few KB, which every current browser shows. A large photo is first thinned
by a whole step to about four times the target, so Pillow's antialiased shrink works on a small copy instead of
converting every pixel of a 24-megapixel buffer.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from matchdb.hashing.decode import Pixels

SIZE = 160
QUALITY = 75

# EXIF orientation -> the transpose that shows the image upright (as the hashes see it).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def webp_thumbnail(pixels: Pixels, size: int = SIZE, quality: int = QUALITY) -> bytes:
    """The upright image shrunk to fit ``size`` x ``size``, as WebP bytes."""
    buffer = pixels.buffer
    step = max(1, max(buffer.shape[0], buffer.shape[1]) // (size * 4))
    small = buffer[::step, ::step]
    if small.ndim == 3 and small.shape[2] == 4:  # Pillow's layout: the fourth byte is alpha or padding
        small = small[:, :, :3]
    image = Image.fromarray(np.ascontiguousarray(small))
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    if pixels.orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[pixels.orientation])
    out = io.BytesIO()
    image.save(out, "WEBP", quality=quality, method=4)
    return out.getvalue()
