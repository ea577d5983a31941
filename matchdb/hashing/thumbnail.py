"""A record's stored thumbnail, made from the pixels already decoded for hashing (no second decode).

JPEG at quality 75, at most 160 px on the long side: about 3 KB for a photo. Pillow shrinks in two steps, a box
reduce by a whole factor (an area average) and then an antialiased bilinear resize for the rest
(``reducing_gap=1``), the cheapest of its resizes at the same quality here. WebP would be a third smaller but took
four times as long to encode (0.9 against 0.2 ms a picture), and on insert CPU is the scarcer resource: the
measurements are in docs/benchmarks.md (Thumbnails).
"""

from __future__ import annotations

import io

from PIL import Image

from matchdb.hashing.decode import Pixels

SIZE = 160
QUALITY = 75
MEDIA_TYPE = "image/jpeg"

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


def thumbnail_bytes(pixels: Pixels, size: int = SIZE, quality: int = QUALITY) -> bytes:
    """The upright image shrunk to fit ``size`` x ``size``, as JPEG bytes (:data:`MEDIA_TYPE`)."""
    buffer = pixels.buffer
    if buffer.ndim == 3 and buffer.shape[2] == 4:
        # Pillow's layout: the fourth byte is alpha or padding, which the hashes ignore too. Read as RGBX (no
        # premultiplication by a padding byte, as an RGBA resize would do).
        rows, cols = buffer.shape[:2]
        image = Image.frombuffer("RGB", (cols, rows), buffer, "raw", "RGBX", 0, 1)
    else:
        image = Image.fromarray(buffer)  # grey (L) or RGB
    image.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=1.0)
    if pixels.orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[pixels.orientation])
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()
