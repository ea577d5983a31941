"""A record's stored thumbnail, made from the pixels already decoded for hashing (no second decode).

WebP at most 160 px on the long side: 2-3 KB for a photo, and every current browser shows it. Pillow shrinks in
two steps (a box reduce by a whole factor, then an antialiased bilinear resize: ``reducing_gap``), which costs about
as much as hashing a 640 x 480 photo and a small part of hashing a large one (docs/benchmarks.md, Thumbnails).
WebP's ``method`` 2 encodes faster than its default 4 for about the same size at this scale.
"""

from __future__ import annotations

import io

from PIL import Image

from matchdb.hashing.decode import Pixels

SIZE = 160
QUALITY = 75
METHOD = 2

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
    if buffer.ndim == 3 and buffer.shape[2] == 4:
        # Pillow's layout: the fourth byte is alpha or padding, which the hashes ignore too. Read as RGBX (no
        # premultiplication by a padding byte, as an RGBA resize would do).
        rows, cols = buffer.shape[:2]
        image = Image.frombuffer("RGB", (cols, rows), buffer, "raw", "RGBX", 0, 1)
    else:
        image = Image.fromarray(buffer)  # grey (L) or RGB
    image.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    if pixels.orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[pixels.orientation])
    out = io.BytesIO()
    image.save(out, "WEBP", quality=quality, method=METHOD)
    return out.getvalue()
