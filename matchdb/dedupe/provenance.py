"""Which copy of an image looks like the original: colour or greyscale, camera EXIF tags, and the file format.

Why these, in this order after nothing else: a greyscale copy of a colour photo has lost information whatever its
size, so colour comes first; a copy re-encoded as PNG (or grey PNG) can be larger in bytes than the JPEG it came
from, so bytes alone pick the wrong file. Cameras and phones write JPEG, HEIF and TIFF (and keep Make/Model tags);
PNG, WebP, GIF and BMP copies of a photo are almost always conversions (screenshots, web exports, editors).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from matchdb.hashing.decode import Pixels

#: Formats a camera or phone writes (Pillow's names): a copy in any other format is taken for a conversion.
ORIGINAL_FORMATS = frozenset({"JPEG", "MPO", "HEIF", "TIFF", "DNG"})
#: Mean absolute difference between the colour channels (0-255) under which an RGB image is grey: JPEG's chroma
#: noise leaves a greyscale photo saved as RGB a little above 0.
GREY_TOLERANCE = 2.0
_SAMPLES = 65536  # pixels looked at to tell colour from grey
_EXIF_MAKE, _EXIF_MODEL = 0x010F, 0x0110


@dataclass(frozen=True)
class Provenance:
    colour: bool
    camera: bool  # EXIF Make or Model present
    format: str  # Pillow's format name, "" if unknown

    @property
    def original_format(self) -> bool:
        return self.format in ORIGINAL_FORMATS


def is_colour(pixels: Pixels) -> bool:
    """Whether the decoded image has colour, judged on an even sample of at most ``_SAMPLES`` pixels."""
    buffer = pixels.buffer
    if buffer.ndim == 2:
        return False
    step = max(1, int((buffer.shape[0] * buffer.shape[1] / _SAMPLES) ** 0.5))
    sample = buffer[::step, ::step, :3].astype(np.int16)
    spread = np.abs(sample[..., 0] - sample[..., 1]) + np.abs(sample[..., 1] - sample[..., 2])
    return float(spread.mean()) / 2 > GREY_TOLERANCE


def describe(data: bytes, pixels: Pixels) -> Provenance:
    """The provenance signals of an image already decoded to ``pixels`` (the header is read again: cheap)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format or ""
            exif = image.getexif()
            camera = bool(exif.get(_EXIF_MAKE) or exif.get(_EXIF_MODEL))
    except Exception:  # the image decoded already; a broken EXIF block only means "no camera tags"
        image_format, camera = "", False
    return Provenance(is_colour(pixels), camera, image_format)
