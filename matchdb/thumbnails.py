"""Small inline thumbnails for the HTML reports of ``matchdb eval`` and ``matchdb dedupe``.

Reports are single self-contained files (mailed, attached to tickets, opened offline), so images are embedded as
``data:`` URIs rather than linked. Thumbnails are JPEG (or PNG when the source has transparency) at most ``size``
pixels on the long side, honouring EXIF orientation the way the hashes do.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageOps

DEFAULT_SIZE = 160


def thumbnail_from_image(image: Image.Image, size: int = DEFAULT_SIZE) -> str:
    """A ``data:`` URI of ``image`` shrunk to fit ``size`` x ``size``."""
    image = ImageOps.exif_transpose(image)
    image.thumbnail((size, size))
    has_alpha = image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)
    out = io.BytesIO()
    if has_alpha:
        image.convert("RGBA").save(out, "PNG", optimize=True)
        mime = "image/png"
    else:
        image.convert("RGB").save(out, "JPEG", quality=80)
        mime = "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(out.getvalue()).decode('ascii')}"


def thumbnail_from_bytes(data: bytes, size: int = DEFAULT_SIZE) -> str | None:
    """A ``data:`` URI for encoded image bytes, or None if Pillow cannot read them."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale, much faster for big photos
            return thumbnail_from_image(image, size)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def thumbnail_from_array(array: np.ndarray, size: int = DEFAULT_SIZE) -> str:
    """A ``data:`` URI for an RGB/RGBA/grey uint8 array (e.g. a transformed copy made in memory)."""
    return thumbnail_from_image(Image.fromarray(np.ascontiguousarray(array)), size)
