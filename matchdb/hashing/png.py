"""The fast path for plain 8-bit PNGs: libpng (through imagecodecs) into a numpy buffer.

PNG is lossless, so every correct decoder gives the same samples; libpng with SIMD unfiltering and zlib-ng decodes
photo-sized PNGs about 1.8 times as fast as Pillow (whose unfiltering is scalar), and faster than OpenCV's own
libpng build. Only the plain cases come here: 8-bit grey, RGB or RGBA (alpha dropped, as OpenCV drops it), not
interlaced, not animated. The orientation is the one Pillow's path reads (eXIf, ImageMagick's raw EXIF profile,
XMP), from Pillow's parse of the chunks before the image data; a file with such a chunk after it goes to Pillow's
path. So do files libpng refuses, so a broken file still gets Pillow's error message.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

try:
    import imagecodecs
except ImportError:  # pragma: no cover - a dependency; without it PNGs take Pillow's path (same pixels, slower)
    imagecodecs = None  # type: ignore[assignment]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PLAIN_COLOUR_TYPES = (0, 2, 6)  # grey, RGB, RGBA
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_ORIENTATION_KEYWORDS = (b"XML:com.adobe.xmp", b"Raw profile type exif", b"Raw profile type APP1")
_ORIENTATION_TAG = 0x0112


def decode_png(data: bytes, max_pixels: int) -> tuple[np.ndarray, int] | None:
    """``(buffer, orientation)`` in :class:`~matchdb.hashing.decode.Pixels`' layout, or None for Pillow's path."""
    if imagecodecs is None or not data.startswith(_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 33:
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if depth != 8 or colour not in _PLAIN_COLOUR_TYPES or interlace or not 0 < width * height <= max_pixels:
        return None
    metadata = _metadata_chunks(data)
    if metadata is None:
        return None
    orientation = _orientation(data) if metadata else 1
    if orientation is None:
        return None
    try:
        pixels: np.ndarray = imagecodecs.png_decode(data)
    except (RuntimeError, ValueError):  # imagecodecs.PngError: Pillow's path decides and words the error
        return None
    if pixels.shape[:2] != (height, width) or pixels.dtype != np.uint8 or not pixels.flags.c_contiguous:
        return None
    return pixels, orientation


def _metadata_chunks(data: bytes) -> bool | None:
    """Whether chunks that may hold an orientation come before the image data; None for an animation or such a
    chunk after the image data (Pillow only finds those by decoding the image: its path takes the file)."""
    pos, seen_data, metadata = 8, False, False
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        keyword = data[pos + 8 : pos + 8 + min(length, 80)].split(b"\x00", 1)[0] if kind in _TEXT_CHUNKS else b""
        if kind == b"acTL" or (seen_data and (kind == b"eXIf" or keyword in _ORIENTATION_KEYWORDS)):
            return None
        metadata = metadata or kind == b"eXIf" or keyword in _ORIENTATION_KEYWORDS
        seen_data = seen_data or kind == b"IDAT"
        if kind == b"IEND":
            break
        pos += 12 + length
    return metadata


def _orientation(data: bytes) -> int | None:
    """The orientation Pillow's path would apply, from Pillow's header parse (no pixel decoding)."""
    try:
        with Image.open(io.BytesIO(data), formats=("PNG",)) as image:
            # Image.getexif itself: PngImageFile's override decodes the whole image to look past the image data.
            value = Image.Image.getexif(image).get(_ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, IndexError, struct.error):
        return None
    return value if isinstance(value, int) and 1 <= value <= 8 else 1
