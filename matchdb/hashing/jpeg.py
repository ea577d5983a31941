"""The fast path for colour and grey JPEGs: libjpeg-turbo's TurboJPEG API (simplejpeg) into our own buffer.

OpenCV decodes JPEGs with libjpeg-turbo too, with the same settings simplejpeg uses by default (accurate integer
DCT, smooth chroma upsampling), so the pixels are the same; what this path saves over Pillow is Pillow's Python-level
header parsing and its chunked decode loop. Everything else (CMYK, 12-bit, a decoder warning such as a truncated
file, an image over the pixel cap) returns None and takes :mod:`.decode`'s Pillow path, which decodes those as it
always did or raises the right :class:`~matchdb.errors.ImageError`.

The EXIF orientation is read here as OpenCV reads it: tag 0x0112 in IFD0 of the first APP1 ``Exif`` segment before
the image data, nothing else (Pillow would also take an XMP ``tiff:Orientation``, which OpenCV ignores).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

try:
    import simplejpeg
except ImportError:  # pragma: no cover - a dependency; without it JPEGs take Pillow's path (same pixels, slower)
    simplejpeg = None

_SOI = b"\xff\xd8\xff"
_COLOURSPACES = {"YCbCr": False, "RGB": False, "Gray": True}  # colourspace -> decoded as one grey channel
_BYTE_ORDERS: dict[bytes, Literal["little", "big"]] = {b"II": "little", b"MM": "big"}
_ORIENTATION_TAG = {"little": b"\x12\x01", "big": b"\x01\x12"}
_VALUE_BYTES = {3: 2, 4: 4}  # SHORT, LONG


def decode_jpeg(data: bytes, max_pixels: int) -> tuple[np.ndarray, int] | None:
    """``(buffer, orientation)`` in :class:`~matchdb.hashing.decode.Pixels`' layout, or None for the Pillow path."""
    if simplejpeg is None or not data.startswith(_SOI):
        return None
    try:
        height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    grey = _COLOURSPACES.get(colourspace)
    if grey is None or not 0 < width * height <= max_pixels:
        return None
    buffer = np.empty((height, width) if grey else (height, width, 3), dtype=np.uint8)
    try:
        simplejpeg.decode_jpeg(data, "GRAY" if grey else "RGB", buffer=buffer, strict=True)
    except ValueError:
        return None
    return buffer, exif_orientation(data)


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of JPEG ``data``; 1 when absent, malformed or out of range (OpenCV ignores those)."""
    pos, end = 2, len(data)
    while pos + 4 <= end and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xDA or marker == 0xD9:  # start of scan / end of image: metadata comes before
            return 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
            return _tiff_orientation(data[pos + 10 : pos + 2 + length])
        pos += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    """Orientation from the TIFF structure inside an EXIF segment: IFD0's entries of 12 bytes (tag, type, count,
    value); a SHORT value sits in the first two bytes of the value field, a LONG in all four."""
    order = _BYTE_ORDERS.get(tiff[:2])
    if order is None or len(tiff) < 8 or int.from_bytes(tiff[2:4], order) != 42:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[ifd : ifd + 2], order) if ifd + 2 <= len(tiff) else 0
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        if tiff[entry : entry + 2] != _ORIENTATION_TAG[order]:
            continue
        size = _VALUE_BYTES.get(int.from_bytes(tiff[entry + 2 : entry + 4], order), 0)
        value = int.from_bytes(tiff[entry + 8 : entry + 8 + size], order)
        return value if 1 <= value <= 8 else 1
    return 1
